"""uvicorn as the agent's server runs it (run_agent.py and the tests alike).

* Every request's line, headers and body have ``server.request_timeout_secs``
  (pipelines/serve/deadlines.py).
* A websocket message is at most ``WS_MAX_BYTES``: a phone provider's media messages are a
  few hundred bytes, and one of 6 MB kept its call's slot for ~18 s while it was read.
  A bigger one closes that stream (1009), and its call ends.
* On shutdown the calls go first: uvicorn closes open websockets (phone calls) at once,
  before the app's own shutdown runs, so ``AgentServer`` lets every call's reply being
  spoken finish (``server.shutdown_grace_secs``, pipelines/serve/server.close) before
  uvicorn closes what is left. Phone and browser calls get the same grace.
"""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from pipelines.serve.deadlines import header_deadline

WS_MAX_BYTES = 64 * 1024


def free_port(host: str) -> int:
    """A TCP port on ``host`` that nothing listens on, chosen before serving so the
    address printed or handed out is the real one."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def uvicorn_config(app: FastAPI, *, host: str, port: int, **options) -> uvicorn.Config:
    """uvicorn's config for the agent's app (``create_app``); ``options`` go to uvicorn
    (log level, TLS files)."""
    calls = app.state.server
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=header_deadline(lambda: calls.config.server.request_timeout_secs),
        ws_max_size=WS_MAX_BYTES,
        **options,
    )


class AgentServer(uvicorn.Server):
    """uvicorn's server, whose shutdown lets the app's calls finish first."""

    async def shutdown(self, sockets=None) -> None:
        await self.config.app.state.server.close()
        await super().shutdown(sockets)
