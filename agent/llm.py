"""The in-process LLM: a GGUF model run by llama-cpp-python, shared by every session.

llama.cpp keeps one KV cache per model instance, so generations are serialised with a
lock; with a 0.5B model a reply takes a second or two, and a second session simply waits
its turn. Tokens stream out through a thread-safe callback as they are sampled.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path


class LocalLLM:
    """A chat model in process. ``stream_chat`` yields OpenAI-style chunk dicts."""

    def __init__(self, model_path: Path, *, context_tokens: int = 2048, threads: int | None = None):
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

    def submit(self, work: Callable[[], None]) -> Future:
        """Run ``work`` (which calls stream_chat) on the model's own thread."""
        return self._executor.submit(work)

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
    ) -> Iterator[dict]:
        """Yield chat-completion chunks for ``messages``. Closing the iterator stops the
        generation and frees the model for the next caller."""
        with self._lock:
            stream = self._llama.create_chat_completion(
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                stream=True,
            )
            try:
                yield from stream
            finally:
                close = getattr(stream, "close", None)
                if close:
                    close()

    def warm_up(self) -> None:
        """Run one tiny completion so the first user does not pay for lazy set-up."""

        def run():
            for _ in self.stream_chat(
                [{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0.0, seed=0
            ):
                pass

        self.submit(run).result()
