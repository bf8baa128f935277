"""One node's share of a cluster's calls: a Ray actor holding the model stack and the
agent's own server for the calls placed on it.

The front door (pipelines/cluster/front_door.py) hands each new call to a node; from
then on the call's media goes to and from that node alone:

* a browser call's peer connection lives here, so its ICE candidates are this node's
  addresses and its audio never passes through the front door;
* a phone call's one-time stream URL names this node's own address and port, so the
  provider's websocket comes straight here.

The node's HTTP routes carry a random access token known to the front door only: its
one-time phone stream URLs are the only way in from outside. Its calls are admitted by
the node itself (its ``server.max_sessions``), so two front door requests that chose the
same node at once cannot overfill it: the second is refused and goes to another node.
"""

from __future__ import annotations

import asyncio
import os
import resource
import secrets
import time

from agent.config import AgentConfig


class AgentNode:
    """Made with ``ray.remote`` (pipelines/cluster/start.py); every method but ``start``
    is quick. ``host``: the address peers and phone providers reach this node by."""

    def __init__(self, config: AgentConfig, host: str):
        self._config = config
        self._host = host
        self._token = secrets.token_urlsafe(16)
        self._app = None
        self._uvicorn = None
        self._serving: asyncio.Task | None = None
        self._port = 0
        self._cpu = (time.monotonic(), os.times())
        self._load = 0.0

    async def start(self) -> str:
        """Load the models and serve; the node's base URL."""
        from pipelines.serve.server import create_app
        from pipelines.serve.uvicorn_server import AgentServer, free_port, uvicorn_config
        from pipelines.stack import load_stack

        stack = await asyncio.to_thread(
            lambda: load_stack(self._config, **self._shared_engines())
        )
        self._app = create_app(stack, access_token=self._token)
        self._port = free_port(self._host)
        self._uvicorn = AgentServer(
            uvicorn_config(self._app, host=self._host, port=self._port, log_level="warning")
        )
        self._serving = asyncio.create_task(self._uvicorn.serve())
        while not self._uvicorn.started:
            if self._serving.done():
                self._serving.result()  # raises why it could not serve
            await asyncio.sleep(0.05)
        return self.url

    def _shared_engines(self) -> dict:
        """The cluster's shared engines this node's calls use instead of loading their own
        (config.cluster; pipelines/cluster/engines.py). Blocking."""
        from pipelines.cluster.remote import RemoteLLM, RemoteSpeech

        shared = self._config.cluster
        engines = {}
        if shared.llm is not None:
            engines["llm"] = RemoteLLM.connect()
        if shared.tts is not None:
            engines["speech"] = RemoteSpeech.connect()
        return engines

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def _calls(self):
        return self._app.state.server

    def load(self) -> dict:
        """What the front door chooses by: sessions (their ids), room, draining, and the
        share of a CPU this node's process used since the last ask."""
        now, times = time.monotonic(), os.times()
        then, before = self._cpu
        if now - then > 0.5:
            used = (times.user + times.system) - (before.user + before.system)
            self._load = round(used / (now - then), 3)
            self._cpu = (now, times)
        calls = self._calls
        return {
            "url": self.url,
            "sessions": sorted(calls.sessions),
            "max_sessions": calls.config.server.max_sessions,
            "draining": calls.draining,
            "cpu": self._load,
            # Peak resident memory of this node's process (Linux reports KiB).
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }

    async def offer(self, data: dict, client: str) -> tuple[int, dict]:
        return await self._calls.offer(data, client)

    async def candidates(self, data: dict) -> tuple[int, dict]:
        return await self._calls.candidates(data)

    def stream_url(self) -> str:
        """A one-time phone media stream URL that reaches this node."""
        return f"ws://{self._host}:{self._port}/ws/{self._app.state.stream_tokens.issue()}"

    def drain(self, draining: bool = True) -> None:
        """No new calls here (the calls it holds go on to their end); with ``False``, new
        calls again."""
        self._calls.draining = draining

    async def stop(self) -> None:
        """Let replies being spoken finish, end every call, stop serving."""
        if self._serving is not None:
            self._uvicorn.should_exit = True
            await self._serving
