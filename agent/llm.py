"""The in-process LLM: a GGUF model run by llama-cpp-python, shared by every session.

llama.cpp keeps one KV cache per model instance, so generations are serialised with a
lock; with a 0.5B model a reply takes a second or two, and a second session simply waits
its turn. Tokens stream out through a thread-safe callback as they are sampled.

Reading the prompt is most of the time to the first token on a CPU (~17 ms a token for
a user's words on 2 cores, benchmarks/llm_prefill.py), so each session's conversation
stays read: llama.cpp reuses the KV cache for the longest unchanged prompt prefix; when
sessions take turns, the cache of the one leaving is set aside (a few MB, milliseconds)
and the arriving one's is put back; and ``prefill`` reads what the next turn's prompt
will start with (the conversation so far and the opening of a new user message) while
the bot's reply plays.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from agent.cpu_share import CpuShare

if TYPE_CHECKING:
    from agent.config import LLMConfig


@dataclass(frozen=True)
class _SavedConversation:
    """One session's KV cache (sequence 0) and the tokens it holds."""

    tokens: list[int]
    data: bytes


class LocalLLM:
    """A chat model in process. ``stream_chat`` yields OpenAI-style chunk dicts."""

    def __init__(
        self,
        model_path: Path,
        *,
        context_tokens: int = 2048,
        threads: int | None = None,
        cpu: CpuShare | None = None,
    ):
        from llama_cpp import Llama

        self.model_path = Path(model_path)
        self._llama = Llama(
            model_path=str(model_path),
            n_ctx=context_tokens,
            n_threads=threads or os.cpu_count() or 2,
            verbose=False,
        )
        self.context_tokens = context_tokens
        self._lock = threading.Lock()
        # Every generation runs on this one thread. llama.cpp's OpenMP worker team
        # belongs to the calling thread, and an idle team keeps spinning for a while:
        # with calls from two threads, generation ran at half speed on 2 cores
        # (70 vs 35 ms/token, benchmarks/llm_threads.py).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")
        # Urgent work (a reply's first phrase being spoken) pauses generation between tokens.
        self._cpu = cpu or CpuShare()
        self._waiting_lock = threading.Lock()
        self._replies_waiting = 0  # submitted replies not yet started
        self._holder: Hashable = None  # the session whose conversation the KV cache holds
        self._set_aside: dict[Hashable, _SavedConversation] = {}

    @classmethod
    def from_config(cls, config: LLMConfig, *, cpu: CpuShare | None = None) -> LocalLLM:
        """The model an ``llm`` config section names (backend llama-cpp), with its sizes."""
        from agent.config import ConfigError
        from agent.gguf import NotGGUFError, trained_context
        from agent.models import resolve_model

        assert config.model is not None
        path = resolve_model(config.model, "llm")
        # From the file's header, before llama.cpp allocates the whole context.
        try:
            trained = trained_context(path)
        except (NotGGUFError, OSError) as e:
            raise ConfigError(f"llm.model: {e}") from None
        if trained and config.context_tokens > trained:
            raise ConfigError(
                f"llm.context_tokens {config.context_tokens} is more than {path.name} was "
                f"trained for ({trained})"
            )
        return cls(
            path,
            context_tokens=config.context_tokens,
            threads=config.threads,
            cpu=cpu,
        )

    def submit(self, work: Callable[[], None], *, background: bool = False) -> Future:
        """Run ``work`` (which calls stream_chat) on the model's own thread.

        ``background`` work (reading ahead) gives way to every reply waiting for the
        thread: when its turn comes while one waits, it goes to the back of the queue."""
        if not background:
            with self._waiting_lock:
                self._replies_waiting += 1

            def reply():
                with self._waiting_lock:
                    self._replies_waiting -= 1
                return work()

            return self._executor.submit(reply)

        def read_ahead():
            if self._replies_waiting:
                self._executor.submit(read_ahead)
                return
            work()

        return self._executor.submit(read_ahead)

    @property
    def name(self) -> str:
        return self.model_path.stem

    def stream_chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        session: Hashable = None,
    ) -> Iterator[dict]:
        """Yield chat-completion chunks for ``messages``. Closing the iterator stops the
        generation and frees the model for the next caller."""
        with self._lock:
            self._hold(session)
            # Reading the prompt waits too: Smart Turn may be deciding whether to answer.
            self._cpu.wait_for_urgent()
            cached = self._llama.input_ids[: self._llama.n_tokens].copy()
            stream = self._llama.create_chat_completion(
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                stream=True,
            )
            try:
                first = True
                for chunk in stream:
                    self._cpu.wait_for_urgent()
                    if first:
                        first = False
                        logger.debug(
                            f"{self.name}: {self._reused(cached)} prompt tokens were already read"
                        )
                    yield chunk
            finally:
                close = getattr(stream, "close", None)
                if close:
                    close()

    def prefill(
        self, messages: list[dict], *, session: Hashable = None, when_idle: bool = False
    ) -> None:
        """Read into the KV cache the prompt a next user message after ``messages`` will
        start with. Blocking: run it with ``submit``. ``when_idle``: first let urgent work
        (a first phrase being synthesised) finish."""
        if when_idle:
            self._cpu.wait_for_urgent()
        # The chat template renders an empty user message as the opening every user
        # message shares ("<|im_start|>user\n"); its end and the one sampled token are
        # dropped again by the next prompt's prefix match.
        opening = messages + [{"role": "user", "content": ""}]
        with self._lock:
            self._hold(session)
            start = time.perf_counter()
            self._llama.create_chat_completion(messages=opening, max_tokens=1, temperature=0.0)
            logger.debug(f"{self.name}: read ahead in {time.perf_counter() - start:.2f} s")

    def forget(self, session: Hashable) -> None:
        """The session has ended: drop its set-aside conversation."""
        with self._lock:
            self._set_aside.pop(session, None)
            if self._holder == session:
                self._holder = None

    def cached_tokens(self) -> list[int]:
        """The tokens the KV cache holds now."""
        with self._lock:
            return self._llama.input_ids[: self._llama.n_tokens].tolist()

    def sessions_set_aside(self) -> set[Hashable]:
        with self._lock:
            return set(self._set_aside)

    def _reused(self, cached) -> int:
        now = self._llama.input_ids[: len(cached)]
        differ = (now != cached).nonzero()[0]
        return int(differ[0]) if len(differ) else len(cached)

    def _hold(self, session: Hashable) -> None:
        """Make the KV cache hold ``session``'s conversation, setting aside the current
        holder's. A session with nothing set aside starts from whatever is there: the
        system prompt and examples every session shares are reused."""
        if session == self._holder:
            return
        llama = self._llama
        if self._holder is not None and llama.n_tokens > 0:
            size = _llama_cpp().llama_state_seq_get_size(llama.ctx, 0)
            buffer = (ctypes.c_uint8 * size)()
            written = _llama_cpp().llama_state_seq_get_data(llama.ctx, buffer, size, 0)
            self._set_aside[self._holder] = _SavedConversation(
                tokens=llama.input_ids[: llama.n_tokens].tolist(), data=bytes(buffer[:written])
            )
        saved = self._set_aside.pop(session, None) if session is not None else None
        if saved is not None:
            buffer = (ctypes.c_uint8 * len(saved.data)).from_buffer_copy(saved.data)
            if _llama_cpp().llama_state_seq_set_data(llama.ctx, buffer, len(saved.data), 0):
                llama.input_ids[: len(saved.tokens)] = saved.tokens
                llama.n_tokens = len(saved.tokens)
            else:  # could not be put back: the next prompt is read from the start
                llama.reset()
        self._holder = session

    def warm_up(self) -> None:
        """Run one tiny completion so the first user does not pay for lazy set-up."""

        def run():
            for _ in self.stream_chat(
                [{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0.0, seed=0
            ):
                pass

        self.submit(run).result()


def _llama_cpp():
    import llama_cpp

    return llama_cpp
