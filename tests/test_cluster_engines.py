"""The cluster's shared engines (pipelines/cluster/engines.py): a local cluster of two
nodes whose calls' LLM is one Ray Serve deployment of two replicas and whose voice is a
third (a tiny random-weight MisoTTS on the CPU, as MisoTTS would be on a GPU node).

What is checked: the shared engines write and speak exactly what a node's own engines
would; every request of a conversation reaches the one replica that holds it, and the
conversations spread over the replicas; calls through the front door are answered by the
shared engines and their conversations are dropped when they end; the LLM's replicas
follow load (Serve's autoscaling, as cluster.llm configures it)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (./setup.sh --cluster)")

from agent.config import SharedEngineConfig, load_config
from pipelines.callers.phone import PhoneCall
from pipelines.cluster.engines import deploy_engines, replicas
from pipelines.cluster.front_door import ClusterDesk, create_cluster_app
from pipelines.cluster.remote import RemoteLLM, RemoteSpeech
from pipelines.cluster.start import start_cluster
from tests.conftest import cluster_settled, cluster_status, cluster_stream_url, serving
from tests.miso_setup import miso_config_file
from tts import load_engine
from tts.base import SpeechContext, SpokenAudio, Utterance

# Serve's replicas and handles report load every 10 s by default: too slow to watch
# replicas follow it within a test. Read by the Ray workers the local cluster starts.
FAST_LOAD_REPORTS = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


@pytest.fixture(scope="module")
def miso_config(tmp_path_factory):
    """The tiny stack speaking with a tiny MisoTTS; the cluster shares its LLM (two
    replicas) and its voice (one)."""
    config = load_config(str(miso_config_file(tmp_path_factory.mktemp("miso"))))
    config.server.max_sessions = 1
    config.server.session_log_dir = str(tmp_path_factory.mktemp("sessions"))
    config.llm.context_tokens = 512  # each replica keeps 13 conversations' caches
    config.cluster.llm = SharedEngineConfig(
        min_replicas=2, max_replicas=2, num_cpus=0, sessions=12
    )
    config.cluster.tts = SharedEngineConfig(num_cpus=0)
    return config


@pytest.fixture(scope="module")
async def cluster(miso_config):
    os.environ.update(FAST_LOAD_REPORTS)
    started = await start_cluster("local:2", miso_config)
    desk = ClusterDesk(miso_config, started.nodes, started.placer)
    try:
        async with serving(create_cluster_app(desk)) as port:
            yield f"http://127.0.0.1:{port}", desk
    finally:
        started.close()
        for name in FAST_LOAD_REPORTS:
            os.environ.pop(name, None)


@pytest.fixture(scope="module")
async def remote_llm(cluster) -> RemoteLLM:
    return await asyncio.to_thread(RemoteLLM.connect)


def _stream(llm, messages: list[dict], session: str, max_tokens: int = 16, **options):
    return llm.stream_chat(
        messages, session=session, max_tokens=max_tokens, temperature=0.0, seed=0, **options
    )


def _not_opening(opening: str):
    return lambda text, piece: not text and piece == opening


def _where_held(llm: RemoteLLM, replica_count: int, tries: int = 60) -> dict[str, set[str]]:
    """Each replica and the sessions it keeps read (asked until every replica answered)."""
    held: dict[str, set[str]] = {}
    for _ in range(tries):
        replica, sessions = llm.held_by_one()
        held[replica] = set(sessions)
        if len(held) == replica_count:
            return held
    raise AssertionError(f"only {len(held)} of {replica_count} replicas answered")


async def test_the_shared_llm_keeps_each_conversation_on_one_replica(remote_llm):
    def conversations():
        written = {}
        # Enough that both replicas get some (each takes a session with even odds).
        for i in range(12):
            session = f"talk-{i}"
            messages = [{"role": "user", "content": f"Name {i + 2} colours."}]
            remote_llm.read_ahead(messages, session=session, reply=True)
            pieces = list(_stream(remote_llm, messages, session, max_tokens=6))
            assert pieces
            if i == 0:
                # What the reply may not open with reaches the replica's sampler.
                refuse = _not_opening(pieces[0])
                again = list(_stream(remote_llm, messages, session, refuse=refuse))
                assert again and again[0] != pieces[0]
            messages += [
                {"role": "assistant", "content": "".join(pieces)},
                {"role": "user", "content": "And one more?"},
            ]
            written[session] = "".join(_stream(remote_llm, messages, session, max_tokens=6))
        return written

    written = await asyncio.to_thread(conversations)
    assert all(written.values())
    held = await asyncio.to_thread(_where_held, remote_llm, 2)
    # Every request of a conversation (its read-ahead and both replies) went to one
    # replica: another would hold it too. And the conversations are spread over both.
    for session in written:
        assert sum(session in sessions for sessions in held.values()) == 1, held
    assert all(sessions & set(written) for sessions in held.values()), held
    for session in written:
        await asyncio.to_thread(remote_llm.forget, session)
    held = await asyncio.to_thread(_where_held, remote_llm, 2)
    assert not set().union(*held.values()) & set(written), held


async def test_the_shared_voice_speaks_as_the_nodes_own_would(cluster, miso_config):
    """MisoTTS (tiny, seeded) on its replica and in this process, given the same
    conversation, make the same samples; the codes of its speech come back and condition
    the next sentence as a local engine's would."""
    remote = await asyncio.to_thread(RemoteSpeech.connect)
    local = await asyncio.to_thread(load_engine, miso_config)
    assert remote.sample_rate == local.sample_rate

    def speak(engine, text, context):
        chunks = []
        generator = engine.synthesize(text, context)
        while True:
            try:
                chunks.append(next(generator))
            except StopIteration as end:
                return np.concatenate(chunks), end.value

    rng = np.random.default_rng(0)
    heard = SpokenAudio((rng.standard_normal(16000) * 3000).astype(np.int16), 16000, "Hi there.")
    user = Utterance("user", heard)

    def both(text, conversation, session):
        made = []
        for engine, name in ((remote, session), (local, f"{session}-local")):
            context = SpeechContext(conversation=conversation, session_id=name)
            made.append(speak(engine, text, context))
        return made

    (far, far_codes), (near, near_codes) = await asyncio.to_thread(both, "Hello.", (user,), "v")
    # The same codes; their audio within one step of 16 bits (the codec's float sums,
    # on other thread counts, may round the other way).
    assert isinstance(far_codes, torch.Tensor) and torch.equal(far_codes, near_codes)
    assert len(far) == len(near) > 0 and _within_a_step(far, near)
    said = Utterance("bot", SpokenAudio(far, remote.sample_rate, "Hello.", codes=far_codes))
    (far, far_codes), (near, near_codes) = await asyncio.to_thread(
        both, "How are you?", (user, said), "v"
    )
    assert torch.equal(far_codes, near_codes) and _within_a_step(far, near)
    with pytest.raises(ValueError, match="empty"):
        await asyncio.to_thread(speak, remote, " ", SpeechContext())
    remote.forget("v")


def _within_a_step(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a.astype(np.int32) - b).max()) <= 1


async def test_calls_on_both_nodes_are_answered_by_the_shared_engines(
    cluster, remote_llm, stack
):
    url, desk = cluster
    await cluster_settled(desk, 0)
    status = await cluster_status(url)
    assert status["engines"] == {"llm": {"RUNNING": 2}, "tts": {"RUNNING": 1}}
    question = stack.speech.synthesize_all("What is the capital of France?", 16000)
    calls = []
    try:
        for _ in range(2):
            call = PhoneCall(url)
            await call.connect(await cluster_stream_url(url))
            calls.append(call)
        await cluster_settled(desk, 2)
        assert sorted(len(n["sessions"]) for n in (await cluster_status(url))["nodes"]) == [1, 1]
        for call in calls:
            sent = await call.say(question, 16000)
            reply = await call.wait_for_reply(sent, timeout=90)
            assert len(reply) > 0
        # The calls' conversations are kept read by the LLM's replicas, not the nodes.
        live = set(desk.sessions)
        held = await asyncio.to_thread(_where_held, remote_llm, 2)
        assert live <= set().union(*held.values()), (live, held)
    finally:
        for call in calls:
            await call.hang_up()
    await cluster_settled(desk, 0)
    # Ended calls' conversations are dropped from the replicas.
    deadline = time.monotonic() + 10
    while True:
        held = await asyncio.to_thread(_where_held, remote_llm, 2)
        if not set().union(*held.values()) & live:
            break
        assert time.monotonic() < deadline, held
        await asyncio.sleep(0.5)


async def test_the_llm_replicas_follow_load(cluster, miso_config, remote_llm):
    """cluster.llm with room for two replicas starts at one, takes a second while three
    replies are being written at once, and gives it back when they have ended."""
    scaled = miso_config.model_copy(deep=True)
    scaled.cluster.llm = SharedEngineConfig(
        min_replicas=1, max_replicas=2, target_ongoing=1, load_window_secs=2,
        upscale_delay_secs=0, downscale_delay_secs=1, num_cpus=0, sessions=2,
    )
    await asyncio.to_thread(deploy_engines, scaled)
    await _replicas_become({"RUNNING": 1})
    busy = threading.Event()

    def write_on():
        while not busy.is_set():
            story = [{"role": "user", "content": "Tell me a long story."}]
            "".join(_stream(remote_llm, story, "", 200))

    writers = [threading.Thread(target=write_on, daemon=True) for _ in range(3)]
    for writer in writers:
        writer.start()
    try:
        await _replicas_become({"RUNNING": 2})
    finally:
        busy.set()
        for writer in writers:
            await asyncio.to_thread(writer.join, 60)
    await _replicas_become({"RUNNING": 1})


async def _replicas_become(states: dict, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while (now := (await asyncio.to_thread(replicas)).get("llm")) != states:
        assert time.monotonic() < deadline, f"llm replicas {now}, not {states}"
        await asyncio.sleep(0.5)
