"""Thin Pipecat services around the models that are loaded once and shared by sessions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable

import numpy as np
from loguru import logger
from openai.types.chat import ChatCompletionChunk
from pipecat.frames.frames import ErrorFrame, Frame
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.services.whisper.stt import WhisperSTTService

from agent.asr import ShortUtteranceWhisper
from agent.llm import LocalLLM
from agent.session import SessionState
from pipelines.first_clause import FirstClauseAggregator
from tts.base import SpeechEngine, SpokenAudio

_DONE = object()


class SharedWhisperSTTService(WhisperSTTService):
    """Pipecat's faster-whisper service, reading a WhisperModel loaded once per process."""

    def __init__(self, *, model, beam_size: int = 1, utterance_window: bool = True, **kwargs):
        # WhisperSTTService.__init__ calls _load(); the shared model must be in place first.
        self._shared_model = ShortUtteranceWhisper(
            model, beam_size=beam_size, utterance_window=utterance_window
        )
        super().__init__(**kwargs)

    def _load(self):
        self._model = self._shared_model


class LocalLLMService(OpenAILLMService):
    """Pipecat's OpenAI LLM service with the HTTP call replaced by an in-process model.

    llama-cpp-python already speaks the OpenAI chunk format, so everything else Pipecat's
    OpenAI service does (context handling, text frames, metrics, errors) is reused as is.
    """

    def __init__(self, *, llm: LocalLLM, max_history_turns: int, **kwargs):
        super().__init__(api_key="in-process", base_url="http://in-process.invalid/v1", **kwargs)
        self._llm = llm
        self._max_history_turns = max_history_turns

    async def get_chat_completions(self, context) -> AsyncIterator[ChatCompletionChunk]:
        adapter = self.get_llm_adapter()
        params = await adapter.get_llm_invocation_params(
            context,
            system_instruction=self._settings.system_instruction,
            convert_developer_to_user=True,
        )
        messages = trim_history(list(params["messages"]), self._max_history_turns)
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
    lead = 0
    while lead < len(messages) and messages[lead].get("role") == "system":
        lead += 1
    system, rest = messages[:lead], messages[lead:]
    user_at = [i for i, m in enumerate(rest) if m.get("role") == "user"]
    exchanges = len(user_at) - 1  # complete exchanges before the new question
    if exchanges <= max_turns:
        return system + rest
    block = max(1, max_turns // 2)
    drop = -(-(exchanges - max_turns) // block) * block
    return system + rest[user_at[drop]:]


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
    """Speaks LLM sentences with a shared SpeechEngine, conditioned on the session's audio."""

    def __init__(
        self,
        *,
        engine: SpeechEngine,
        session: SessionState,
        first_clause_min_words: int = 0,
        **kwargs,
    ):
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model=None, voice=None, language=None),
            **kwargs,
        )
        if first_clause_min_words > 0:
            # TTSService builds its sentence aggregator itself and offers no argument for
            # another one; this replaces it right after construction, before any text.
            self._text_aggregator = FirstClauseAggregator(
                min_words=first_clause_min_words,
                aggregation_type=TextAggregationMode.SENTENCE,
                language=self._text_aggregator.language,
            )
        self._engine = engine
        self._session = session
        # Fired as synthesis of each sentence begins; the turn timeline uses it.
        self._register_event_handler("on_synthesis_started")

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        engine = self._engine
        speech_context = self._session.speech_context()
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
