"""The page at / in a real headless Chromium, talking through its (fake) microphone."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import aiohttp
import numpy as np
import pytest

from pipelines.callers.webrtc import free_loopback_port
from tests.conftest import wer, write_wav

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
async def test_the_page_holds_a_spoken_conversation_in_chromium(server, question_wavs, tmp_path):
    app, url = server
    await _talk_in_chromium(app, f"{url}/?autostart=1", question_wavs, tmp_path)


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
async def test_the_page_calls_a_server_with_a_token_over_https(stack, question_wavs, tmp_path):
    """As a server bound beyond loopback serves it: the page's URL carries the access token,
    which the page passes on; HTTPS with the self-signed certificate."""
    from pipelines.serve.access import self_signed_certificate
    from pipelines.serve.server import create_app
    from tests.conftest import serving

    cert, key = self_signed_certificate(tmp_path / "tls", "127.0.0.1")
    app = create_app(stack, access_token="page-token")
    async with serving(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as port:
        page = f"https://127.0.0.1:{port}/?token=page-token&autostart=1"
        await _talk_in_chromium(
            app, page, question_wavs, tmp_path, extra=["--ignore-certificate-errors"]
        )


async def _talk_in_chromium(app, page: str, question_wavs, tmp_path, extra: list[str] = ()):
    """Chromium opens ``page`` with a question as its microphone; the bot hears it, answers,
    and the page shows the conversation."""
    import soundfile as sf

    path, question = question_wavs[3]
    speech, rate = sf.read(str(path), dtype="int16")
    # Chromium loops the file as its microphone: speech, then a long pause to answer in.
    pause = np.zeros(rate * 8, np.int16)
    mic = write_wav(
        tmp_path / "mic.wav", np.concatenate([np.zeros(rate, np.int16), speech, pause]), rate
    )
    before = set(app.state.server.sessions)
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
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--remote-debugging-port={devtools_port}",
            *extra,
            page,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        session = None
        for _ in range(600):  # up to 60 s for the call to come up and the bot to answer
            await asyncio.sleep(0.1)
            new = [s for pc, s in app.state.server.sessions.items() if pc not in before]
            if new:
                session = new[0]
                if any(m["role"] == "assistant" for m in session.context.get_messages()):
                    break
        assert session is not None, "the page never called the server"
        messages = session.context.get_messages()
        users = [m["content"] for m in messages if m["role"] == "user"]
        assert users and wer(question, users[0]) <= 0.25, users
        assert any(m["role"] == "assistant" and m["content"].strip() for m in messages), messages
        # The page shows the conversation it had.
        reply = next(m["content"] for m in messages if m["role"] == "assistant")
        shown = ""
        for _ in range(50):
            shown = await page_text(devtools_port, "conversation")
            if "Bot:" in shown:
                break
            await asyncio.sleep(0.1)
        assert f"You: {users[0]}" in shown and f"Bot: {reply}" in shown, shown
    finally:
        browser.terminate()
        browser.wait(timeout=10)
