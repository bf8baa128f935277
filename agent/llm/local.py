"""The in-process LLM: a GGUF model run by llama.cpp, shared by every session.

Chat messages become tokens with the model's own chat template, and sampled tokens
become text. The work is agent/llm/engine.py's: every session keeps its
conversation read in its own sequence of one KV cache, concurrent replies are decoded
together, and each reply's first words come before the rest of anyone's reply.

Reading the prompt is most of the time to the first token on a CPU (~14 ms a token for
a user's words on 2 cores, benchmarks/llm_prefill.py), so ``read_ahead`` reads what the
next turn's prompt will start with (the conversation so far and the opening of a new
user message) while the bot's reply plays.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from agent.cpu_share import CpuShare
from agent.llm.engine import BatchedEngine, Generation, Sampling

if TYPE_CHECKING:
    from agent.config import LLMConfig


class ChatStream:
    """One reply's text, piece by piece as tokens are sampled (blocking per token).
    ``finish_reason`` ("stop" or "length") once it has ended; ``cancel()``, from any
    thread, ends the reply at the next token."""

    def __init__(self, generation: Generation, llm: LocalLLM):
        self._generation = generation
        self._llm = llm

    def __iter__(self) -> Iterator[str]:
        llm, generation = self._llm, self._generation
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        first = True
        for token in generation:
            if first:
                first = False
                asked, started = generation.asked_at, generation.started_at
                logger.debug(
                    f"{llm.name}: {generation.reused_tokens} of {generation.prompt_tokens}"
                    f" prompt tokens were already read (the cache held {generation.held_tokens});"
                    f" taken up after {(started - asked) * 1000:.0f} ms, first token"
                    f" {(time.monotonic() - started) * 1000:.0f} ms later"
                )
            piece = text.decode(llm.engine.piece(token))
            if piece:
                yield piece
        rest = text.decode(b"", final=True)
        if rest:
            yield rest

    @property
    def finish_reason(self) -> str:
        return "length" if self._generation.finish_reason == "length" else "stop"

    def cancel(self) -> None:
        self._generation.cancel()


# ``refuse(text, piece)``: whether a reply that has written ``text`` must not go on with
# ``piece`` (None: must not end there).
TextRefusal = Callable[[str, "str | None"], bool]


class _RefusalOfText:
    """A refusal of text, asked of tokens (the engine's ``refuse``): the reply's text so
    far is kept as it is written, and a token is judged by the text it stands for."""

    def __init__(self, refuse: TextRefusal, model):
        self._refuse = refuse
        self._model = model
        self._bytes = b""
        self._read = 0  # of the written tokens

    def __call__(self, written: list[int], token: int) -> bool:
        for t in written[self._read :]:
            self._bytes += self._model.piece(t)
        self._read = len(written)
        text = self._bytes.decode("utf-8", errors="ignore")
        if self._model.is_end(token):
            return self._refuse(text, None)
        return self._refuse(text, self._model.piece(token).decode("utf-8", errors="ignore"))


class LocalLLM:
    """A chat model in process, for any number of sessions at once."""

    def __init__(
        self,
        model_path: Path,
        *,
        context_tokens: int = 2048,
        threads: int | None = None,
        cpu: CpuShare | None = None,
        sessions: int = 1,
        chat_template: tuple[str, str, str] | None = None,
        one_at_a_time: bool = False,
        build: str = "auto",
    ):
        """``sessions``: how many conversations stay read at once (one more is kept for
        warm-up and tools). ``chat_template``: (Jinja text, BOS, EOS) for a model whose
        file has none; else the file's own, else ChatML. ``one_at_a_time``: see
        BatchedEngine. ``build``: which llama.cpp (agent/llm/llama_build.py)."""
        from agent.llm.chat_template import CHATML, ChatTemplate

        self.model_path = Path(model_path)
        self.context_tokens = context_tokens
        self.engine = BatchedEngine(
            self.model_path,
            context_tokens=context_tokens,
            sequences=sessions + 1,
            threads=threads or os.cpu_count() or 2,
            cpu=cpu,
            one_at_a_time=one_at_a_time,
            build=build,
        )
        logger.info(f"{self.name} runs on llama.cpp's {self.engine.build} build")
        model = self.engine.model
        self.metadata = model.metadata()
        if chat_template is None:

            def text(token: int) -> str:
                return model.token_text(token) if token != -1 else ""

            template = self.metadata.get("tokenizer.chat_template", CHATML)
            chat_template = (template, text(model.bos()), text(model.eos()))
        template, bos, eos = chat_template
        self._template = ChatTemplate(template, bos_token=bos, eos_token=eos)

    @classmethod
    def from_config(
        cls, config: LLMConfig, *, cpu: CpuShare | None = None, sessions: int = 1, **options
    ) -> LocalLLM:
        """The model an ``llm`` config section names (backend llama-cpp), with its sizes."""
        from agent.config import ConfigError
        from agent.llm.gguf import NotGGUFError, trained_context
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
            sessions=sessions,
            build=config.runtime,
            **options,
        )

    @property
    def name(self) -> str:
        return self.model_path.stem

    def tokens(self, messages: list[dict], *, reply: bool = True) -> list[int]:
        """The prompt for ``messages``; with ``reply`` it ends where the reply begins."""
        prompt = self._template.render(messages, add_generation_prompt=reply)
        # The template writes the special tokens itself, BOS included.
        return self.engine.model.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def stream_chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        session: Hashable = None,
        refuse: TextRefusal | None = None,
        said_before: list[str] = (),
        dry: float = 0.0,
    ) -> ChatStream:
        """The reply to ``messages``, as a stream of text pieces; with ``refuse``, never
        going on with a piece it refuses (another token is sampled instead); with ``dry``,
        turning away from saying again word for word what ``said_before`` holds (the
        engine's ``Sampling.dry``)."""
        before = "\n".join(said_before).encode("utf-8") if dry > 0 else b""
        said = (
            tuple(self.engine.model.tokenize(before, add_bos=False, special=False))
            if before
            else ()
        )
        generation = self.engine.generate(
            session,
            self.tokens(messages),
            max_tokens=max_tokens,
            sampling=Sampling(temperature, seed, said, dry),
            refuse=None if refuse is None else _RefusalOfText(refuse, self.engine.model),
        )
        return ChatStream(generation, self)

    def read_ahead(
        self, messages: list[dict], *, session: Hashable = None, reply: bool = False
    ) -> Generation:
        """Start reading what the prompt of a next user message after ``messages`` will
        begin with, when no reply needs the model; with ``reply``, the prompt of a reply
        to ``messages``, whole (the user's words are known, or guessed). Returns at once."""
        if reply:
            prompt = self.tokens(messages)
        else:
            # The chat template renders an empty user message as the opening every user
            # message shares ("<|im_start|>user\n"); its end is dropped again by the next
            # prompt's prefix match.
            prompt = self.tokens(messages + [{"role": "user", "content": ""}], reply=False)
        return self.engine.generate(session, prompt, max_tokens=0, background=True)

    def prefill(self, messages: list[dict], *, session: Hashable = None) -> None:
        """``read_ahead``, waiting until it is read."""
        start = time.perf_counter()
        self.read_ahead(messages, session=session).wait()
        logger.debug(f"{self.name}: read ahead in {time.perf_counter() - start:.2f} s")

    def forget(self, session: Hashable, *, wait: bool = True) -> None:
        """The session has ended: its replies stop, its conversation is dropped."""
        self.engine.forget(session, wait=wait)

    def cached_tokens(self, session: Hashable = None) -> list[int]:
        """The tokens the KV cache holds for ``session``."""
        return self.engine.cached_tokens(session)

    def sessions(self) -> list[Hashable]:
        """The sessions whose conversations are kept read."""
        return self.engine.sessions()

    def warm_up(self) -> None:
        """Run one tiny completion so the first user does not pay for lazy set-up."""
        for _ in self.stream_chat(
            [{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0.0, seed=0
        ):
            pass
        self.forget(None)

    def close(self) -> None:
        self.engine.close()
