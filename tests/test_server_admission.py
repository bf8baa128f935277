"""The browser server in front of strangers: sessions belong to their creator, offers are
admitted with bounds (fingerprint, origin, rate, body time, connect time), and bad JSON or
a dead session's id never breaks the server (issue 10's probe, one test per finding)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from pipelines.callers.agent_process import agent_server
from pipelines.callers.webrtc import WebRTCCaller
from pipelines.callers.webrtc import unconnected_offer as raw_offer
from tests.conftest import no_sessions

ROOT = Path(__file__).resolve().parent.parent


async def test_a_live_session_cannot_be_taken_over_and_a_dead_one_cannot_be_revived(server):
    app, url = server
    await no_sessions(app)
    victim = WebRTCCaller(url)
    await victim.connect()
    assert victim.session_secret
    pc, takeover = await raw_offer(pc_id=victim.pc_id, restart_pc=True)
    try:
        async with aiohttp.ClientSession() as http:
            for secret in (None, "guessed", victim.session_secret[:-1] + "x"):
                body = takeover if secret is None else {**takeover, "session_secret": secret}
                async with http.post(f"{url}/api/offer", json=body) as r:
                    assert r.status == 403, await r.text()
                patch = {"pc_id": victim.pc_id, "candidates": []}
                if secret is not None:
                    patch["session_secret"] = secret
                async with http.patch(f"{url}/api/offer", json=patch) as r:
                    assert r.status == 403
            # The victim's call goes on, and its owner may still add candidates.
            await asyncio.sleep(0.5)
            assert victim.pc.connectionState == "connected"
            assert victim.pc_id in app.state.server.sessions
            owner_patch = {
                "pc_id": victim.pc_id,
                "candidates": [],
                "session_secret": victim.session_secret,
            }
            async with http.patch(f"{url}/api/offer", json=owner_patch) as r:
                assert r.status == 200
            # Once it has ended, its id is dead, even with its secret.
            await victim.close()
            await no_sessions(app)
            revive = {**takeover, "session_secret": victim.session_secret}
            async with http.post(f"{url}/api/offer", json=revive) as r:
                assert r.status == 404
            async with http.patch(f"{url}/api/offer", json=owner_patch) as r:
                assert r.status == 404
    finally:
        await pc.close()
        await victim.close()


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_json_nested_thirty_thousand_deep_gets_400(server, method):
    _, url = server
    async with aiohttp.ClientSession() as http:
        for body in ("[" * 30000, '{"pc_id": ' + "[" * 30000):
            async with http.request(method, f"{url}/api/offer", data=body) as r:
                assert r.status == 400
                assert "JSON" in (await r.json())["error"]
        async with http.get(f"{url}/api/health") as r:
            assert r.status == 200


async def test_an_offer_without_a_dtls_fingerprint_is_refused(server):
    _, url = server
    pc, offer = await raw_offer()
    await pc.close()
    offer["sdp"] = "".join(
        line for line in offer["sdp"].splitlines(keepends=True) if "a=fingerprint" not in line
    )
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/offer", json=offer) as r:
        assert r.status == 400 and "fingerprint" in (await r.json())["error"]


async def test_offers_that_never_connect_free_their_slots(server, monkeypatch):
    """Abandoned offers used to hold every slot for a minute: real callers got 503."""
    app, url = server
    config = app.state.server.config.server
    monkeypatch.setattr(config, "connect_timeout_secs", 2.0)
    # As if from many addresses (one address holds one pending offer: tests/test_front_door.py).
    monkeypatch.setattr(config, "pending_offers_per_client", config.max_sessions + 1)
    await no_sessions(app)
    peers = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(config.max_sessions):
                pc, offer = await raw_offer()
                peers.append(pc)
                async with http.post(f"{url}/api/offer", json=offer) as r:
                    assert r.status == 200
            pc, offer = await raw_offer()
            peers.append(pc)
            async with http.post(f"{url}/api/offer", json=offer) as r:
                assert r.status == 503  # full, for now
        await no_sessions(app, timeout=10)
        caller = WebRTCCaller(url)
        await caller.connect()
        assert caller.pc.connectionState == "connected"
        await caller.close()
    finally:
        for pc in peers:
            await pc.close()


async def test_a_client_sending_offers_too_fast_is_told_to_slow_down(server, monkeypatch):
    app, url = server
    monkeypatch.setattr(app.state.server.config.server, "offers_per_minute", 3)
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.post(f"{url}/api/offer", data=b"not an offer") as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert "offers a minute" in (await r.json())["error"]
    # Earlier offers of this module count too; never more than three are read in a minute.
    assert statuses[-1] == 429 and statuses.count(400) <= 3, statuses


async def test_a_request_body_that_never_arrives_gets_408(server, monkeypatch):
    """A stalled upload (Content-Length larger than the body) used to be held forever."""
    app, url = server
    monkeypatch.setattr(app.state.server.config.server, "request_timeout_secs", 1.0)
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/offer HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"sdp": "v=0'
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert b" 408 " in status_line, status_line


async def test_offers_from_another_sites_page_are_refused(server, monkeypatch):
    app, url = server
    host = url.removeprefix("http://")
    async with aiohttp.ClientSession() as http:

        async def status(origin: str) -> int:
            headers = {"Origin": origin}
            async with http.post(f"{url}/api/offer", data=b"{}", headers=headers) as r:
                return r.status

        assert await status("https://evil.example") == 403
        assert await status(f"http://{host}") == 400  # this server's own page: read, bad offer
        monkeypatch.setattr(
            app.state.server.config.server, "allowed_origins", ["https://friend.example"]
        )
        assert await status("https://friend.example") == 400
        assert await status("https://evil.example") == 403


async def test_the_server_exits_promptly_after_a_dead_session_is_restarted():
    """A restart_pc on a dead pc_id used to leave the server deaf to SIGTERM."""
    async with agent_server("tiny", timeout=120) as (url, server):
        caller = WebRTCCaller(url)
        await caller.connect()
        pc_id, secret = caller.pc_id, caller.session_secret
        await caller.close()
        await asyncio.sleep(1.0)
        pc, offer = await raw_offer(pc_id=pc_id, restart_pc=True, session_secret=secret)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/api/offer", data=json.dumps(offer)) as r:
                assert r.status == 404
        await pc.close()
        server.send_signal(signal.SIGTERM)
        assert await _exits(server, within=10), "the server did not exit within 10 s of SIGTERM"


async def _exits(process, *, within: float) -> bool:
    deadline = time.monotonic() + within
    while process.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return process.poll() is not None


def _metric(text: str, name: str, **labels) -> float:
    """A sample's value in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0


async def test_metrics_count_sessions_turns_stages_and_refusals(server, question_wavs):
    import soundfile as sf

    app, url = server
    await no_sessions(app)
    async with aiohttp.ClientSession() as http:

        async def metrics() -> str:
            async with http.get(f"{url}/metrics") as r:
                assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
                return await r.text()

        before = await metrics()
        async with http.post(f"{url}/api/offer", data=b"{}") as r:
            assert r.status == 400
        caller = WebRTCCaller(url)
        await caller.connect()
        samples, rate = sf.read(str(question_wavs[0][0]), dtype="int16")
        started = time.monotonic()
        caller.mic.say(samples, rate)
        await caller.wait_for_reply(started, timeout=90)
        await asyncio.sleep(1.0)  # the turn's figures come once the reply has played
        during = await metrics()
        await caller.close()
        await no_sessions(app)
        after = await metrics()

    def grew(text, name, **labels):
        return _metric(text, name, **labels) - _metric(before, name, **labels)

    assert grew(during, "voice_agent_sessions", kind="webrtc") == 1
    assert grew(during, "voice_agent_turns_total", kind="webrtc") == 1
    assert grew(during, "voice_agent_stage_seconds_count", stage="voice_to_voice") == 1
    assert grew(after, "voice_agent_sessions", kind="webrtc") == 0
    assert grew(after, "voice_agent_sessions_ended_total", kind="webrtc", reason="hung up") == 1
    assert grew(after, "voice_agent_refused_total", reason="bad_request") == 1


async def test_on_sigterm_a_reply_being_spoken_finishes_then_the_server_exits(question_wavs):
    """Graceful shutdown: no new sessions, the reply in progress is heard to its end (within
    server.shutdown_grace_secs), then the process exits."""
    import soundfile as sf

    async with agent_server("tiny", timeout=120) as (url, server):
        caller = WebRTCCaller(url)
        await caller.connect()
        samples, rate = sf.read(str(question_wavs[1][0]), dtype="int16")
        started = time.monotonic()
        caller.mic.say(samples, rate)
        for _ in range(600):
            loud = [t for t, c in caller.heard_chunks() if t > started and abs(c).max() > 500]
            if loud:
                break
            await asyncio.sleep(0.05)
        assert loud, "no reply began"
        server.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert await _exits(server, within=25)
        heard = [t for t, c in caller.heard_chunks() if t > stopped_at and abs(c).max() > 500]
        await caller.close()
    assert heard and heard[-1] - stopped_at > 0.5, "the reply was cut off at SIGTERM"


async def test_hostile_requests_at_every_endpoint_get_no_500_and_the_server_stays_up(
    server, monkeypatch
):
    """pipelines/callers/fuzz.py, a short round: malformed bodies, deep JSON, mutated offers, bad
    candidates, webhook junk, made-up and abused stream tokens."""
    from pipelines.callers.fuzz import fuzz

    app, url = server
    # Every request is read (the per-client offer limit would answer most of them 429).
    monkeypatch.setattr(app.state.server.config.server, "offers_per_minute", 10_000)
    report = await fuzz(url, 30, seed=1)
    assert not report["findings"], report["findings"]
    assert report["endpoints"]["WS /ws/{token}"]["sessions_left"] == 0
    await no_sessions(app)


async def test_calls_that_ended_leave_nothing_of_their_sessions_behind(
    server, question_wavs, monkeypatch
):
    """Memory per call stays flat: a hung-up call's pipeline, services, conversation and
    peer connection are all freed (the LLM's sequence too)."""
    import gc

    import soundfile as sf
    from pipecat.pipeline.worker import PipelineWorker

    from pipelines.services.llm_local import LocalLLMService
    from pipelines.turns.user_turn import UserTurnProcessor

    app, url = server
    # The offers earlier tests sent this minute do not count against these calls.
    monkeypatch.setattr(app.state.server.config.server, "offers_per_minute", 1000)
    await no_sessions(app)
    kinds = (PipelineWorker, UserTurnProcessor, LocalLLMService, RTCPeerConnection)

    def alive() -> list[object]:
        gc.collect()
        return [o for o in gc.get_objects() if isinstance(o, kinds)]

    # Only what these calls create counts (earlier tests' fixtures may hold their own;
    # held here so that no new object can take one of their ids).
    held = alive()
    before = {id(o) for o in held}
    samples, rate = sf.read(str(question_wavs[0][0]), dtype="int16")
    for _ in range(3):
        caller = WebRTCCaller(url)
        await caller.connect()
        started = time.monotonic()
        caller.mic.say(samples, rate)
        await caller.wait_for_reply(started, timeout=90)
        await caller.close()
        await no_sessions(app)
    del caller

    def left() -> list[str]:
        return [type(o).__name__ for o in alive() if id(o) not in before]

    # aiortc takes a few seconds to wind a closed connection down.
    deadline = time.monotonic() + 20
    while left() and time.monotonic() < deadline:
        await asyncio.sleep(1)
    assert left() == []
