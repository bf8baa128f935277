"""A real browser as a caller: Debian's headless Chromium opening the agent's page, with
a WAV file as its (fake) microphone, and what the page shows, read over Chromium's
DevTools protocol."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from pipelines.callers.webrtc import free_loopback_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def chromium(page: str, mic: Path, profile: Path, extra: list[str] = ()) -> Iterator[int]:
    """Chromium open at ``page`` with ``mic`` (a WAV it loops) as its microphone; yields
    its DevTools port, and closes it on leaving."""
    if CHROMIUM is None:
        raise RuntimeError("Debian's chromium is not installed (apt-get install chromium)")
    devtools_port = free_loopback_port()
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}",
            "--autoplay-policy=no-user-gesture-required",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={devtools_port}",
            *extra,
            page,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield devtools_port
    finally:
        browser.terminate()
        browser.wait(timeout=10)


async def page_text(devtools_port: int, element_id: str) -> str:
    """The text of an element of the open page, read over Chromium's DevTools protocol."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{devtools_port}/json") as response:
            pages = [t for t in await response.json() if t["type"] == "page"]
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"]) as ws:
            expression = f"document.getElementById({json.dumps(element_id)}).innerText"
            await ws.send_json(
                {"id": 1, "method": "Runtime.evaluate", "params": {"expression": expression}}
            )
            async for message in ws:
                data = json.loads(message.data)
                if data.get("id") == 1:
                    return data["result"]["result"].get("value", "")
    return ""
