"""The llama-cpp backend: one in-process llama.cpp engine (agent/llm) shared by every
session, as a Pipecat LLM service: the context becomes chat messages through Pipecat's
OpenAI adapter, and the reply's text goes out in LLMTextFrames as the engine makes it."""

from __future__ import annotations

import dataclasses
import re

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EagerEndOfTurnCancelFrame,
    EndFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import is_given

from agent.cpu_share import CpuShare
from agent.llm.echo import RepeatWatch
from agent.llm.local import LocalLLM
from agent.llm.prompt import history, trim_history, with_examples
from pipelines.services.llm import ApologizesOnFailure
from pipelines.services.threads import ThreadFedIterator, start_thread
from pipelines.turns.record import EarlyTranscriptFrame, ReplyVoicedFrame

# A reply that says again word for word what was said before is written anew, up to
# this many times in all (the last is spoken whatever it says), sampled this hot.
REPLY_ATTEMPTS = 3
RETRY_TEMPERATURE = 1.0
_SENTENCE_END = re.compile(r"[.!?]")


def load(config, cpu: CpuShare) -> LocalLLM:
    """The engine every session shares (``config``: an AgentConfig)."""
    return LocalLLM.from_config(config.llm, cpu=cpu, sessions=config.server.max_sessions)


def service(engine: LocalLLM, config, session_id: str, settings) -> LocalLLMService:
    llm = config.llm
    return LocalLLMService(
        llm=engine,
        max_history_turns=llm.max_history_turns,
        history_replies=llm.history_replies,
        drop_refusals=llm.drop_refusals,
        rewrite_repeats=llm.rewrite_repeats,
        dry_multiplier=llm.dry_multiplier,
        examples=[tuple(pair) for pair in llm.examples],
        session_id=session_id,
        apology=llm.apology,
        settings=_every_field_given(settings),
    )


def _every_field_given(settings):
    """``settings`` with the fields the engine does not read set to None (turn-completion
    filtering off): Pipecat logs an error at every start for a setting left unset, which
    OpenAI's service fills in itself and a service of our own must."""
    for field in dataclasses.fields(settings):
        if field.name != "extra" and not is_given(getattr(settings, field.name)):
            unset = False if field.name == "filter_incomplete_user_turns" else None
            setattr(settings, field.name, unset)
    return settings


class InProcessLLMService(LLMService):
    """Answers each LLMContextFrame with the in-process model, the way Pipecat's LLM
    services do (a full-response start, text frames, the end; metrics; an error frame
    if it fails), with no client or wire format in between.

    Reading the prompt is most of the first token's time on a CPU, so the conversation is
    read ahead (agent/llm/local.py): the system prompt and examples when the session
    starts, and, once a reply has been written and voiced (the TTS's ReplyVoicedFrame),
    the conversation with that reply and the opening of the user's next message, while
    the reply plays. And when the user's voice falls silent, the STT's early transcript
    (EarlyTranscriptFrame) is read as the turn's words, to where the reply begins, while
    the turn's end is decided: if those are the words of the turn, its reply starts with
    nothing left to read.
    """

    def __init__(
        self,
        *,
        llm: LocalLLM,
        max_history_turns: int,
        history_replies: str = "whole",
        drop_refusals: bool = False,
        rewrite_repeats: bool = True,
        dry_multiplier: float = 0.0,
        examples: list[tuple[str, str]] = (),
        session_id: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._llm = llm
        self._max_history_turns = max_history_turns
        self._history_replies = history_replies
        self._drop_refusals = drop_refusals
        self._attempts = REPLY_ATTEMPTS if rewrite_repeats else 1
        self._dry = dry_multiplier
        self._examples = list(examples)
        self._session_id = session_id
        self._next_prompt: list[dict] | None = None  # a written reply's, until it is voiced
        # The conversation as the next user message will follow it: the latest context's
        # messages, with the reply written to them once it is written.
        self._conversation: list[dict] = []
        # The conversation before a speculative context (a turn that may not have ended):
        # if that turn goes on, its reply is withdrawn and the turn's words follow this.
        self._before_speculation: list[dict] | None = None

    def can_generate_metrics(self) -> bool:
        return True

    async def start(self, frame: StartFrame):
        await super().start(frame)
        self._conversation = await self._chat_messages(LLMContext())
        self._read_ahead(self._next_user_prompt(self._conversation))

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        self._llm.forget(self._session_id, wait=False)

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        self._llm.forget(self._session_id, wait=False)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, ReplyVoicedFrame):
            # The reply's speech is made: it was no guess, and reading ahead no longer
            # competes with it.
            self._before_speculation = None
            if self._next_prompt is not None:
                self._read_ahead(self._next_prompt)
                self._next_prompt = None
            return
        if isinstance(frame, EarlyTranscriptFrame):
            # The words are a guess: they are read, not answered, and go no further.
            said = self._conversation + [{"role": "user", "content": frame.text}]
            self._read_ahead(self._prompt(said), reply=True)
            return
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            self._before_speculation = self._conversation if frame.speculation else None
            await self._reply(frame.context)
            return
        if isinstance(frame, EagerEndOfTurnCancelFrame) and self._before_speculation is not None:
            # The turn went on: its speculative reply, written or not, was never heard,
            # and the rest of the turn's words are guessed after what was (the turn had
            # 16 exchanges and the guess 17 with the withdrawn one: the guess was read
            # trimmed, and the turn's own reply read its whole history again, 11.6 s).
            self._conversation, self._next_prompt = self._before_speculation, None
            self._before_speculation = None
        await self.push_frame(frame, direction)

    async def _reply(self, context: LLMContext):
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        await self.start_ttfb_metrics()
        try:
            messages = await self._chat_messages(context)
            # Until the reply is written: a turn taken back goes on after these messages.
            self._conversation = messages
            prompt = self._prompt(messages)
            # What the reply must not say again word for word: the bot's earlier replies,
            # and the user's own words just said (the prompt's last message).
            earlier = [
                m["content"]
                for m in messages
                if m.get("role") == "assistant" and isinstance(m.get("content"), str)
            ]
            heard = prompt[-1].get("content")
            heard = heard if isinstance(heard, str) else ""
            # A statement said back in other words is written anew once: the 1.5B told
            # "Please try again." said it back three times over, each written whole
            # before it was known (~1 s a time).
            watches = [RepeatWatch(earlier, heard), RepeatWatch(earlier, heard, echoes=False)]
            said = [*earlier, heard]  # what every attempt is turned away from (DRY)
            text = None
            openings: list[str] = []  # of the attempts that said something again
            for attempt in range(self._attempts):
                last = attempt == self._attempts - 1
                watch = None if last else watches[min(attempt, 1)]
                text = await self._write(prompt, openings, watch, said)
                if text is not None:
                    break
            written = messages + [{"role": "assistant", "content": text.strip()}]
            self._conversation = written
            self._next_prompt = self._next_user_prompt(written)
        except Exception as e:  # the reply ends here; the session goes on
            await self.push_error(error_msg=f"Error during completion: {e}", exception=e)
        finally:
            await self.stop_processing_metrics()
            await self.push_frame(LLMFullResponseEndFrame())

    async def _write(
        self,
        prompt: list[dict],
        openings: list[str],
        watch: RepeatWatch | None,
        said: list[str] = (),
    ):
        """Writes a reply to ``prompt`` in LLMTextFrames and returns its text; or, with
        ``watch``, says nothing and returns None if it opens with what was said before
        word for word (its text is held back while it might), its first word added to
        ``openings``; a later sentence said before ends the reply where it would begin.
        A later attempt opens with none of ``openings`` (the engine refuses them) and
        samples hotter, with another seed: greedy-ish sampling on the same conversation
        writes the same words again. Every attempt is turned away from ``said`` as it
        writes (the DRY sampler, ``dry_multiplier``), so few need a second."""
        settings = self.settings
        temperature, seed = settings.temperature, settings.seed
        attempt = len(openings)
        if attempt:
            temperature, seed = max(temperature, RETRY_TEMPERATURE), (seed or 0) + attempt
        stream = self._llm.stream_chat(
            prompt,
            max_tokens=settings.max_tokens,
            temperature=temperature,
            seed=seed,
            session=self._session_id,
            refuse=_NotOpeningWith(openings) if openings else None,
            said_before=said,
            dry=self._dry,
        )
        pieces = ThreadFedIterator(lambda: stream, start_thread)
        opening = watch  # the reply's start is watched until it says something new
        text: list[str] = []
        held: list[str] = []
        sentence_at: int | None = None  # where the sentence being written began
        try:
            async for piece in pieces:
                await self.stop_ttfb_metrics()
                text.append(piece)
                so_far = "".join(text)
                ends = bool(_SENTENCE_END.search(piece))
                if opening is not None:
                    if ends and self._said_again(opening, so_far, "again"):
                        openings.append(text[0])
                        return None
                    if opening.may_repeat(so_far):
                        held.append(piece)
                        sentence_at = len(so_far) if ends else sentence_at
                        continue
                    opening = None  # it says something new: nothing more to hold
                elif watch is not None and sentence_at is not None:
                    # A later sentence said before ends the reply before it: the voice
                    # speaks a reply sentence by sentence, so holding it costs nothing.
                    sentence = so_far[sentence_at:]
                    if ends and self._said_again(watch, sentence, "the reply ends"):
                        return so_far[:sentence_at]
                    if not ends and watch.may_repeat(sentence):
                        held.append(piece)
                        continue
                sentence_at = len(so_far) if ends else sentence_at
                for out in [*held, piece]:
                    await self.push_frame(LLMTextFrame(out))
                held = []
        finally:
            # An interruption or a closing session stops generation at the next token.
            stream.cancel()
            pieces.stop()
        so_far = "".join(text)
        if opening is not None and self._said_again(opening, so_far, "again"):
            openings.append(text[0])
            return None
        last = so_far[sentence_at:] if sentence_at is not None else ""
        if held and opening is None and self._said_again(watch, last, "the reply ends"):
            return so_far[:sentence_at]  # a last sentence said before, with no end mark
        for out in held:
            await self.push_frame(LLMTextFrame(out))
        return so_far

    def _said_again(self, watch: RepeatWatch, text: str, then: str) -> bool:
        """Whether ``text`` says again what ``watch`` keeps; logged with what ``then``
        happens ("again": the reply is rewritten; "the reply ends")."""
        if not watch.repeats(text):
            return False
        logger.debug(f"{self}: {text.strip()!r} was said before; {then}")
        return True

    async def _chat_messages(self, context: LLMContext) -> list[dict]:
        adapter = self.get_llm_adapter()
        params = await adapter.get_llm_invocation_params(
            context,
            system_instruction=self.settings.system_instruction,
            convert_developer_to_user=True,
        )
        return params["messages"]

    def _prompt(self, messages: list[dict]) -> list[dict]:
        """The messages the model reads for a conversation ending in a user message."""
        messages = history(
            messages, replies=self._history_replies, drop_refusals=self._drop_refusals
        )
        messages = trim_history(messages, self._max_history_turns)
        return with_examples(messages, self._examples)

    def _next_user_prompt(self, messages: list[dict]) -> list[dict]:
        """What the prompt of the next user message will begin with, trimmed as the next
        turn's will be."""
        return self._prompt(messages + [{"role": "user", "content": "..."}])[:-1]

    def _read_ahead(self, prompt: list[dict], *, reply: bool = False):
        """Read ``prompt`` (with ``reply``, to where the reply begins) off the critical
        path. It gives way to every reply and to the synthesis of a first phrase
        (agent/cpu_share.py): on 2 cores, reading ahead beside Piper made the reply's
        first audio twice as slow."""
        try:
            self._llm.read_ahead(prompt, session=self._session_id, reply=reply)
        except Exception as e:  # the next turn reads its prompt itself; say why
            logger.warning(f"{self}: reading ahead failed: {e}")


class _NotOpeningWith:
    """A reply may not open with any of ``openings`` (the engine's ``refuse``): another
    attempt at a reply that said something again takes another way from its first word."""

    def __init__(self, openings: list[str]):
        self._openings = set(openings)

    def __call__(self, text: str, piece: str | None) -> bool:
        return not text and piece in self._openings


class LocalLLMService(ApologizesOnFailure, InProcessLLMService):
    """The in-process LLM stage; a reply that fails ends with a spoken sorry."""
