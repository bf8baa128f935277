"""Thin Pipecat services around the models that are loaded once and shared by sessions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable

import numpy as np
from loguru import logger
from openai.types.chat import ChatCompletionChunk
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.services.whisper.stt import WhisperSTTService

from agent.asr import ShortUtteranceWhisper
from agent.echo import is_echo, is_repeat
from agent.llm import LocalLLM
from agent.session import SessionState
from tts.base import SpeechEngine, SpokenAudio

_DONE = object()
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
        **kwargs,
    ):
        # WhisperSTTService.__init__ calls _load(); the shared model must be in place first.
        self._shared_model = ShortUtteranceWhisper(
            model, beam_size=beam_size, utterance_window=utterance_window
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


class SpeechEndWatch:
    """Follows the audio of the current speech segment and says when the voice has just
    fallen silent (a few quiet frames after loud ones), before the VAD is sure of it.

    Keeps the segment as Pipecat's SegmentedSTTService does: the last second before the VAD
    start, then everything until the VAD stop.
    """

    QUIET_FRAMES = 2  # 20 ms frames below the level that follow speech
    FLOOR = 300  # int16 RMS: below this a frame is silent whatever the speech level
    FRACTION = 0.12  # ...or below this fraction of the segment's loudest frame

    def __init__(self, lead_secs: float = 1.0):
        self._lead_secs = lead_secs
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._speaking = False
        self._peak = 0.0
        self._quiet = 0
        self._fired = False

    def speech_started(self):
        self._speaking = True
        self._quiet = 0
        self._fired = False

    def speech_stopped(self):
        # Pipecat's segmented STT empties its buffer at the VAD stop; so does this.
        self._speaking = False
        self._peak = 0.0
        self._chunks.clear()
        self._samples = 0

    def add(self, audio: bytes, sample_rate: int) -> bool:
        """Add a frame; True when the voice has just gone quiet within the VAD's speech."""
        samples = np.frombuffer(audio, dtype=np.int16)
        self._chunks.append(samples)
        self._samples += len(samples)
        if not self._speaking:
            keep = int(self._lead_secs * sample_rate)
            while self._chunks and self._samples - len(self._chunks[0]) >= keep:
                self._samples -= len(self._chunks.pop(0))
        rms = float(np.sqrt(np.mean(samples.astype(np.float32) ** 2))) if len(samples) else 0.0
        if rms > max(self.FLOOR, self.FRACTION * self._peak):
            self._peak = max(self._peak, rms)
            self._quiet = 0
            self._fired = False
            return False
        self._quiet += 1
        if self._speaking and not self._fired and self._quiet == self.QUIET_FRAMES:
            self._fired = True
            return True
        return False

    def segment(self) -> np.ndarray:
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


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


class ServerLLMService(OpenAILLMService):
    """Pipecat's OpenAI service for an OpenAI-compatible server, with example exchanges."""

    def __init__(self, *, examples: list[tuple[str, str]] = (), **kwargs):
        super().__init__(**kwargs)
        self._examples = list(examples)

    def build_chat_completion_params(self, params_from_context) -> dict:
        params = super().build_chat_completion_params(params_from_context)
        params["messages"] = with_examples(without_echoes(params["messages"]), self._examples)
        return params


class LocalLLMService(OpenAILLMService):
    """Pipecat's OpenAI LLM service with the HTTP call replaced by an in-process model.

    llama-cpp-python already speaks the OpenAI chunk format, so everything else Pipecat's
    OpenAI service does (context handling, text frames, metrics, errors) is reused as is.
    """

    def __init__(
        self,
        *,
        llm: LocalLLM,
        max_history_turns: int,
        examples: list[tuple[str, str]] = (),
        **kwargs,
    ):
        super().__init__(api_key="in-process", base_url="http://in-process.invalid/v1", **kwargs)
        self._llm = llm
        self._max_history_turns = max_history_turns
        self._examples = list(examples)

    async def get_chat_completions(self, context) -> AsyncIterator[ChatCompletionChunk]:
        adapter = self.get_llm_adapter()
        params = await adapter.get_llm_invocation_params(
            context,
            system_instruction=self._settings.system_instruction,
            convert_developer_to_user=True,
        )
        messages = trim_history(without_echoes(params["messages"]), self._max_history_turns)
        messages = with_examples(messages, self._examples)
        return _ThreadedChunkStream(
            self._llm,
            messages,
            max_tokens=self._settings.max_tokens,
            temperature=self._settings.temperature,
            seed=self._settings.seed,
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
    """LocalLLM's chunks, generated on the model's own thread, as Pipecat's chunk stream."""

    def __init__(self, llm: LocalLLM, messages: list[dict], **options):
        self._chunks = _ThreadFedIterator(lambda: llm.stream_chat(messages, **options), llm.submit)

    def __aiter__(self):
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        # Errors are surfaced to Pipecat, which reports them as an ErrorFrame.
        chunk = await self._chunks.__anext__()
        chunk.setdefault("object", "chat.completion.chunk")
        return ChatCompletionChunk.model_validate(chunk)

    async def aclose(self):
        # An interruption or a closing session stops generation at the next token.
        self._chunks.stop()


def _start_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="tts-synthesize", daemon=True).start()


class EngineTTSService(TTSService):
    """Speaks LLM sentences with a shared SpeechEngine, conditioned on the session's audio.

    The text arrives already cut into what is spoken at once (AggregatedTextFrames from
    an LLMTextProcessor in front of it, see pipelines/first_clause.py).
    """

    def __init__(self, *, engine: SpeechEngine, session: SessionState, **kwargs):
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model=None, voice=None, language=None),
            **kwargs,
        )
        self._engine = engine
        self._session = session
        # Fired as synthesis of each sentence begins; the turn timeline uses it.
        self._register_event_handler("on_synthesis_started")

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        engine = self._engine
        speech_context = await self._session.reply_context()
        spoken: list[np.ndarray] = []

        async def chunks(audio) -> AsyncIterator[bytes]:
            async for item in audio:
                spoken.append(item)
                yield item.tobytes()

        await self.start_tts_usage_metrics(text)
        await self._call_event_handler("on_synthesis_started", text)
        audio = _ThreadFedIterator(lambda: engine.synthesize(text, speech_context), _start_thread)
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
