"""The page at / in a real headless Chromium, talking through its (fake) microphone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipelines.callers.browser import CHROMIUM, chromium, page_text
from tests.conftest import wer, write_wav


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
    with chromium(page, mic, tmp_path / "profile", extra) as devtools_port:
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
