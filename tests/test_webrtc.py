"""The browser transport over a real WebRTC connection on loopback (aiortc on both ends)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest

from pipelines.callers.webrtc import WebRTCCaller
from tests.conftest import replies, wer


async def test_a_spoken_question_over_webrtc_gets_a_spoken_answer(
    server, question_wavs, transcribe
):
    app, url = server
    import soundfile as sf

    path, question = question_wavs[0]
    samples, rate = sf.read(str(path), dtype="int16")
    caller = WebRTCCaller(url)
    await caller.connect()
    try:
        await asyncio.sleep(0.5)
        caller.mic.say(samples, rate)
        await caller.mic.clip_finished.wait()
        reply_audio = await caller.wait_for_reply(time.monotonic(), timeout=90)
        session = app.state.server.sessions[caller.pc_id]
        messages = session.context.get_messages()
        users = [m["content"] for m in messages if m["role"] == "user"]
        assistants = await replies(session)
        assert len(users) == 1 and wer(question, users[0]) <= 0.2, users
        assert assistants, messages
        heard = transcribe(reply_audio, caller.record_rate)
        assert wer(assistants[0], heard) <= 0.35, (assistants[0], heard)
        # The page is told what was heard and answered, over the data channel.
        for _ in range(50):
            if any(m.get("role") == "bot" for m in caller.messages):
                break
            await asyncio.sleep(0.1)
        # ...and when the bot stops and starts listening again.
        for _ in range(50):
            states = [m["state"] for m in caller.messages if m.get("type") == "state"]
            if states[-1:] == ["listening"]:
                break
            await asyncio.sleep(0.1)
        assert states == ["replying", "listening"], caller.messages
        conversation = [
            (m["role"], m["text"]) for m in caller.messages if m.get("type") == "conversation"
        ]
        assert conversation == [("user", users[0]), ("bot", assistants[0])], caller.messages
    finally:
        await caller.close()


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'["an", "array"]',
        b'{"type": "answer", "sdp": "v=0"}',
        b'{"type": "offer", "sdp": 42}',
        b'{"type": "offer", "sdp": "v=0\\r\\no=- 0 0 IN IP4 0.0.0.0\\r\\nm=audio garbage\\r\\n"}',
        b'{"type": "offer", "sdp": "v=0\\r\\n' + b"a=x" * 40000 + b'"}',
    ],
    ids=["not-json", "not-object", "not-offer", "sdp-not-string", "garbage-sdp", "oversized"],
)
async def test_bad_offers_get_400_and_the_server_keeps_serving(server, body):
    _, url = server
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/offer", data=body) as response:
            assert response.status == 400
            assert (await response.json())["error"]
        async with http.get(f"{url}/api/health") as response:
            assert response.status == 200


async def test_after_bad_offers_a_real_call_still_connects(server):
    _, url = server
    caller = WebRTCCaller(url)
    await caller.connect()
    assert caller.pc.connectionState == "connected"
    await caller.close()


async def test_the_caller_times_a_clip_at_its_own_rate_whatever_the_microphone_rate():
    from pipelines.callers.webrtc import ScriptedMicrophone

    mic = ScriptedMicrophone(sample_rate=48000)
    await mic.recv()  # 20 ms of silence first
    clip = mic.say(np.full(16000, 1000, np.int16), 16000)  # one second at 16 kHz
    await mic.recv()
    assert clip.started_at is not None
    assert abs(clip.time_of(16000) - clip.started_at - 1.0) < 1e-9
