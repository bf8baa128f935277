"""The browser transport: a FastAPI server with Pipecat's SmallWebRTC (aiortc) transport.

``GET /`` serves a page that calls the bot from the browser's microphone; ``POST
/api/offer`` takes the page's SDP offer and answers it, starting one pipeline session per
peer connection. Phone calls come in on the same server (``POST /`` and ``/ws/{token}``,
pipelines/serve/telephony/). The models are the process's shared ModelStack; sessions
only add their own small state.

A session belongs to whoever created it: the answer to a new offer carries a
``session_secret``, and renegotiating the session (an offer with its ``pc_id``) or adding
ICE candidates to it (``PATCH``) needs that secret (403 without it; 404 once the session
has ended). Admission: a malformed or oversized offer, or one without a DTLS fingerprint,
gets 400; a body that does not arrive within ``server.request_timeout_secs`` 408; a browser
offer from another site's page 403; more than ``server.offers_per_minute`` from one client
429; a full server 503; and a session whose peer has not connected within
``server.connect_timeout_secs`` is dropped, freeing its slot.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from aiortc import RTCIceServer
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from loguru import logger
from pipecat.frames.frames import EndFrame
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import (
    IceCandidate,
    SmallWebRTCPatchRequest,
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner
from prometheus_client import CONTENT_TYPE_LATEST

from agent.models import cache_dir
from pipelines.build import Session, build_session
from pipelines.serve.access import token_matches, turn_credentials
from pipelines.serve.deadlines import BodyDeadline
from pipelines.serve.metrics import ServerMetrics
from pipelines.serve.session_log import SessionLog
from pipelines.serve.telephony.routes import add_phone_routes
from pipelines.stack import ModelStack
from pipelines.turns.timeline import TurnRecord

STATIC_DIR = Path(__file__).resolve().parent / "static"
# /metrics labels for refused requests, by HTTP status.
REFUSAL_REASONS = {
    400: "bad_request",
    403: "forbidden",
    404: "unknown_session",
    408: "slow_body",
    429: "rate_limited",
    503: "full",
}


# How long a client's new offer waits for its earlier ones to connect (a peer on loopback
# connects in ~0.1 s, over the internet in about a second).
PENDING_WAIT_SECS = 3.0


class OfferError(ValueError):
    """The body of an offer request is not a usable SDP offer."""

    status = 400


def json_object(body: bytes, what: str) -> dict:
    """The JSON object in a request body (bounded in size by _read_limited)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OfferError(f"{what} is not JSON: {e}") from None
    except RecursionError:
        raise OfferError(f"{what} is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise OfferError(f"{what} must be a JSON object")
    return data


def parse_offer(data: dict) -> SmallWebRTCRequest:
    """The SDP offer in an offer request's JSON object."""
    sdp, kind, pc_id = data.get("sdp"), data.get("type"), data.get("pc_id")
    if kind != "offer":
        raise OfferError(f"'type' must be 'offer', got {kind!r}")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise OfferError("'sdp' is not a session description (it must start with 'v=0')")
    if "m=audio" not in sdp:
        raise OfferError("the offer has no audio track")
    if "a=fingerprint:" not in sdp:
        # Without it, DTLS would accept any certificate: anyone on the path could listen.
        raise OfferError("the offer has no DTLS fingerprint (a=fingerprint)")
    if pc_id is not None and not isinstance(pc_id, str):
        raise OfferError("'pc_id' must be a string")
    return SmallWebRTCRequest(
        sdp=sdp, type=kind, pc_id=pc_id, restart_pc=bool(data.get("restart_pc"))
    )


class OfferRate:
    """How many offers each client (IP address) sent in the last minute, against
    ``server.offers_per_minute``."""

    def __init__(self, config):
        self._config = config
        self._offers: dict[str, deque[float]] = {}  # client → times of its recent offers

    def admit(self, client: str) -> bool:
        """Count an offer from ``client``; False when it is over its rate."""
        now = time.monotonic()
        recent = self._offers.setdefault(client, deque())
        while recent and recent[0] < now - 60:
            recent.popleft()
        if not recent:
            # Forget idle clients (the deque is made again on their next offer).
            self._offers = {c: d for c, d in self._offers.items() if d or c == client}
        if len(recent) >= self._config.server.offers_per_minute:
            return False
        recent.append(now)
        return True


class WebRTCServer:
    """Owns the sessions of one server process."""

    def __init__(self, stack: ModelStack):
        self.stack = stack
        self.sessions: dict[str, Session] = {}
        self._secrets: dict[str, str] = {}  # pc_id → the session secret its creator holds
        # pc_id (or an offer being answered) → client, for offers not yet connected.
        self._pending: dict[object, str] = {}
        self._rate = OfferRate(stack.config)
        self._tasks: set[asyncio.Task] = set()
        self._handler = SmallWebRTCRequestHandler()
        self.metrics = ServerMetrics()
        self.draining = False  # shutting down: no new sessions
        self._end_reasons: dict[str, str] = {}  # why a session is being ended
        self._logs: dict[str, SessionLog] = {}  # each session's JSON Lines log

    @property
    def config(self):
        return self.stack.config

    def has_room(self) -> bool:
        """Whether another session (browser or phone call) may start."""
        return not self.draining and len(self.sessions) < self.config.server.max_sessions

    def admit_offer(self, client: str) -> bool:
        """Count an offer from ``client``; False when it is over its rate."""
        return self._rate.admit(client)

    def check_owner(self, pc_id: str, secret: str | None):
        """Only the creator of a live session may change it."""
        known = self._secrets.get(pc_id)
        if pc_id not in self.sessions or known is None:
            raise HTTPException(status_code=404, detail=f"no session {pc_id}: it has ended")
        if not isinstance(secret, str) or not hmac.compare_digest(known, secret):
            raise HTTPException(
                status_code=403, detail="not this session's session_secret: it is someone else's"
            )

    async def answer(
        self, request: SmallWebRTCRequest, secret: str | None = None, client: str = "?"
    ) -> dict:
        if request.pc_id:
            self.check_owner(request.pc_id, secret)
        elif not await self._earlier_offers_connected(client):
            raise HTTPException(
                status_code=429,
                detail=f"{self._pending_from(client)} earlier offer(s) from {client} have not"
                " connected yet: connect, or wait for them to time out",
            )
        elif not self.has_room():
            raise HTTPException(status_code=503, detail=self.config.server.busy_message)
        else:
            self._handler.update_ice_servers(
                [RTCIceServer(**server) for server in ice_servers(self.config.server)]
            )
        # Pending from now on: a second offer of this client's, sent at once, waits for it.
        answering = object()
        if not request.pc_id:
            self._pending[answering] = client
        try:
            answer = await self._handler.handle_web_request(
                request, lambda connection: self._start_session(connection, client)
            )
        except HTTPException:
            raise
        except Exception as e:
            raise OfferError(f"the SDP offer was rejected: {type(e).__name__}: {e}") from None
        finally:
            self._pending.pop(answering, None)
        if answer is None:
            raise OfferError("the SDP offer produced no answer")
        if request.pc_id:
            return answer
        pc_id = answer["pc_id"]
        if pc_id not in self.sessions:  # it ended already
            raise OfferError("the session ended before it could be answered")
        self._secrets[pc_id] = secrets.token_urlsafe(24)
        return {**answer, "session_secret": self._secrets[pc_id]}

    async def offer(self, data: dict, client: str) -> tuple[int, dict]:
        """An offer request (its JSON object, from ``client``) → (HTTP status, answer or
        error): what ``POST /api/offer`` does once the request is read."""

        async def take():
            return await self.answer(parse_offer(data), data.get("session_secret"), client)

        return await outcome(take())

    async def candidates(self, data: dict) -> tuple[int, dict]:
        """An ICE candidate request's JSON object → (HTTP status, body), for its owner only."""

        async def add():
            pc_id, candidates = candidates_of(data)
            self.check_owner(pc_id, data.get("session_secret"))
            try:
                await self.add_ice_candidates(pc_id, candidates)
            except HTTPException:
                raise
            except Exception as e:  # noqa: BLE001 - a bad candidate is the caller's error
                raise OfferError(f"bad ICE candidate: {type(e).__name__}: {e}") from None
            return {"status": "ok"}

        return await outcome(add())

    def _pending_from(self, client: str) -> int:
        return sum(1 for c in self._pending.values() if c == client)

    async def _earlier_offers_connected(self, client: str) -> bool:
        """Whether ``client`` has fewer than ``server.pending_offers_per_client`` offers
        not yet connected, waiting ``PENDING_WAIT_SECS`` for them: two callers behind one
        address who press Talk together both get in, while offers that never connect
        cannot fill the server from one address."""
        deadline = time.monotonic() + PENDING_WAIT_SECS
        while self._pending_from(client) >= self.config.server.pending_offers_per_client:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _start_session(self, connection: SmallWebRTCConnection, client: str):
        params = TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=self.config.audio_in_sample_rate,
            audio_out_sample_rate=self.config.audio_out_sample_rate,
        )
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=params)
        session = build_session(
            self.stack,
            transport,
            session_id=connection.pc_id,
            on_turn=lambda turn: self.turn_done(connection.pc_id, "webrtc", turn),
            peer_silence_secs=self.config.server.peer_silence_secs,
        )
        self.sessions[connection.pc_id] = session
        self._pending[connection.pc_id] = client

        connected = asyncio.Event()

        @transport.event_handler("on_client_connected")
        async def _on_connected(_transport, _connection):
            self._pending.pop(connection.pc_id, None)
            connected.set()

        @transport.event_handler("on_client_disconnected")
        async def _on_disconnected(_transport, _connection):
            await self.end_session(connection.pc_id, "hung up")

        async def drop_if_never_connected():
            # An offer whose peer never connects must not hold a slot.
            try:
                await asyncio.wait_for(connected.wait(), self.config.server.connect_timeout_secs)
            except TimeoutError:
                await self.end_session(connection.pc_id, "never connected")

        async def run():
            try:
                await self.run_session(connection.pc_id, session, kind="webrtc")
            finally:
                self._pending.pop(connection.pc_id, None)
                # Its peer connection goes with it (an offer that never connected kept
                # its own until shutdown).
                try:
                    await asyncio.wait_for(connection.disconnect(), 5)
                except Exception as e:  # noqa: BLE001 - the session has ended either way
                    logger.warning(f"peer connection {connection.pc_id} did not close: {e!r}")

        for work in (run(), drop_if_never_connected()):
            task = asyncio.create_task(work)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run_session(self, session_id: str, session: Session, *, kind: str):
        """Run a session (``kind``: webrtc or phone) until it ends."""
        self.sessions[session_id] = session
        self.metrics.session_started(kind)
        if self.config.server.session_logs:
            self._logs[session_id] = SessionLog(self.session_log_dir, session_id, kind)
        if session.peer_watch is not None:

            @session.peer_watch.event_handler("on_peer_silent")
            async def _on_peer_silent(_watch, secs: float):
                await self.end_session(session_id, f"peer silent: no audio for {secs:g} s")

        logger.info(f"session {session_id} started ({kind}, {len(self.sessions)} active)")
        try:
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(session.worker)
            await runner.run()
        except Exception as e:  # one broken session must not take the server down
            logger.exception(f"session {session_id} failed: {e}")
            self._end_reasons.setdefault(session_id, f"error: {type(e).__name__}")
        finally:
            self.sessions.pop(session_id, None)
            self._secrets.pop(session_id, None)
            reason = self._end_reasons.pop(session_id, "ended")
            self.metrics.session_ended(kind, reason.split(":")[0])
            if (log := self._logs.pop(session_id, None)) is not None:
                log.end(reason)
            logger.info(f"session {session_id} ended: {reason} ({len(self.sessions)} active)")

    def turn_done(self, session_id: str, kind: str, turn: TurnRecord) -> None:
        """An answered turn: into the metrics and the session's log."""
        self.metrics.turn(kind, turn.stages())
        if (log := self._logs.get(session_id)) is not None:
            log.turn(turn.index + 1, turn.transcript, turn.reply, turn.stages())

    @property
    def session_log_dir(self) -> Path:
        folder = self.config.server.session_log_dir
        return Path(folder).expanduser() if folder else cache_dir() / "sessions"

    async def end_session(self, session_id: str, reason: str, *, gracefully: bool = False):
        """End a session, saying why (the log line and the metrics keep the first reason).
        ``gracefully``: after what is queued (an EndFrame), else at once."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        self._end_reasons.setdefault(session_id, reason)
        if gracefully:
            await session.worker.queue_frame(EndFrame())
        else:
            await session.worker.cancel()

    async def add_ice_candidates(self, pc_id: str, candidates: list[dict]):
        await self._handler.handle_patch_request(
            SmallWebRTCPatchRequest(
                pc_id=pc_id,
                candidates=[
                    IceCandidate(
                        candidate=c.get("candidate", ""),
                        sdp_mid=c.get("sdp_mid", c.get("sdpMid", "")),
                        sdp_mline_index=c.get("sdp_mline_index", c.get("sdpMLineIndex", 0)),
                    )
                    for c in candidates
                ],
            )
        )

    async def close(self):
        """Shut down: take no new sessions, let replies being spoken finish (for at most
        ``server.shutdown_grace_secs``), then end every session. Bounded throughout, so a
        stuck peer connection cannot hold up the exit."""
        self.draining = True
        deadline = time.monotonic() + self.config.server.shutdown_grace_secs
        while time.monotonic() < deadline and any(
            not session.gate.listening for session in self.sessions.values()
        ):
            await asyncio.sleep(0.1)
        for session_id in list(self.sessions):
            await self.end_session(session_id, "server shutdown")
        try:
            await asyncio.wait_for(self._handler.close(), 5)
        except TimeoutError:
            logger.warning("peer connections did not close within 5 s; exiting anyway")
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)


def create_app(stack: ModelStack, *, access_token: str | None = None) -> FastAPI:
    """The server's app. ``access_token``: every request but the health check and the
    phone provider's (signed or one-time) ones must carry it (pipelines/serve/access.py)."""
    server = WebRTCServer(stack)
    app = front_door_app(server, access_token=access_token)
    add_phone_routes(app, server)
    return app


def front_door_app(desk, *, access_token: str | None = None) -> FastAPI:
    """The routes every server has, in front of ``desk``: this process's WebRTCServer, or
    a cluster's (pipelines/cluster/front_door.py), which has the same ``config``,
    ``metrics``, ``sessions``, ``admit_offer``, ``offer``, ``candidates`` and ``close``."""
    app = FastAPI(title="Local voice agent")
    app.state.server = desk
    if access_token:
        _require_token(app, desk, access_token)
    _add_page_routes(app, desk)
    _add_offer_routes(app, desk)
    # Outermost (added last): every route's body is bounded in time, the token's too.
    app.add_middleware(
        BodyDeadline,
        secs=lambda: desk.config.server.request_timeout_secs,
        on_refused=lambda status: desk.metrics.refused.labels(REFUSAL_REASONS[status]).inc(),
    )

    @app.on_event("shutdown")
    async def _shutdown():
        await desk.close()

    return app


def _require_token(app: FastAPI, server: WebRTCServer, access_token: str) -> None:
    """Every request carries the token, but the health check and a signed Twilio webhook."""

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        path = request.url.path
        # Twilio's webhook has its own proof (X-Twilio-Signature) when its token is set.
        signed = path == "/" and request.method == "POST" and os.environ.get("TWILIO_AUTH_TOKEN")
        if path == "/api/health" or signed or token_matches(request, access_token):
            return await call_next(request)
        logger.warning(f"refused {request.method} {path}: no valid access token")
        server.metrics.refused.labels("no_token").inc()
        return JSONResponse(
            {"error": "this server needs its access token: open the URL it printed (?token=…)"},
            status_code=401,
        )


def _add_page_routes(app: FastAPI, server: WebRTCServer) -> None:
    """The page, its ICE servers, the metrics and the health check."""

    @app.get("/")
    async def index():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/api/ice")
    async def ice():
        """The ICE servers for the page's peer connection (fresh TURN credentials)."""
        return {"iceServers": ice_servers(server.config.server)}

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/health")
    async def health():
        return {"status": "ok", "sessions": len(server.sessions)}


def _add_offer_routes(app: FastAPI, server: WebRTCServer) -> None:
    """``POST /api/offer`` (a browser call's SDP offer) and ``PATCH /api/offer`` (its ICE
    candidates): same-site, rate-limited, size- and time-limited, owner-checked."""

    def refused(status: int, error: str) -> JSONResponse:
        logger.warning(f"refused a request ({status}): {error}")
        server.metrics.refused.labels(REFUSAL_REASONS.get(status, str(status))).inc()
        return JSONResponse({"error": error}, status_code=status)

    async def read_json(request: Request, what: str) -> dict:
        body = await _read_limited(request, server.config.server.max_offer_bytes)
        return json_object(body, what)

    @app.post("/api/offer")
    async def offer(request: Request):
        if not same_site(request, server.config.server.allowed_origins):
            return refused(403, f"offers from {request.headers['origin']} are not accepted")
        client = request.client.host if request.client else "?"
        if not server.admit_offer(client):
            return refused(
                429, f"more than {server.config.server.offers_per_minute} offers a minute"
            )
        try:
            data = await read_json(request, "offer")
        except OfferError as e:
            return refused(e.status, str(e))
        status, body = await server.offer(data, client)
        return body if status == 200 else refused(status, body["error"])

    @app.patch("/api/offer")
    async def ice_candidates(request: Request):
        if not same_site(request, server.config.server.allowed_origins):
            return refused(403, f"requests from {request.headers['origin']} are not accepted")
        try:
            data = await read_json(request, "ICE candidate request")
        except OfferError as e:
            return refused(e.status, str(e))
        status, body = await server.candidates(data)
        return body if status == 200 else refused(status, body["error"])


async def outcome(work) -> tuple[int, dict]:
    """(200, what ``work`` returns), or the HTTP status and error a refusal raised."""
    try:
        return 200, await work
    except OfferError as e:
        return e.status, {"error": str(e)}
    except HTTPException as e:
        return e.status_code, {"error": str(e.detail)}


def candidates_of(data: dict) -> tuple[str, list[dict]]:
    """The pc_id and candidates of an ICE candidate request's JSON object."""
    pc_id, candidates = data.get("pc_id"), data.get("candidates")
    if not isinstance(pc_id, str) or not isinstance(candidates, list):
        raise OfferError(
            "bad ICE candidate request: 'pc_id' must be a string and 'candidates' a list"
        )
    return pc_id, candidates


def ice_servers(config) -> list[dict]:
    """``server.ice_servers`` as RTCIceServer dicts, TURN credentials made now when
    ``server.turn_secret`` is set."""
    servers = []
    for ice in config.ice_servers:
        entry = {"urls": ice.urls}
        if config.turn_secret and any(u.startswith(("turn:", "turns:")) for u in ice.urls):
            entry["username"], entry["credential"] = turn_credentials(
                config.turn_secret, config.turn_ttl_secs
            )
        elif ice.username:
            entry["username"], entry["credential"] = ice.username, ice.credential
        servers.append(entry)
    return servers


def same_site(request: Request, allowed: list[str]) -> bool:
    """A browser's request comes from this server's own page (its Origin names the host
    the request was sent to) or from an allowed origin. Requests without an Origin (not
    from a browser page: scripts, the test callers) pass."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[::1": not an origin any page has
        return False
    return netloc == request.headers.get("host") or origin in allowed


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    """Read the body, refusing to buffer more than a little past ``max_bytes`` (its time
    is bounded for every route, pipelines/serve/deadlines.BodyDeadline)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise OfferError(f"request body of {declared} bytes is over the {max_bytes} allowed")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise OfferError(f"request body is over the {max_bytes} bytes allowed")
    return bytes(body)
