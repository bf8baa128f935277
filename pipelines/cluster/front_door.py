"""The front door of a cluster: the same page, offer endpoint and phone webhooks as one
server, with every call placed on a node (pipelines/cluster/node.py).

    browser ──POST /api/offer──► front door ──offer()──► node with the most room
       ▲                                                     │ SDP answer (its ICE
       └───────────── RTP / DTLS, straight ◄─────────────────┘  candidates)
    phone provider ──POST /──► front door ──stream_url()──► node: ws://NODE/ws/TOKEN
       └──────────────────── media websocket, straight ───────► node
    (or, when the provider needs wss:// and the nodes have no certificate, through the
    front door: wss://FRONT/ws/TOKEN ═► front door ─► node, pipelines/cluster/stream_relay.py)

Admission is shared: a new call goes to the node with the most free slots (then the
least CPU), and the caller is refused (503, or the busy message) only when every node
is full or draining. Later requests for a call (renegotiation, ICE candidates) go to the
node that holds it, which checks the session secret as one server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from loguru import logger

from agent.config import AgentConfig
from pipelines.cluster.stream_relay import relay
from pipelines.serve.metrics import ServerMetrics
from pipelines.serve.server import OfferError, OfferRate, front_door_app, parse_offer
from pipelines.serve.telephony.routes import (
    CLOSE_POLICY,
    StreamTokens,
    add_webhooks,
    close_quietly,
)

# How often the front door asks every node for its load (and notices a lost one).
POLL_SECS = 1.0
# A node that does not answer a load request within this is taken for lost.
NODE_TIMEOUT_SECS = 5.0
# An agent node lost while its Ray node lives on (its process died: out of memory, a
# crash, killed) is started there again this long after, doubling for each time in a
# row it is lost within RESTART_STABLE_SECS of its start (a crash loop), up to
# RESTART_MAX_SECS.
RESTART_AFTER_SECS = 5.0
RESTART_STABLE_SECS = 120.0
RESTART_MAX_SECS = 300.0


class Node:
    """The front door's view of one node: its actor and its latest load."""

    def __init__(self, node_id: str, actor, url: str):
        self.node_id = node_id
        self.actor = actor
        self.url = url
        self.load: dict = {"sessions": [], "max_sessions": 0, "draining": False, "cpu": 0.0}
        self.placed = 0  # calls placed here since its load was last read

    @property
    def free(self) -> int:
        if self.load["draining"]:
            return 0
        return self.load["max_sessions"] - len(self.load["sessions"]) - self.placed


class ClusterDesk:
    """What pipelines/serve/server.front_door_app asks of a desk, over a cluster's nodes."""

    def __init__(self, config: AgentConfig, nodes: list[Node], placer=None):
        """``placer`` (pipelines/cluster/start.NodePlacer): starts agent nodes on Ray nodes
        that join the cluster later; without it the nodes are those given."""
        self.config = config
        self.metrics = ServerMetrics()
        self.nodes = {n.node_id: n for n in nodes}
        self.lost: dict[str, str] = {}  # node id → why
        self.ready_secs: dict[str, float] = {}  # a node that joined later → its start-up
        self._placer = placer
        self._starting: dict[str, asyncio.Task] = {}  # node id → its agent node starting
        self.restarts: dict[str, int] = {}  # node id → agent nodes started there again
        self._lost_at: dict[str, float] = {}
        self._started_at: dict[str, float] = {n.node_id: time.monotonic() for n in nodes}
        self._quick_losses: dict[str, int] = {}  # node id → lost soon after start, in a row
        self._rate = OfferRate(config)
        # A browser call's pc_id → (its node's id, when it was placed).
        self._call_node: dict[str, tuple[str, float]] = {}
        self.relayed_streams = StreamTokens()  # a relayed phone stream's token → node URL
        self._poller: asyncio.Task | None = None

    # -- what front_door asks -----------------------------------------------------------

    @property
    def sessions(self) -> dict[str, str]:
        """Every call in the cluster → its node's id (as of the last poll)."""
        return {s: n.node_id for n in self.nodes.values() for s in n.load["sessions"]}

    def admit_offer(self, client: str) -> bool:
        return self._rate.admit(client)

    async def offer(self, data: dict, client: str) -> tuple[int, dict]:
        try:
            parse_offer(data)  # a bad offer is refused here, not sent to a node
        except OfferError as e:
            return e.status, {"error": str(e)}
        pc_id = data.get("pc_id")
        if pc_id is not None:  # renegotiating a call: its own node, which checks the secret
            node = self._node_of(pc_id)
            if node is None:
                return 404, {"error": f"no session {pc_id}: it has ended"}
            return await self._ask(node, node.actor.offer.remote(data, client))
        for node in self._by_room():
            node.placed += 1
            status, body = await self._ask(node, node.actor.offer.remote(data, client))
            if status == 503:  # it filled up meanwhile: the next one
                continue
            if status == 200:
                self._call_node[body["pc_id"]] = (node.node_id, time.monotonic())
            return status, body
        return 503, {"error": self.config.server.busy_message}

    async def candidates(self, data: dict) -> tuple[int, dict]:
        pc_id = data.get("pc_id")
        node = self._node_of(pc_id) if isinstance(pc_id, str) else None
        if node is None:
            return 404, {"error": f"no session {pc_id}: it has ended"}
        return await self._ask(node, node.actor.candidates.remote(data))

    async def stream_url(self, request: Request, secure: bool) -> str:
        """A new phone call's stream URL, on the node with the most room (when every node
        is full, any node: its stream plays the busy message). Straight to the node, or,
        when the provider must be given wss:// (``secure``), through this front door's
        relay (pipelines/cluster/stream_relay.py): the nodes have no certificate."""
        nodes = self._by_room() or list(self.nodes.values())
        if not nodes:
            raise RuntimeError("no node in the cluster")
        nodes[0].placed += 1
        node_url = await nodes[0].actor.stream_url.remote()
        if not secure:
            return node_url
        host = self.config.server.public_host or request.headers.get("host", "")
        return f"wss://{host}/ws/{self.relayed_streams.issue(node_url)}"

    async def close(self):
        """Every node lets its replies finish and ends its calls."""
        if self._poller is not None:
            self._poller.cancel()
        for starting in list(self._starting.values()):
            starting.cancel()
        await asyncio.gather(
            *(n.actor.stop.remote() for n in self.nodes.values()), return_exceptions=True
        )

    # -- the cluster ---------------------------------------------------------------------

    def status(self) -> dict:
        """Nodes, their calls and load (``GET /api/cluster``)."""
        return {
            "nodes": [
                {
                    "node": n.node_id,
                    "url": n.url,
                    "sessions": n.load["sessions"],
                    "max_sessions": n.load["max_sessions"],
                    "draining": n.load["draining"],
                    "cpu": n.load["cpu"],
                    "peak_rss_mib": n.load.get("peak_rss_mib"),
                }
                for n in self.nodes.values()
            ],
            "lost": self.lost,
            "starting": sorted(self._starting),
            "restarts": self.restarts,
            "joined_ready_secs": self.ready_secs,
            "sessions": len(self.sessions),
            "free": sum(max(0, n.free) for n in self.nodes.values()),
        }

    async def drain(self, node_id: str, draining: bool = True) -> None:
        """No new calls on the node (its calls go on to their end); ``draining=False``
        takes it back. KeyError for a node the cluster does not have."""
        node = self.nodes[node_id]
        await node.actor.drain.remote(draining)
        node.load["draining"] = draining

    async def poll(self) -> None:
        """Read every node's load; a node that fails to answer is lost."""
        results = await asyncio.gather(
            *(self._read_load(n) for n in list(self.nodes.values())), return_exceptions=True
        )
        for node, result in zip(list(self.nodes.values()), results, strict=True):
            if isinstance(result, BaseException):
                self._lose(node, f"{type(result).__name__}: {result}")
            else:
                node.load, node.placed = result, 0
                self.metrics.node_sessions.labels(node.node_id).set(len(result["sessions"]))
        live = self.sessions
        # Calls that have ended are forgotten; one just placed may not be in a load read
        # that began before it (its ICE candidates may follow its answer at once).
        recent = time.monotonic() - 3 * POLL_SECS
        self._call_node = {
            p: (n, at) for p, (n, at) in self._call_node.items() if p in live or at > recent
        }
        if self._placer is not None:
            await self._welcome_new_nodes()

    async def _welcome_new_nodes(self) -> None:
        """Start an agent node on every Ray node that has joined since, and again on one
        whose agent node was lost while it lives on (in the background: its models take
        seconds to load, and calls go on meanwhile)."""
        from pipelines.cluster.start import node_key

        for info in await asyncio.to_thread(self._placer.alive):
            key = node_key(info)
            if key in self.nodes or key in self._starting:
                continue
            if key in self.lost:
                if time.monotonic() - self._lost_at.get(key, 0.0) < self._restart_delay(key):
                    continue
                self.restarts[key] = self.restarts.get(key, 0) + 1
                logger.info(f"node {key}: starting its agent node again")
            self._starting[key] = asyncio.create_task(self._join(key, info))

    def _restart_delay(self, key: str) -> float:
        doublings = max(0, self._quick_losses.get(key, 0) - 1)
        return min(RESTART_MAX_SECS, RESTART_AFTER_SECS * 2**doublings)

    async def _join(self, key: str, info: dict) -> None:
        started = time.monotonic()
        try:
            node = await self._placer.start(info)
            node.load = await asyncio.wait_for(node.actor.load.remote(), NODE_TIMEOUT_SECS)
        except Exception as e:  # noqa: BLE001 - a node that cannot start is left out
            self._mark_lost(key, f"could not start: {type(e).__name__}: {e}", quick=True)
            logger.warning(f"node {key} could not start: {e!r}")
            return
        finally:
            self._starting.pop(key, None)
        self.lost.pop(key, None)
        self._started_at[key] = time.monotonic()
        self.nodes[key] = node
        self.ready_secs[key] = round(time.monotonic() - started, 2)
        logger.info(f"node {key} joined, ready in {self.ready_secs[key]:.1f} s")

    def start_polling(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll()
            except Exception as e:  # noqa: BLE001 - the next poll tries again
                logger.warning(f"reading the nodes' load failed: {e!r}")
            await asyncio.sleep(max(0.0, POLL_SECS - (time.monotonic() - started)))

    async def _read_load(self, node: Node) -> dict:
        return await asyncio.wait_for(node.actor.load.remote(), NODE_TIMEOUT_SECS)

    async def _ask(self, node: Node, reply) -> tuple[int, dict]:
        try:
            return tuple(await asyncio.wait_for(reply, NODE_TIMEOUT_SECS * 2))
        except Exception as e:  # noqa: BLE001 - a lost node is a refusal of this request
            self._lose(node, f"{type(e).__name__}: {e}")
            return 503, {"error": "the node holding this call was lost"}

    def _lose(self, node: Node, why: str) -> None:
        if self.nodes.pop(node.node_id, None) is not None:
            lived = time.monotonic() - self._started_at.get(node.node_id, 0.0)
            self._mark_lost(node.node_id, why, quick=lived < RESTART_STABLE_SECS)
            with contextlib.suppress(KeyError):  # never polled
                self.metrics.node_sessions.remove(node.node_id)
            if self._placer is not None:
                # One that stopped answering but lives on would hold its memory beside
                # the agent node started there again.
                self._placer.stop(node)
            logger.warning(f"node {node.node_id} lost ({why[:200]}); {len(self.nodes)} left")

    def _mark_lost(self, key: str, why: str, *, quick: bool) -> None:
        """``key``'s agent node is lost (``quick``: soon after its start, which delays
        its next start the more, the more times in a row)."""
        self.lost[key] = why[:200]
        self._lost_at[key] = time.monotonic()
        self._quick_losses[key] = self._quick_losses.get(key, 0) + 1 if quick else 0

    def _node_of(self, pc_id: str) -> Node | None:
        placed = self._call_node.get(pc_id)
        return self.nodes.get(placed[0]) if placed else None

    def _by_room(self) -> list[Node]:
        """Nodes with a free slot, the most room (then the least CPU) first."""
        open_nodes = [n for n in self.nodes.values() if n.free > 0]
        return sorted(open_nodes, key=lambda n: (-n.free, n.load["cpu"]))


def create_cluster_app(desk: ClusterDesk, *, access_token: str | None = None) -> FastAPI:
    """The front door's app: one server's routes over ``desk``, the phone webhooks with
    stream URLs from the nodes, and ``GET /api/cluster``."""
    app = front_door_app(desk, access_token=access_token)
    add_webhooks(app, desk.config, desk.stream_url)

    @app.get("/api/cluster")
    async def cluster():
        status = desk.status()
        if desk.config.cluster.shares_engines:
            from pipelines.cluster.engines import replicas

            status["engines"] = await asyncio.to_thread(replicas)
        return status

    @app.post("/api/cluster/nodes/{node_id}/{action}")
    async def drain(node_id: str, action: str):
        """``drain``: no new calls on the node, its calls finish; ``undrain``: back."""
        if action not in ("drain", "undrain"):
            return JSONResponse({"error": "the action is drain or undrain"}, status_code=404)
        try:
            await desk.drain(node_id, action == "drain")
        except KeyError:
            return JSONResponse({"error": f"no node {node_id} in the cluster"}, status_code=404)
        return {"node": node_id, "draining": action == "drain"}

    @app.websocket("/ws/{token}")
    async def relayed_stream(websocket: WebSocket, token: str):
        """A phone call's media stream, carried to and from its node."""
        await websocket.accept()
        target = desk.relayed_streams.redeem(token)
        if not target:
            desk.metrics.refused.labels("bad_stream_token").inc()
            await close_quietly(websocket, CLOSE_POLICY, "unknown or used stream token")
            return
        await relay(websocket, target)

    @app.on_event("startup")
    async def _first_poll():
        await desk.poll()
        desk.start_polling()

    return app
