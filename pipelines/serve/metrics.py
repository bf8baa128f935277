"""The server's figures for ``GET /metrics`` (Prometheus text format): sessions by kind,
why they ended, turns, per-stage latency histograms, and refused requests by reason.

One registry per server (not prometheus_client's global one), so two servers in one
process (tests) keep their own counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: where a voice agent's stages fall, from Smart Turn's wait to a slow reply.
STAGE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("voice_agent_sessions", "Sessions now", ["kind"], registry=r)
        self.started = Counter(
            "voice_agent_sessions_started", "Sessions started", ["kind"], registry=r
        )
        self.ended = Counter(
            "voice_agent_sessions_ended",
            "Sessions ended, by reason",
            ["kind", "reason"],
            registry=r,
        )
        self.turns = Counter("voice_agent_turns", "User turns answered", ["kind"], registry=r)
        self.stages = Histogram(
            "voice_agent_stage_seconds",
            "Per-turn latency of each stage (voice_to_voice: end of speech to first reply audio)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        # A cluster's front door (pipelines/cluster/front_door.py): calls on each node.
        self.node_sessions = Gauge(
            "voice_agent_node_sessions", "Sessions now on each cluster node", ["node"], registry=r
        )
        self.refused = Counter(
            "voice_agent_refused", "Requests and streams refused, by reason", ["reason"], registry=r
        )

    def session_started(self, kind: str):
        self.started.labels(kind).inc()
        self.sessions.labels(kind).inc()

    def session_ended(self, kind: str, reason: str):
        self.ended.labels(kind, reason).inc()
        self.sessions.labels(kind).dec()

    def turn(self, kind: str, stages: dict[str, float | None]):
        self.turns.labels(kind).inc()
        for stage, secs in stages.items():
            if secs is not None and secs >= 0:
                self.stages.labels(stage).observe(secs)

    def render(self) -> bytes:
        return generate_latest(self.registry)
