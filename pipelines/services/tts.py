"""Pipecat's TTS stage over a SpeechEngine shared by every session (tts/)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import numpy as np
from loguru import logger
from pipecat.frames.frames import CancelFrame, EndFrame, ErrorFrame, Frame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from agent.cpu_share import CpuShare
from agent.session import SessionState
from pipelines.services.threads import ThreadFedIterator, start_thread, while_urgent
from tts.base import SpeechEngine, SpokenAudio, without_leading_silence


class EngineTTSService(TTSService):
    """Speaks LLM sentences with a shared SpeechEngine, conditioned on the session's audio.

    The text arrives already cut into what is spoken at once (AggregatedTextFrames from
    an LLMTextProcessor in front of it, see pipelines/turns/first_clause.py).
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
            return while_urgent(self._cpu, engine.synthesize(text, speech_context))

        audio = ThreadFedIterator(synthesize, start_thread)
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
