"""The agent's server (``run_agent.py``) in a process of its own, on a free loopback port:
how benchmarks and end-to-end tests meet it, as a user's caller would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from pipelines.callers.webrtc import free_loopback_port

ROOT = Path(__file__).resolve().parents[2]


async def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 300) -> dict:
    """``/api/health`` once the models are loaded; an error if the process exits first."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode}")
            try:
                async with http.get(f"{url}/api/health") as response:
                    if response.status == 200:
                        return await response.json()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError("server did not come up")


@asynccontextmanager
async def agent_server(
    config: str, *, log: Path | None = None, extra_args: list[str] = (), timeout: float = 600
) -> AsyncIterator[tuple[str, subprocess.Popen]]:
    """(base URL, process) of ``run_agent.py --config CONFIG [EXTRA_ARGS]`` once it is
    healthy; it is stopped (SIGTERM, then killed after 30 s) on leaving unless it has
    exited already."""
    port = free_loopback_port()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "run_agent.py"), "--config", config, "--port", str(port)]
        + list(extra_args),
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, server, timeout)
        yield url, server
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if log:
            out.close()
