"""Pipecat's TTS stage over a SpeechEngine shared by every session (tts/).

It keeps what the voice may hear of the conversation: the user's turns as they arrive in
UserTurnFrames (their captured audio and words) and the bot's own spoken sentences, in
the order they were said, and the reply style the latest turn's tone calls for."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator

import numpy as np
from loguru import logger
from pipecat.frames.frames import CancelFrame, EndFrame, ErrorFrame, Frame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from agent.cpu_share import CpuShare
from pipelines.services.threads import ThreadFedIterator, start_thread, while_urgent
from pipelines.turns.record import ReplyVoicedFrame, UserTurn, UserTurnFrame
from tts.base import (
    NEUTRAL_STYLE,
    SpeechContext,
    SpeechEngine,
    SpokenAudio,
    Utterance,
    without_leading_silence,
)

# The dialogue a voice may hear, in utterances. More than MisoTTS's 2048 positions hold
# (~2.5 minutes of speech), so its own budget decides what it drops, in large steps, and
# not this window sliding by one utterance per turn, which would make it read the whole
# conversation again at every turn.
MAX_KEPT_UTTERANCES = 64
# The longest a reply's first sentence waits for its turn's tone reading (or its turn).
MAX_STYLE_WAIT_SECS = 0.5


class EngineTTSService(TTSService):
    """Speaks LLM sentences with a shared SpeechEngine, conditioned on the conversation.

    The text arrives already cut into what is spoken at once (AggregatedTextFrames from
    an LLMTextProcessor in front of it, see pipelines/turns/first_clause.py).
    """

    def __init__(
        self,
        *,
        engine: SpeechEngine,
        session_id: str,
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
        self._session_id = session_id
        self.dialogue: deque[Utterance] = deque(maxlen=MAX_KEPT_UTTERANCES)
        self._style = NEUTRAL_STYLE
        self._turn: UserTurn | None = None  # the latest turn, until its reply starts
        self._turn_arrived = asyncio.Event()
        self._turn_heard: int | None = None  # the id of the latest user turn in the dialogue
        # A reply's first phrase is synthesised with the LLM held back (agent/cpu_share.py).
        self._cpu = cpu or CpuShare()
        self._reply_spoken: str | None = None  # context id of the reply being spoken
        # Fired as synthesis of each sentence begins; the turn timeline uses it.
        self._register_event_handler("on_synthesis_started")

    def can_generate_metrics(self) -> bool:
        return True

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        self._engine.forget(self._session_id)

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        self._engine.forget(self._session_id)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, UserTurnFrame) and direction == FrameDirection.DOWNSTREAM:
            taken_back = self._turn_heard is not None and self._turn_heard == frame.turn.id
            self._turn = frame.turn
            self._turn_arrived.set()
            if frame.turn.audio is not None:
                if taken_back and self.dialogue and self.dialogue[-1].speaker == "user":
                    self.dialogue.pop()  # its first part, now heard whole
                self.dialogue.append(Utterance("user", frame.turn.audio))
                self._turn_heard = frame.turn.id
        await super().process_frame(frame, direction)

    async def on_turn_context_completed(self):
        await super().on_turn_context_completed()
        # The reply's text has all been synthesised: the CPU is the LLM's again.
        await self.push_frame(ReplyVoicedFrame(), FrameDirection.UPSTREAM)

    async def _reply_style(self):
        """The style for a new reply: its turn's tone reading, once ready (a system frame,
        the turn may still be on its way past the LLM; neither is waited for long)."""
        if not self._turn_arrived.is_set():
            try:
                await asyncio.wait_for(self._turn_arrived.wait(), MAX_STYLE_WAIT_SECS)
            except TimeoutError:
                return
        self._turn_arrived.clear()
        turn, self._turn = self._turn, None
        tone = await turn.tone_result(MAX_STYLE_WAIT_SECS) if turn else None
        if tone is not None:
            self._style = tone.style

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        engine = self._engine
        first_phrase = context_id != self._reply_spoken
        self._reply_spoken = context_id
        if first_phrase:
            await self._reply_style()
        speech_context = SpeechContext(
            conversation=tuple(self.dialogue), session_id=self._session_id, style=self._style
        )
        spoken: list[np.ndarray] = []

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
            # With what the engine made it from (audio.result), when it says.
            said = SpokenAudio(
                np.concatenate(spoken), engine.sample_rate, text.strip(), codes=audio.result
            )
            self.dialogue.append(Utterance("bot", said))
