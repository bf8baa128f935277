"""Model engines shared by a cluster's nodes: Ray Serve deployments whose replicas hold
the LLM engine or the voice, and which every node's calls reach through a handle
(pipelines/cluster/remote.py) instead of loading their own.

Where sharing pays: a MisoTTS voice needs a GPU (its replicas declare ``num_gpus`` and
land on GPU nodes only), and one batched LLM engine on a big machine serves the calls of
many small ones. Whisper, Silero and the turn-end model stay with each node's calls: they
read the caller's audio, which would otherwise cross the network twice.

A conversation stays on one replica while it lasts (a replica keeps a conversation's
prompt read, or MisoTTS its context, between turns): each request names its session, and
SessionRouter sends every request of a session to the same replica. A request whose
replica is gone goes to another, which reads the conversation afresh: slower, never
wrong. Replica counts follow the requests in flight (Serve's autoscaling, cluster.llm /
cluster.tts in the config).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ray import serve
from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from agent.config import AgentConfig, SharedEngineConfig
from pipelines.services.threads import ThreadFedIterator, start_thread

# Each shared engine (config.cluster's field): its deployment's name and its Serve app's.
DEPLOYMENTS = {"llm": ("llm", "voice-agent-llm"), "tts": ("voice", "voice-agent-voice")}


@dataclass(frozen=True)
class SpeechDone:
    """The last item of a remote synthesis: what the engine's generator returned (its own
    form of what it said: MisoTTS's Mimi codes), which comes back with the utterance."""

    codes: object


class SessionRouter(FIFOMixin, RequestRouter):
    """Serve's request router for the shared engines: a request that names a session
    (Serve's multiplexed model id carries it) goes to the replica that session ranks
    first by rendezvous hashing of (session, replica), and to the next if that one is
    full: every request of a conversation reaches the same replica from any node, from
    its first on (Serve's own multiplexed routing learns where an id is only after a
    request has loaded it there, so a call's first requests could land on two). A new
    replica takes over about 1/N of the conversations, which read their prompt afresh
    there. A request with no session goes to the least busy replica."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        session = pending_request.metadata.multiplexed_model_id if pending_request else ""
        if not session:
            return [candidate_replicas]
        ranked = sorted(
            candidate_replicas,
            key=lambda replica: _rank(session, replica.replica_id.unique_id),
            reverse=True,
        )
        return [[replica] for replica in ranked]


def _rank(session: str, replica: str) -> int:
    digest = hashlib.blake2b(f"{session}\0{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _session() -> str | None:
    """The session the request being served names (None: a one-off)."""
    return serve.get_multiplexed_model_id() or None


class LLMReplica:
    """The llama-cpp backend's engine (agent/llm/local.py) for the calls of every node;
    its methods are LocalLLM's that a call's LLM service uses."""

    def __init__(self, config: AgentConfig):
        from agent.llm.local import LocalLLM

        shared, llm = config.cluster.llm, config.llm
        if llm.threads is None and shared.num_cpus >= 1:
            # The cores Ray reserved for it, not every core of a machine it shares.
            llm = llm.model_copy(update={"threads": int(shared.num_cpus)})
        self._llm = LocalLLM.from_config(llm, sessions=shared.sessions)
        self._llm.warm_up()

    def name(self) -> str:
        return self._llm.name

    async def stream_chat(self, messages: list[dict], options: dict) -> AsyncIterator[str]:
        """The reply's text pieces; a cancelled request (the caller took the turn back)
        ends the reply at the next token."""
        stream = self._llm.stream_chat(messages, session=_session(), **options)
        pieces = ThreadFedIterator(lambda: stream, start_thread)
        try:
            async for piece in pieces:
                yield piece
        finally:
            stream.cancel()
            pieces.stop()

    async def read_ahead(self, messages: list[dict], reply: bool) -> None:
        self._llm.read_ahead(messages, session=_session(), reply=reply)

    async def forget(self) -> None:
        session = _session()
        await asyncio.to_thread(self._llm.forget, session)

    async def sessions(self) -> tuple[str, list[str]]:
        """(this replica, the sessions whose conversations it keeps read)."""
        replica = serve.get_replica_context().replica_id.unique_id
        return replica, [s for s in await asyncio.to_thread(self._llm.sessions) if s]


class SpeechReplica:
    """The voice ``tts.engine`` names (MisoTTS on a GPU node) for the calls of every node."""

    def __init__(self, config: AgentConfig):
        from tts import load_engine

        self._engine = load_engine(config)
        self._engine.warm_up()

    def sample_rate(self) -> int:
        return self._engine.sample_rate

    async def synthesize(self, text: str, context) -> AsyncIterator[object]:
        """The speech's int16 chunks as the engine makes them, then a SpeechDone; the
        context's session is this request's."""
        audio = ThreadFedIterator(lambda: self._engine.synthesize(text, context), start_thread)
        try:
            async for chunk in audio:
                yield chunk
        finally:
            audio.stop()
        codes = audio.result
        # The codes travel to the node and come back with the utterance: not as GPU tensors.
        yield SpeechDone(codes.cpu() if hasattr(codes, "cpu") else codes)

    async def forget(self) -> None:
        session = _session()
        if session:
            await asyncio.to_thread(self._engine.forget, session)


def _options(shared: SharedEngineConfig) -> dict:
    if shared.min_replicas == shared.max_replicas:
        scaling = {"num_replicas": shared.min_replicas}
    else:
        scaling = {
            "autoscaling_config": {
                "min_replicas": shared.min_replicas,
                "max_replicas": shared.max_replicas,
                "target_ongoing_requests": shared.target_ongoing,
                "look_back_period_s": shared.load_window_secs,
                "metrics_interval_s": min(2.0, shared.load_window_secs),
                "upscale_delay_s": shared.upscale_delay_secs,
                "downscale_delay_s": shared.downscale_delay_secs,
            }
        }
    return {
        **scaling,
        "ray_actor_options": {"num_cpus": shared.num_cpus, "num_gpus": shared.num_gpus},
        # The engines batch and queue their own work: Serve should not turn requests away.
        "max_ongoing_requests": 256,
        "health_check_period_s": 2,
        "request_router_config": {"request_router_class": SessionRouter},
    }


def deploy_engines(config: AgentConfig) -> dict[str, str]:
    """Start the shared engines ``config.cluster`` names on the joined cluster (blocking
    until their first replicas are ready); which apps were started ({"llm": app, ...})."""
    apps = {}
    serve.start(proxy_location="Disabled")
    for kind, replica in (("llm", LLMReplica), ("tts", SpeechReplica)):
        shared = getattr(config.cluster, kind)
        if shared is None:
            continue
        name, app = DEPLOYMENTS[kind]
        deployment = serve.deployment(replica, name=name).options(**_options(shared))
        serve.run(deployment.bind(config), name=app, route_prefix=None)
        apps[kind] = app
    return apps


def handle(kind: str):
    """A handle to the shared engine ``kind`` ("llm" or "tts") of the joined cluster."""
    name, app = DEPLOYMENTS[kind]
    return serve.get_deployment_handle(name, app_name=app)


def replicas() -> dict[str, dict[str, int]]:
    """Each shared engine's replicas by state ({"llm": {"RUNNING": 2}}); empty without
    Serve. Blocking."""
    try:
        status = serve.status()
    except Exception:  # noqa: BLE001 - no Serve on this cluster: no shared engines
        return {}
    out = {}
    for kind, (_, app) in DEPLOYMENTS.items():
        if app in status.applications:
            for deployment in status.applications[app].deployments.values():
                out[kind] = {str(k): v for k, v in deployment.replica_states.items()}
    return out
