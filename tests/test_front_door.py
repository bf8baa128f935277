"""Slots held by nobody, and the front door: issue 22's hostile probe of the server, one
test per finding (dead callers, offers that never connect, slow or abandoned requests,
a malformed Origin, clients that leave mid-handshake, shutdown with phone calls)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from loguru import logger

from pipelines.callers.agent_process import agent_server
from pipelines.callers.phone import PhoneCall
from pipelines.callers.webrtc import WebRTCCaller, unconnected_offer
from tests.conftest import dial, no_sessions

ROOT = Path(__file__).resolve().parent.parent


async def _session_gone(app, session_id: str, within: float) -> float:
    """Seconds until ``session_id`` has left the server (fails past ``within``)."""
    started = time.monotonic()
    while session_id in app.state.server.sessions:
        assert time.monotonic() - started < within, f"{session_id} still held"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


class _Logs:
    """What the server logged meanwhile, through loguru and the standard library
    (uvicorn's "Exception in ASGI application" goes there)."""

    def __init__(self, caplog):
        self.records: list[tuple[int, str]] = []
        self._caplog = caplog

    def __enter__(self):
        self._caplog.set_level(logging.WARNING)
        self._sink = logger.add(
            lambda m: self.records.append((m.record["level"].no, m.record["message"])),
            level="INFO",
        )
        return self

    def __exit__(self, *exc):
        logger.remove(self._sink)

    def errors(self) -> list[str]:
        ours = [text for level, text in self.records if level >= logging.ERROR]
        theirs = [r.getMessage() for r in self._caplog.records if r.levelno >= logging.ERROR]
        return ours + theirs

    def said(self, words: str) -> bool:
        return any(words in text for _, text in self.records)


@pytest.fixture
def short_peer_silence(server, monkeypatch):
    app, _ = server
    monkeypatch.setattr(app.state.server.config.server, "peer_silence_secs", 2.0)
    return 2.0


async def test_a_browser_caller_whose_process_dies_frees_its_slot_within_seconds(
    server, short_peer_silence
):
    """Killed without a DTLS close, a caller held its slot 34.6 s, until ICE gave up."""
    app, url = server
    await no_sessions(app)
    script = (
        "import asyncio, sys\n"
        "from pipelines.callers.webrtc import WebRTCCaller\n"
        "async def main():\n"
        "    caller = WebRTCCaller(sys.argv[1])\n"
        "    await caller.connect()\n"
        "    print(caller.pc_id, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, not waited on here
        [sys.executable, "-c", script, url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        pc_id = (await asyncio.to_thread(process.stdout.readline)).strip()
        assert pc_id in app.state.server.sessions
        await asyncio.sleep(1.0)  # a call under way, its audio flowing
        process.kill()
        held = await _session_gone(app, pc_id, within=short_peer_silence + 5)
    finally:
        process.kill()
        process.wait()
    assert held < short_peer_silence + 3
    # The slot is free: the next caller is answered.
    caller = WebRTCCaller(url)
    await caller.connect()
    assert caller.pc.connectionState == "connected"
    await caller.close()
    await no_sessions(app)


async def test_a_phone_stream_that_goes_quiet_frees_its_slot(server, short_peer_silence):
    """A provider streams audio all the time; a stream that stops (its socket left open)
    is a line that has gone."""
    app, url = server
    call = await dial(app, url)
    (session_id,) = app.state.server.sessions
    call.go_quiet()
    held = await _session_gone(app, session_id, within=short_peer_silence + 5)
    assert held < short_peer_silence + 3
    await asyncio.wait_for(call.closed.wait(), 10)
    await call.close()


async def test_a_phone_message_of_six_megabytes_ends_that_call_at_once(server):
    """One 6 MB media message kept its call's slot ~18 s."""
    app, url = server
    call = await dial(app, url)
    (session_id,) = app.state.server.sessions
    payload = "A" * (6 * 1024 * 1024)
    message = f'{{"event": "media", "streamSid": "{call.stream_id}", "media": {{"payload": "{payload}"}}}}'
    try:
        await call.send_raw(message)
    except ConnectionError:
        pass  # the server closed the stream while the message was still being sent
    held = await _session_gone(app, session_id, within=5)
    assert held < 3
    await asyncio.wait_for(call.closed.wait(), 10)
    await call.close()
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/health") as r:
        assert r.status == 200


async def test_offers_that_never_connect_close_their_peer_connections(server, monkeypatch):
    """Freed from admission after the connect timeout, they used to keep their peer
    connections (and ports) until shutdown."""
    app, url = server
    config = app.state.server.config.server
    monkeypatch.setattr(config, "connect_timeout_secs", 1.0)
    monkeypatch.setattr(config, "offers_per_minute", 1000)
    await no_sessions(app)
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, RTCPeerConnection)}
    ours = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                pc, offer = await unconnected_offer()
                ours.append(pc)
                async with http.post(f"{url}/api/offer", json=offer) as r:
                    assert r.status == 200, await r.text()
                await no_sessions(app)
    finally:
        for pc in ours:
            await pc.close()

    def servers_open() -> list[str]:
        return [
            o.connectionState
            for o in gc.get_objects()
            if isinstance(o, RTCPeerConnection)
            and id(o) not in before
            and all(o is not pc for pc in ours)
            and o.connectionState != "closed"
        ]

    deadline = time.monotonic() + 10
    while servers_open() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert servers_open() == []


async def test_one_address_cannot_fill_the_server_with_offers_that_never_connect(
    server, monkeypatch
):
    """Two offers every 10 s from one address, under the rate limit, kept a 2-slot server
    full. One address now holds one pending offer; its next waits for it, then gets 429."""
    app, url = server
    config = app.state.server.config.server
    monkeypatch.setattr(config, "offers_per_minute", 1000)
    await no_sessions(app)
    ours = []
    try:
        async with aiohttp.ClientSession() as http:
            pc, offer = await unconnected_offer()
            ours.append(pc)
            async with http.post(f"{url}/api/offer", json=offer) as r:
                assert r.status == 200
            pc, offer = await unconnected_offer()
            ours.append(pc)
            async with http.post(f"{url}/api/offer", json=offer) as r:
                assert r.status == 429, await r.text()
                assert "not connected yet" in (await r.json())["error"]
            assert len(app.state.server.sessions) == 1  # a slot is left for someone else
    finally:
        for pc in ours:
            await pc.close()
    await no_sessions(app, timeout=config.connect_timeout_secs + 5)


async def test_two_callers_behind_one_address_who_call_together_both_get_in(server):
    app, url = server
    await no_sessions(app)
    callers = [WebRTCCaller(url), WebRTCCaller(url)]
    await asyncio.gather(*(c.connect() for c in callers))
    assert all(c.pc.connectionState == "connected" for c in callers)
    assert len(app.state.server.sessions) == 2
    for caller in callers:
        await caller.close()
    await no_sessions(app)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_malformed_origin_is_refused_not_a_500(server, method):
    _, url = server
    headers = {"Origin": "http://[::1", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{url}/api/offer", data=b"{}", headers=headers) as r,
    ):
        assert r.status == 403, await r.text()
        assert "http://[::1" in (await r.json())["error"]


async def _raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_request_headers_sent_slowly_get_408_and_the_connection_closes(server, monkeypatch):
    """A header line every few seconds held a connection for as long as it went on."""
    app, url = server
    monkeypatch.setattr(app.state.server.config.server, "request_timeout_secs", 1.0)
    reader, writer = await _raw(url)
    writer.write(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n")

    async def trickle():
        for i in range(40):
            writer.write(b"X-Slow-%d: 1\r\n" % i)
            await writer.drain()
            await asyncio.sleep(0.25)

    started = time.monotonic()
    sending = asyncio.create_task(trickle())
    try:
        status = await asyncio.wait_for(reader.readline(), 10)
        assert b" 408 " in status, status
        assert time.monotonic() - started < 3
        await asyncio.wait_for(reader.read(), 5)  # then the end of the connection
    finally:
        sending.cancel()
        writer.close()
    # A connection that never sends a byte is closed the same way.
    reader, writer = await _raw(url)
    status = await asyncio.wait_for(reader.readline(), 5)
    assert b" 408 " in status
    writer.close()
    # Requests that come whole are served as ever, on a kept-alive connection too.
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(f"{url}/api/health") as r:
                assert r.status == 200
            await asyncio.sleep(1.5)


async def test_a_phone_webhook_body_that_is_slow_or_abandoned_harms_nothing(
    server, monkeypatch, caplog
):
    """With TWILIO_AUTH_TOKEN set the webhook reads a form body: a slow one was held 45 s,
    and one dropped midway left a traceback."""
    app, url = server
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "a-token")
    monkeypatch.setattr(app.state.server.config.server, "request_timeout_secs", 1.0)
    head = (
        b"POST / HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n"
        b"CallSid=CA1&From="
    )
    with _Logs(caplog) as logs:
        reader, writer = await _raw(url)
        writer.write(head)
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert b" 408 " in status, status
        reader, writer = await _raw(url)
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        await asyncio.sleep(1.0)
    assert logs.said("left before its request body arrived")
    assert logs.errors() == []
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/health") as r:
        assert r.status == 200


async def test_a_phone_client_that_leaves_during_the_handshake_is_one_log_line(server, caplog):
    app, url = server
    with _Logs(caplog) as logs:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/") as r:
                stream_url = (await r.text()).split('url="')[1].split('"')[0]
            ws = await http.ws_connect(stream_url)
            await ws.close()  # before any "connected" / "start" message
        await asyncio.sleep(1.0)
    assert logs.said("refused a media stream")
    assert logs.errors() == []
    assert not app.state.server.sessions


async def test_on_sigterm_a_phone_reply_being_spoken_finishes_too(question_wavs):
    """Phone streams were closed at SIGTERM (1012) while browser calls' replies finished."""
    import soundfile as sf

    async with agent_server("tiny", timeout=120) as (url, process):
        call = PhoneCall(url)
        await call.connect()
        samples, rate = sf.read(str(question_wavs[1][0]), dtype="int16")
        sent = await call.say(samples, rate)
        for _ in range(600):
            if call.played.first_after(sent) is not None:
                break
            await asyncio.sleep(0.05)
        assert call.played.first_after(sent) is not None, "no reply began"
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        await asyncio.wait_for(call.closed.wait(), 25)
        heard_after = call.played.first_after(stopped_at + 0.5)
        await call.close()
        await asyncio.to_thread(process.wait, 25)  # it exits (TimeoutExpired if not)
    assert heard_after is not None, "the phone reply was cut off at SIGTERM"


async def test_each_call_is_logged_as_it_goes(server, question_wavs, monkeypatch, tmp_path):
    """A JSON Lines log per call: started, each answered turn (heard, reply, stages),
    ended with the reason; written line by line, so a server that dies keeps its turns."""
    import soundfile as sf

    from pipelines.serve.session_log import read_log

    app, url = server
    monkeypatch.setattr(app.state.server.config.server, "session_log_dir", str(tmp_path))
    await no_sessions(app)
    samples, rate = sf.read(str(question_wavs[0][0]), dtype="int16")
    caller = WebRTCCaller(url)
    await caller.connect()
    started = time.monotonic()
    caller.mic.say(samples, rate)
    await caller.wait_for_reply(started, timeout=90)
    await asyncio.sleep(0.5)
    (log,) = tmp_path.glob("*.jsonl")
    records = read_log(log)  # while the call goes on
    assert records[0]["event"] == "started" and records[0]["session"] == caller.pc_id
    (turn,) = [r for r in records if r["event"] == "turn"]
    assert turn["turn"] == 1 and turn["heard"] and turn["reply"]
    assert turn["stages"]["voice_to_voice"] > 0
    await caller.close()
    await no_sessions(app)
    assert read_log(log)[-1] == {**read_log(log)[-1], "event": "ended", "reason": "hung up"}
