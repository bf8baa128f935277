"""The agent on a Ray cluster: a local cluster of two nodes on loopback, each with the test
stack (tiny config), behind the front door (pipelines/cluster/). Calls land on both
nodes and are answered, follow-up requests reach their own node and only their owner's
are taken, a full cluster turns the next caller away, a drained node takes no new call,
and a phone call's media goes to its node."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from pipelines.callers.browser import CHROMIUM, chromium, page_text
from pipelines.callers.phone import PhoneCall
from pipelines.callers.webrtc import WebRTCCaller

ray = pytest.importorskip("ray", reason="Ray is not installed (./setup.sh --cluster)")

from agent.config import load_config
from pipelines.cluster.front_door import ClusterDesk, create_cluster_app
from pipelines.cluster.start import node_key, start_cluster
from pipelines.serve.session_log import read_log
from tests.conftest import cluster_settled, cluster_status, cluster_stream_url, serving


@pytest.fixture(scope="module")
def session_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sessions")


@pytest.fixture(scope="module")
async def cluster(session_logs):
    """The front door of two nodes of one call each, writing their calls' logs in
    ``session_logs``."""
    config = load_config("tiny")
    config.server.max_sessions = 1
    config.server.session_log_dir = str(session_logs)
    started = await start_cluster("local:2", config)
    desk = ClusterDesk(config, started.nodes, started.placer)
    try:
        async with serving(create_cluster_app(desk)) as port:
            yield Front(f"http://127.0.0.1:{port}", desk, started.local)
    finally:
        started.close()


@dataclass
class Front:
    """The front door's URL, its desk, and the local Ray cluster behind it."""

    url: str
    desk: ClusterDesk
    local: object  # ray.cluster_utils.Cluster


async def test_calls_land_on_both_nodes_and_each_is_answered(cluster, question_wavs):
    url, desk = cluster.url, cluster.desk
    await cluster_settled(desk, 0)
    import soundfile as sf

    samples, rate = sf.read(str(question_wavs[0][0]), dtype="int16")
    callers = [WebRTCCaller(url), WebRTCCaller(url)]
    try:
        for caller in callers:
            await caller.connect()
        await desk.poll()
        per_node = [len(n["sessions"]) for n in (await cluster_status(url))["nodes"]]
        assert per_node == [1, 1]
        # Each call's media goes to its node: the answer's ICE candidates are the node's.
        for caller in callers:
            started = time.monotonic()
            caller.mic.say(samples, rate)
            reply = await caller.wait_for_reply(started, timeout=90)
            assert len(reply) > rate // 2
        # A third caller finds the cluster full.
        extra = WebRTCCaller(url)
        with pytest.raises(RuntimeError, match="503"):
            await extra.connect()
        await extra.close()
    finally:
        for caller in callers:
            await caller.close()
    await cluster_settled(desk, 0)


async def test_a_calls_requests_reach_its_node_and_only_its_owner_is_heard(cluster):
    url, desk = cluster.url, cluster.desk
    await cluster_settled(desk, 0)
    caller = WebRTCCaller(url)
    await caller.connect()
    try:
        async with aiohttp.ClientSession() as http:
            patch = {"pc_id": caller.pc_id, "candidates": []}
            async with http.patch(f"{url}/api/offer", json=patch) as r:
                assert r.status == 403  # no secret: someone else's call
            patch["session_secret"] = "guessed"
            async with http.patch(f"{url}/api/offer", json=patch) as r:
                assert r.status == 403
            patch["session_secret"] = caller.session_secret
            async with http.patch(f"{url}/api/offer", json=patch) as r:
                assert r.status == 200, await r.text()
            made_up = {"pc_id": "made-up", "candidates": [], "session_secret": "x"}
            async with http.patch(f"{url}/api/offer", json=made_up) as r:
                assert r.status == 404
            async with http.post(f"{url}/api/offer", json={"type": "offer", "sdp": "x"}) as r:
                assert r.status == 400  # refused at the door, no node asked
        assert caller.pc.connectionState == "connected"
    finally:
        await caller.close()
    await cluster_settled(desk, 0)


async def test_a_drained_node_takes_no_new_call_and_its_call_goes_on(cluster):
    url, desk = cluster.url, cluster.desk
    await cluster_settled(desk, 0)
    first = WebRTCCaller(url)
    await first.connect()
    await desk.poll()
    (holding,) = [n for n in desk.nodes.values() if n.load["sessions"]]
    async with aiohttp.ClientSession() as http:
        drain = f"{url}/api/cluster/nodes/{holding.node_id}/drain"
        async with http.post(drain) as r:
            assert r.status == 200 and (await r.json())["draining"]
        async with http.post(f"{url}/api/cluster/nodes/no-such-node/drain") as r:
            assert r.status == 404
    try:
        second = WebRTCCaller(url)
        await second.connect()  # placed on the other node
        await desk.poll()
        status = await cluster_status(url)
        drained = next(n for n in status["nodes"] if n["node"] == holding.node_id)
        assert drained["draining"] and drained["sessions"] == [first.pc_id]
        assert first.pc.connectionState == "connected"
        third = WebRTCCaller(url)
        with pytest.raises(RuntimeError, match="503"):
            await third.connect()
        await third.close()
        await second.close()
    finally:
        await first.close()
        await desk.drain(holding.node_id, False)
    await cluster_settled(desk, 0)


async def test_a_phone_call_streams_straight_to_a_node_and_is_answered(cluster, stack):
    url, desk = cluster.url, cluster.desk
    await cluster_settled(desk, 0)
    call = PhoneCall(url)
    stream_url = await cluster_stream_url(url)
    node_hosts = {n.url.removeprefix("http://") for n in desk.nodes.values()}
    assert stream_url.split("/")[2] in node_hosts  # not the front door's address
    await call.connect(stream_url)
    try:
        question = stack.speech.synthesize_all("What is the capital of France?", 16000)
        sent = await call.say(question, 16000)
        reply = await call.wait_for_reply(sent, timeout=90)
        assert len(reply) > 4000
    finally:
        await call.hang_up()
    await cluster_settled(desk, 0)


async def _relayed_stream_url(url: str, desk) -> str:
    """A stream URL the front door hands a provider when it is reached by wss:// (its
    ``public_host`` set, as behind a TLS tunnel), made reachable here: the tunnel's
    address replaced by the front door's own."""
    desk.config.server.public_host = "voice.example.org"
    try:
        stream_url = await cluster_stream_url(url)
    finally:
        desk.config.server.public_host = ""
    assert stream_url.startswith("wss://voice.example.org/ws/")  # not a node's address
    return stream_url.replace("wss://voice.example.org", url.replace("http://", "ws://"))


async def test_a_phone_call_behind_tls_is_relayed_by_the_front_door(cluster, stack):
    url, desk = cluster.url, cluster.desk
    await cluster_settled(desk, 0)
    stream_url = await _relayed_stream_url(url, desk)
    call = PhoneCall(url)
    await call.connect(stream_url)
    try:
        question = stack.speech.synthesize_all("What is the capital of France?", 16000)
        sent = await call.say(question, 16000)
        assert len(await call.wait_for_reply(sent, timeout=90)) > 4000
        await cluster_settled(desk, 1)
        # Its token opened one stream: used again, it is refused.
        intruder = PhoneCall(url)
        await intruder.connect(stream_url)
        await asyncio.wait_for(intruder.closed.wait(), 10)
        await intruder.close()
    finally:
        await call.hang_up()
    # The caller hung up at the front door: the node's side of the stream ends too.
    await cluster_settled(desk, 0)


async def test_hostile_requests_at_the_front_door_get_no_500_and_it_stays_up(cluster):
    """pipelines/callers/fuzz.py, a short round, at the cluster's front door: malformed
    bodies, deep JSON, mutated offers, bad candidates, webhook junk."""
    from pipelines.callers.fuzz import fuzz

    url, desk = cluster.url, cluster.desk
    report = await fuzz(url, 15, seed=3, streams=False)
    assert not report["findings"], report["findings"]
    assert len(desk.nodes) == 2 and not desk.lost
    await cluster_settled(desk, 0)


async def test_a_lost_node_ends_its_calls_and_the_rest_go_on(cluster, stack, session_logs):
    """It kills the agent node of one of the module's two Ray nodes, which lives on."""
    url, desk = cluster.url, cluster.desk
    await cluster_settled(desk, 0)
    browser = WebRTCCaller(url)
    await browser.connect()
    phone = PhoneCall(url)
    # Relayed by the front door (behind TLS), to the node with room: the other one.
    await phone.connect(await _relayed_stream_url(url, desk))
    question = stack.speech.synthesize_all("What is the capital of France?", 16000)
    try:
        sent = await phone.say(question, 16000)
        await phone.wait_for_reply(sent, timeout=90)
        await desk.poll()
        (doomed,) = [n for n in desk.nodes.values() if browser.pc_id not in n.load["sessions"]]
        (phone_session,) = doomed.load["sessions"]
        ray.kill(doomed.actor, no_restart=True)
        killed_at = time.monotonic()
        # Its stream closes with the node, through the relay.
        await asyncio.wait_for(phone.closed.wait(), 10)
        while doomed.node_id not in (await cluster_status(url))["lost"]:
            assert time.monotonic() - killed_at < 10, "the lost node was not noticed"
            await asyncio.sleep(0.2)
        # The other node's call goes on and is answered.
        assert browser.pc.connectionState == "connected"
        started = time.monotonic()
        browser.mic.say(question, 16000)
        assert len(await browser.wait_for_reply(started, timeout=90)) > 8000
    finally:
        await phone.close()
        await browser.close()
    # Its Ray node lives on: an agent node is started there again and takes calls.
    deadline = time.monotonic() + 60
    while doomed.node_id not in desk.nodes:
        assert time.monotonic() < deadline, await cluster_status(url)
        await asyncio.sleep(0.5)
    status = await cluster_status(url)
    assert status["restarts"][doomed.node_id] == 1 and doomed.node_id not in status["lost"]
    # The lost node's call kept its answered turn in its log.
    (log,) = [p for p in session_logs.glob("*.jsonl") if phone_session in read_log(p)[0]["session"]]
    turns = [r for r in read_log(log) if r["event"] == "turn"]
    assert turns and turns[0]["heard"] and turns[0]["reply"]
    # The next call is answered, on the restarted node (the other one is drained).
    await cluster_settled(desk, 0)
    (other,) = set(desk.nodes) - {doomed.node_id}
    await desk.drain(other)
    caller = WebRTCCaller(url)
    try:
        await caller.connect()
        await desk.poll()
        assert desk.sessions[caller.pc_id] == doomed.node_id
        started = time.monotonic()
        caller.mic.say(question, 16000)
        assert len(await caller.wait_for_reply(started, timeout=90)) > 8000
    finally:
        await caller.close()
        await desk.drain(other, False)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
async def test_a_browser_call_on_a_lost_node_shows_it_has_ended(cluster, tmp_path):
    """The page in Chromium calls through the front door; its node is killed; the page,
    whose media went to that node alone, says the connection is gone and offers Talk."""
    from agent.audio import write_wav

    url, desk = cluster.url, cluster.desk
    await cluster_settled(desk, 0)
    assert desk.nodes, "no node left to call"
    mic = write_wav(tmp_path / "mic.wav", np.zeros(16000 * 2, np.int16), 16000)
    with chromium(f"{url}/?autostart=1", mic, tmp_path / "profile") as devtools:
        deadline = time.monotonic() + 30
        while not desk.sessions:
            assert time.monotonic() < deadline, "the page never called"
            await asyncio.sleep(0.2)
            await desk.poll()
        node = desk.nodes[next(iter(desk.sessions.values()))]
        assert "Listening" in await page_text(devtools, "status")
        ray.kill(node.actor, no_restart=True)
        killed_at = time.monotonic()
        status = ""
        while not any(s in status for s in ("disconnected", "failed", "closed")):
            assert time.monotonic() - killed_at < 30, f"the page still says {status!r}"
            await asyncio.sleep(0.2)
            status = await page_text(devtools, "status")
        shown_after = time.monotonic() - killed_at
        assert await page_text(devtools, "talk") == "Talk"
    print(f"the page showed {status!r} {shown_after:.1f} s after its node was killed")
    assert shown_after < 15


async def test_a_machine_that_joins_gets_an_agent_node_and_takes_calls(cluster, stack):
    """Last here (after nodes were killed): a Ray node added to the running cluster gets
    its agent node from the front door, and the next call is answered there."""
    url, desk = cluster.url, cluster.desk
    added = cluster.local.add_node(num_cpus=1)
    joined = node_key({"NodeID": added.node_id})
    deadline = time.monotonic() + 90
    # Until it has joined, and the agent node killed before is back (so the call below
    # cannot land on it as it comes back).
    while True:
        status = await cluster_status(url)
        if joined in desk.nodes and not status["lost"] and not status["starting"]:
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.5)
    assert joined in status["joined_ready_secs"]
    print(f"node {joined} ready {status['joined_ready_secs'][joined]} s after it was seen")
    before = set(desk.nodes) - {joined}
    for other in before:  # the call must land on the newcomer
        await desk.drain(other)
    caller = WebRTCCaller(url)
    await caller.connect()
    try:
        await desk.poll()
        assert desk.sessions[caller.pc_id] == joined
        question = stack.speech.synthesize_all("What is the capital of France?", 16000)
        started = time.monotonic()
        caller.mic.say(question, 16000)
        assert len(await caller.wait_for_reply(started, timeout=90)) > 8000
    finally:
        await caller.close()
        for other in before:
            await desk.drain(other, False)
