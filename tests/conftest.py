"""Shared fixtures: the real model stack (tiny config), spoken questions, a transcriber."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import uvicorn

from agent.audio import write_wav
from agent.config import load_config
from agent.models import cache_dir
from pipelines.callers.answer_set import CONVERSATION_QUESTIONS
from pipelines.callers.human_speech import asterisk_prompts
from pipelines.callers.phone import PhoneCall
from pipelines.callers.scoring import transcribe as transcribe_reply
from pipelines.callers.scoring import wer  # noqa: F401 (the tests' one WER)
from pipelines.callers.webrtc import free_loopback_port
from pipelines.serve.server import create_app
from pipelines.serve.uvicorn_server import AgentServer, uvicorn_config
from pipelines.stack import ModelStack, load_stack

QUESTIONS = CONVERSATION_QUESTIONS[:5]
# Short enough to fit in the time the bot is busy with a turn, so none of it spills
# over into the time the bot listens again.
BARGE_IN = "Green bananas."


@pytest.fixture(scope="session")
def stack() -> ModelStack:
    return load_stack(load_config("tiny"))


async def replies(session, count: int = 1, timeout: float = 5.0) -> list[str]:
    """The session's assistant messages, once there are ``count`` (each is written when its
    reply has played), or what there is after ``timeout``."""
    for _ in range(int(timeout / 0.1)):
        found = [m["content"] for m in session.context.get_messages() if m["role"] == "assistant"]
        if len(found) >= count:
            break
        await asyncio.sleep(0.1)
    return found


def speak(stack: ModelStack, text: str, rate: int = 16000) -> np.ndarray:
    """The bundled voice saying ``text``, as int16 at ``rate``."""
    return stack.speech.synthesize_all(text, rate)


@pytest.fixture(scope="session")
def question_wavs(stack, tmp_path_factory) -> list[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("questions")
    return [
        (write_wav(folder / f"q{i}.wav", speak(stack, q), 16000), q)
        for i, q in enumerate(QUESTIONS)
    ]


@pytest.fixture(scope="session")
def transcribe(stack):
    return lambda samples, rate: transcribe_reply(stack.whisper, samples, rate)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module of tiny-model tests: waking a second thread costs
    more than it saves, and on a busy machine the wake-ups make them several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@asynccontextmanager
async def serving(app, **ssl_files):
    """``app`` served by uvicorn on a free loopback port (HTTPS with ``ssl_certfile`` and
    ``ssl_keyfile``): the port."""
    port = free_loopback_port()
    options = dict(host="127.0.0.1", port=port, log_level="warning", **ssl_files)
    if hasattr(app.state, "server"):  # the agent's app, served as run_agent.py serves it
        uv = AgentServer(uvicorn_config(app, **options))
    else:
        uv = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        await asyncio.sleep(0.05)
    try:
        yield port
    finally:
        uv.should_exit = True
        await asyncio.wait_for(task, timeout=30)


async def no_sessions(app, timeout: float = 15) -> None:
    """Wait until the calls of earlier tests have ended on the server (fails past
    ``timeout``)."""
    deadline = time.monotonic() + timeout
    while app.state.server.sessions:
        assert time.monotonic() < deadline, (
            f"sessions still running: {list(app.state.server.sessions)}"
        )
        await asyncio.sleep(0.1)


async def dial(app, url: str, provider: str = "twilio") -> PhoneCall:
    """A new phone call, once the calls of earlier tests have ended, settled for half a
    second."""
    await no_sessions(app)
    call = PhoneCall(url, provider=provider)
    await call.connect()
    await asyncio.sleep(0.5)
    return call


@pytest.fixture(scope="module")
async def server(stack, tmp_path_factory):
    """The agent's server (browser page and phone entry) on a loopback port:
    (app, base URL). Its calls' logs go to a temporary folder, not the user's cache."""
    stack.config.server.session_log_dir = str(tmp_path_factory.mktemp("session-logs"))
    app = create_app(stack)
    async with serving(app) as port:
        yield app, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def asterisk():
    """Asterisk's English prompts: one professional human voice recorded for telephones
    (8 kHz), with official transcripts; from Debian's asterisk-core-sounds-en-wav, fetched
    once into the cache (apt-get download, no root needed)."""
    try:
        folder, texts, _ = asterisk_prompts(cache_dir() / "test-data")
    except Exception as e:  # noqa: BLE001 - no apt, no network to Debian
        pytest.skip(f"Asterisk's prompts could not be fetched from Debian: {e}")

    def prompt(name: str) -> tuple[np.ndarray, str]:
        import soundfile as sf

        samples, rate = sf.read(str(folder / f"{name}.wav"), dtype="int16")
        assert rate == 8000
        return samples, texts[name]

    prompt.folder = folder  # the WAVs themselves, for loading at another rate
    return prompt


async def cluster_status(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/cluster") as r:
        assert r.status == 200
        return await r.json()


async def cluster_settled(desk, calls: int, within: float = 15) -> None:
    """Until the cluster holds ``calls`` calls, its nodes' load read afresh (webhooks that
    handed out stream URLs count against a node's room until then)."""
    deadline = time.monotonic() + within
    await desk.poll()
    while len(desk.sessions) != calls:
        assert time.monotonic() < deadline, desk.sessions
        await asyncio.sleep(0.2)
        await desk.poll()


async def cluster_stream_url(url: str) -> str:
    """A phone stream URL from the front door at ``url`` (its Twilio webhook)."""
    async with aiohttp.ClientSession() as http, http.post(f"{url}/") as r:
        return (await r.text()).split('url="')[1].split('"')[0]
