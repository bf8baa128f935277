"""Thin Pipecat services around the models that are loaded once and shared by sessions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator

import numpy as np
from loguru import logger
from openai.types.chat import ChatCompletionChunk
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    LLMTextFrame,
    StartFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.services.whisper.stt import WhisperSTTService

from agent.asr import ShortUtteranceWhisper
from agent.cpu_share import CpuShare
from agent.echo import is_echo, is_repeat
from agent.llm import LocalLLM
from agent.session import SessionState
from pipelines.speech_end import SpeechEndWatch
from tts.base import SpeechEngine, SpokenAudio, without_leading_silence

_DONE = object()
# How long after a reply's text is written the conversation is read ahead: by then the
# reply's last sentence has reached the TTS and announced itself if it is urgent.
READ_AHEAD_DELAY_SECS = 0.3
# Silence Pipecat's segmented STT appends to each segment (its default, set explicitly
# because early transcription must add the same).
TRAILING_SILENCE_SECS = 0.5


class SharedWhisperSTTService(WhisperSTTService):
    """Pipecat's faster-whisper service, reading a WhisperModel loaded once per process.

    With ``early``, it starts transcribing when the user's voice drops to silence, a
    fifth of a second before the VAD (which waits ``stop_secs`` to be sure) reports the
    stop and Pipecat asks for the segment (agent/asr.py, ``transcribe_early``).
    """

    def __init__(
        self,
        *,
        model,
        beam_size: int = 1,
        utterance_window: bool = True,
        early: bool = True,
        filler_prompt: str | None = None,
        **kwargs,
    ):
        # WhisperSTTService.__init__ calls _load(); the shared model must be in place first.
        self._shared_model = ShortUtteranceWhisper(
            model,
            beam_size=beam_size,
            utterance_window=utterance_window,
            filler_prompt=filler_prompt,
        )
        super().__init__(trailing_silence_secs=TRAILING_SILENCE_SECS, **kwargs)
        self._onset = SpeechEndWatch() if early else None

    def _load(self):
        self._model = self._shared_model

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if self._onset is not None:
            if isinstance(frame, VADUserStartedSpeakingFrame):
                self._onset.speech_started()
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                self._onset.speech_stopped()
        await super().process_frame(frame, direction)

    async def process_audio_frame(self, frame: InputAudioRawFrame, direction: FrameDirection):
        await super().process_audio_frame(frame, direction)
        if self._onset is not None and self._onset.add(frame.audio, self.sample_rate):
            # The same audio Pipecat's segmented STT will send (it keeps 1 s before the
            # VAD start), with the silence it pads segments with.
            speech = self._onset.segment().astype(np.float32) / 32768
            trailing = np.zeros(int(self.sample_rate * TRAILING_SILENCE_SECS), np.float32)
            self._shared_model.transcribe_early(speech, trailing, self._settings.language)


def without_echoes(messages: list[dict]) -> list[dict]:
    """The messages without past exchanges whose reply only repeated what was said, or
    said again what an earlier reply said: a small model that sees itself do either once
    goes on doing it every turn (agent/echo.py)."""
    kept: list[dict] = []
    replies: list[str] = []
    for message in messages:
        previous = kept[-1] if kept else None
        content = message.get("content")
        if (
            message.get("role") == "assistant"
            and previous is not None
            and previous.get("role") == "user"
            and isinstance(content, str)
            and isinstance(previous.get("content"), str)
        ):
            if is_echo(content, previous["content"]) or is_repeat(content, replies):
                kept.pop()
                continue
            replies.append(content)
        kept.append(message)
    return kept


def _leading_system_messages(messages: list[dict]) -> int:
    """How many system messages open the prompt."""
    lead = 0
    while lead < len(messages) and messages[lead].get("role") == "system":
        lead += 1
    return lead


def with_examples(messages: list[dict], examples: list[tuple[str, str]]) -> list[dict]:
    """The messages with example exchanges (user, assistant) right after the leading
    system messages: a small model learns how to answer a person from two examples far
    better than from instructions. They are a fixed prefix, so llama.cpp's prompt cache
    keeps them."""
    lead = _leading_system_messages(messages)
    shots = [
        message
        for user, assistant in examples
        for message in (
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        )
    ]
    return messages[:lead] + shots + messages[lead:]


class ApologizesOnFailure:
    """Mixed into an LLM service: a reply that fails (the server refuses, stops answering
    or dies mid-reply) ends with a short spoken sorry instead of silence, inside the same
    response, so the rest of the turn (TTS, half-duplex, the context) goes as for any reply.
    Pipecat's service then reports the error upstream as usual; the session goes on."""

    def __init__(self, *args, apology: str = "", **kwargs):
        self._apology = apology
        self._replying = False
        super().__init__(*args, **kwargs)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if not isinstance(frame, LLMContextFrame):
            await super().process_frame(frame, direction)
            return
        self._replying = True
        try:
            await super().process_frame(frame, direction)
        finally:
            self._replying = False

    async def push_error(self, error_msg: str, exception: Exception | None = None, **kwargs):
        if self._replying and self._apology:
            logger.warning(f"{self}: the reply failed ({error_msg}); apologizing")
            await self.push_frame(LLMTextFrame(" " + self._apology))
        await super().push_error(error_msg, exception, **kwargs)


class ServerLLMService(ApologizesOnFailure, OpenAILLMService):
    """Pipecat's OpenAI service for an OpenAI-compatible server, with example exchanges.
    ``timeout_secs``: the longest wait for the server's first or next word (a stalled
    server ends the reply with the apology instead of holding the caller)."""

    def __init__(
        self, *, examples: list[tuple[str, str]] = (), timeout_secs: float = 10.0, **kwargs
    ):
        self._timeout_secs = timeout_secs  # create_client, called by __init__, reads it
        super().__init__(**kwargs)
        self._examples = list(examples)

    def create_client(self, *args, **kwargs):
        # One quick retry (a restarted server), then the apology: no minute-long backoff.
        client = super().create_client(*args, **kwargs)
        return client.with_options(timeout=self._timeout_secs, max_retries=1)

    def build_chat_completion_params(self, params_from_context) -> dict:
        params = super().build_chat_completion_params(params_from_context)
        params["messages"] = with_examples(without_echoes(params["messages"]), self._examples)
        return params


class LocalLLMService(ApologizesOnFailure, OpenAILLMService):
    """Pipecat's OpenAI LLM service with the HTTP call replaced by an in-process model.

    The local model's replies come as OpenAI chunks (agent/llm.py), so everything else Pipecat's
    OpenAI service does (context handling, text frames, metrics, errors) is reused as is.

    Reading the prompt is most of the first token's time on a CPU, so the conversation is
    read ahead (agent/llm.py): the system prompt and examples when the session starts, and,
    as soon as a reply has been written, the conversation with that reply and the opening
    of the user's next message, while the reply plays. The user's words are then all that
    is left to read when they have spoken.
    """

    def __init__(
        self,
        *,
        llm: LocalLLM,
        max_history_turns: int,
        examples: list[tuple[str, str]] = (),
        session_id: str | None = None,
        **kwargs,
    ):
        super().__init__(api_key="in-process", base_url="http://in-process.invalid/v1", **kwargs)
        self._llm = llm
        self._max_history_turns = max_history_turns
        self._examples = list(examples)
        self._session_id = session_id

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self._read_ahead(await self._chat_messages(LLMContext()))

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        self._llm.forget(self._session_id, wait=False)

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        self._llm.forget(self._session_id, wait=False)

    async def _chat_messages(self, context: LLMContext) -> list[dict]:
        adapter = self.get_llm_adapter()
        params = await adapter.get_llm_invocation_params(
            context,
            system_instruction=self._settings.system_instruction,
            convert_developer_to_user=True,
        )
        return params["messages"]

    def _prompt(self, messages: list[dict]) -> list[dict]:
        """The messages the model reads for a conversation ending in a user message."""
        messages = trim_history(without_echoes(messages), self._max_history_turns)
        return with_examples(messages, self._examples)

    async def _read_ahead(self, messages: list[dict]):
        """Read the prompt the next user message will be appended to, off the critical
        path, with the same history trimming the next turn will get. It starts a moment
        later, once the reply's last text has reached the TTS, and gives way to every
        reply and to the synthesis of a first phrase (agent/cpu_share.py): on 2 cores,
        reading ahead beside Piper made the reply's first audio twice as slow."""
        prompt = self._prompt(messages + [{"role": "user", "content": "..."}])[:-1]

        def read():
            try:
                self._llm.read_ahead(prompt, session=self._session_id)
            except Exception as e:  # the next turn reads its prompt itself; say why
                logger.warning(f"{self}: reading ahead failed: {e}")

        asyncio.get_running_loop().call_later(READ_AHEAD_DELAY_SECS, read)

    async def get_chat_completions(self, context) -> AsyncIterator[ChatCompletionChunk]:
        messages = await self._chat_messages(context)

        async def read_ahead(reply: str):
            await self._read_ahead(messages + [{"role": "assistant", "content": reply}])

        return _ThreadedChunkStream(
            self._llm,
            self._prompt(messages),
            on_complete=read_ahead,
            max_tokens=self._settings.max_tokens,
            temperature=self._settings.temperature,
            seed=self._settings.seed,
            session=self._session_id,
        )


def trim_history(messages: list[dict], max_turns: int) -> list[dict]:
    """Keep the leading system messages and at most ``max_turns`` recent exchanges plus the
    new question (with any notes, e.g. tone hints, in their places between them).

    Old exchanges are dropped in blocks of half the limit, not one per turn: llama.cpp
    reuses its cache for an unchanged prompt prefix, and dropping one exchange every turn
    would change the prefix, and re-read the whole history, on every turn.
    """
    lead = _leading_system_messages(messages)
    system, rest = messages[:lead], messages[lead:]
    user_at = [i for i, m in enumerate(rest) if m.get("role") == "user"]
    exchanges = len(user_at) - 1  # complete exchanges before the new question
    if exchanges <= max_turns:
        return system + rest
    block = max(1, max_turns // 2)
    drop = -(-(exchanges - max_turns) // block) * block
    return system + rest[user_at[drop] :]


class _ThreadFedIterator:
    """The items a blocking iterator yields on another thread, as an async iterator.

    ``run`` starts ``produce`` on some thread. Items cross to the event loop through a
    queue; an exception raised by the iterator is raised again by ``__anext__``. ``stop()``
    ends production after the current item and closes the iterator (so a generator's
    ``finally``/``with`` blocks run, e.g. a model lock is released).
    """

    def __init__(self, items: Callable[[], Iterable], run: Callable[[Callable[[], None]], object]):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stop = threading.Event()
        loop = asyncio.get_running_loop()
        put = self._queue.put_nowait

        def produce():
            iterator = iter(items())
            try:
                for item in iterator:
                    if self._stop.is_set():
                        break
                    loop.call_soon_threadsafe(put, item)
            except Exception as e:
                loop.call_soon_threadsafe(put, e)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
                loop.call_soon_threadsafe(put, _DONE)

        run(produce)

    def stop(self) -> None:
        self._stop.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._queue.get()
        if item is _DONE:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item


class _ThreadedChunkStream:
    """LocalLLM's chunks, generated by its engine, as Pipecat's chunk stream.
    ``on_complete`` gets the reply's text when the model finished it (not when stopped)."""

    def __init__(
        self,
        llm: LocalLLM,
        messages: list[dict],
        *,
        on_complete: Callable[[str], Awaitable[None]] | None = None,
        **options,
    ):
        self._stream = llm.stream_chat(messages, **options)
        self._chunks = _ThreadFedIterator(lambda: self._stream, _start_thread)
        self._on_complete = on_complete
        self._text: list[str] = []
        self._closed = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        # Errors are surfaced to Pipecat, which reports them as an ErrorFrame.
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            if self._on_complete is not None and not self._closed:
                await self._on_complete("".join(self._text).strip())
            raise
        chunk.setdefault("object", "chat.completion.chunk")
        for choice in chunk.get("choices", ()):
            self._text.append((choice.get("delta") or {}).get("content") or "")
        return ChatCompletionChunk.model_validate(chunk)

    async def aclose(self):
        # An interruption or a closing session stops generation at the next token.
        self._closed = True
        self._stream.cancel()
        self._chunks.stop()


def _while_urgent(cpu: CpuShare, chunks: Iterator) -> Iterator:
    with cpu.urgent():
        yield from chunks


def _start_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="stream", daemon=True).start()


class EngineTTSService(TTSService):
    """Speaks LLM sentences with a shared SpeechEngine, conditioned on the session's audio.

    The text arrives already cut into what is spoken at once (AggregatedTextFrames from
    an LLMTextProcessor in front of it, see pipelines/first_clause.py).
    """

    def __init__(
        self,
        *,
        engine: SpeechEngine,
        session: SessionState,
        cpu: CpuShare | None = None,
        **kwargs,
    ):
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model=None, voice=None, language=None),
            **kwargs,
        )
        self._engine = engine
        self._session = session
        # A reply's first phrase is synthesised with the LLM held back (agent/cpu_share.py).
        self._cpu = cpu or CpuShare()
        self._reply_spoken: str | None = None  # context id of the reply being spoken
        # Fired as synthesis of each sentence begins; the turn timeline uses it.
        self._register_event_handler("on_synthesis_started")

    def can_generate_metrics(self) -> bool:
        return True

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        self._engine.forget(self._session.session_id)

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        self._engine.forget(self._session.session_id)

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        engine = self._engine
        speech_context = await self._session.reply_context()
        spoken: list[np.ndarray] = []

        first_phrase = context_id != self._reply_spoken
        self._reply_spoken = context_id

        async def chunks(audio) -> AsyncIterator[bytes]:
            async for item in audio:
                if first_phrase and not spoken:
                    # The reply's first sound comes at once, not after the engine's silence.
                    item = without_leading_silence(item, engine.sample_rate)
                spoken.append(item)
                yield item.tobytes()

        await self.start_tts_usage_metrics(text)
        await self._call_event_handler("on_synthesis_started", text)

        def synthesize():
            if not first_phrase:
                return engine.synthesize(text, speech_context)
            return _while_urgent(self._cpu, engine.synthesize(text, speech_context))

        audio = _ThreadFedIterator(synthesize, _start_thread)
        try:
            async for frame in self._stream_audio_frames_from_iterator(
                chunks(audio), in_sample_rate=engine.sample_rate, context_id=context_id
            ):
                await self.stop_ttfb_metrics()
                yield frame
        except Exception as e:
            logger.error(f"{self}: speech synthesis failed for {text!r}: {e}")
            yield ErrorFrame(error=f"speech synthesis failed: {e}")
        finally:
            # If the session ends (or the task is cancelled) mid-sentence, the engine stops
            # too instead of finishing a sentence nobody will hear.
            audio.stop()
            await self.stop_ttfb_metrics()
        if spoken:
            self._session.add_bot_reply(
                SpokenAudio(np.concatenate(spoken), engine.sample_rate, text.strip())
            )


class MisoTTSService(EngineTTSService):
    """Pipecat's TTS stage speaking with MisoTTS (or CSM-1B).

    Every sentence is generated after the session's conversation so far: the user's
    captured turns (their audio and transcripts, as the user's speaker) and the bot's own
    earlier speech, including the sentences of the current reply (as the bot's speaker),
    behind the optional voice prompt. The session's turn recorder sits behind the
    half-duplex gate, so nothing heard while the bot spoke is ever in that context.
    """

    def __init__(self, *, engine: SpeechEngine, session: SessionState, **kwargs):
        from tts.miso_voice import MisoEngine

        if not isinstance(engine, MisoEngine):
            raise TypeError(f"MisoTTSService needs a MisoEngine, got {type(engine).__name__}")
        super().__init__(engine=engine, session=session, **kwargs)
