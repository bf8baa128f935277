"""One user turn, read in one place: the audio the user spoke, its transcript, its tone.

Sits right after the user aggregator, which runs the VAD and decides when the turn ends,
and passes every frame on untouched but the caller's audio: nothing after it needs that,
so the 50 audio frames a second stop here instead of hopping through the LLM, the TTS,
the output and the assistant aggregator. It sees, in order: the input audio, the VAD's start
and stop of speech, the end of the turn (UserStoppedSpeakingFrame), the turn's text as
written to the LLM context (LLMContextUserTurnFrame), then the context that runs the LLM.

A turn's audio runs from a pre-roll before the first VAD start (the VAD fires only after
``start_secs`` of speech) to the last VAD stop. When the text arrives the turn goes into
the session (the voice hears it) and its tone is analysed on a thread while the LLM
already runs: the reply's style only has to be ready when the first sentence is spoken
(SessionState.reply_context waits for it), so tone following costs the LLM nothing.
Nothing about the tone is written into the LLM's context: small models narrate such
notes ("The user is asking ...") instead of answering.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    LLMContextUserTurnFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from agent.session import SessionState
from agent.tone.analysis import analyze_tone
from agent.tone.follow import as_log
from tts.base import SpokenAudio

# A user turn longer than this keeps only its first part; nobody speaks one turn for minutes.
MAX_TURN_SECS = 120.0


class UserTurnProcessor(FrameProcessor):
    """Captures each user turn (audio + transcript), follows its tone, stores it."""

    def __init__(
        self,
        *,
        session: SessionState,
        pre_roll_secs: float,
        vad_start_secs: float,
        on_tone: Callable[[dict], Awaitable[None]] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._session = session
        self._lead_secs = pre_roll_secs + vad_start_secs
        self.on_tone = on_tone
        self._sample_rate = 16000
        self._recent: deque[np.ndarray] = deque()  # outside a turn: the latest lead-in
        self._recent_samples = 0
        self._turn: list[np.ndarray] | None = None  # inside a turn: its audio so far
        self._turn_samples = 0
        self._speech_end = 0  # samples into the turn where the VAD last heard speech end
        self._ended_audio: np.ndarray | None = None  # the ended turn, awaiting its text

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, InputAudioRawFrame):
                self._add_audio(frame)
                return  # the end of the line for the caller's audio
            elif isinstance(frame, VADUserStartedSpeakingFrame):
                self._speech_started()
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                self._speech_end = self._turn_samples
            elif isinstance(frame, UserStoppedSpeakingFrame):
                self._turn_ended()
            elif isinstance(frame, LLMContextUserTurnFrame):
                self._text_written(frame.text.strip())
        await self.push_frame(frame, direction)

    def _add_audio(self, frame: InputAudioRawFrame):
        samples = np.frombuffer(frame.audio, dtype=np.int16)
        if frame.num_channels > 1:
            samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        self._sample_rate = frame.sample_rate
        if self._turn is not None:
            if self._turn_samples < MAX_TURN_SECS * self._sample_rate:
                self._turn.append(samples)
                self._turn_samples += len(samples)
            return
        self._recent.append(samples)
        self._recent_samples += len(samples)
        keep = int(self._lead_secs * self._sample_rate)
        while self._recent and self._recent_samples - len(self._recent[0]) >= keep:
            self._recent_samples -= len(self._recent.popleft())

    def _speech_started(self):
        if self._turn is not None:
            return  # the user resumed within the same turn
        lead = np.concatenate(self._recent) if self._recent else np.zeros(0, np.int16)
        keep = int(self._lead_secs * self._sample_rate)
        self._turn = [lead[max(0, len(lead) - keep) :] if keep else lead[:0]]
        self._turn_samples = len(self._turn[0])
        self._speech_end = 0
        self._recent.clear()
        self._recent_samples = 0

    def _turn_ended(self):
        if self._turn is None:
            return
        audio = np.concatenate(self._turn)
        self._ended_audio = audio[: self._speech_end or len(audio)]
        self._turn = None
        self._turn_samples = 0

    def _text_written(self, text: str):
        audio, self._ended_audio = self._ended_audio, None
        if audio is None or not text:
            return
        turn = SpokenAudio(audio, self._sample_rate, text)
        logger.debug(f"{self}: user turn of {turn.duration_secs:.2f} s: {text!r}")
        self._session.add_user_turn(turn)
        self._session.style_pending(self.create_task(self._follow_tone(turn)))

    async def _follow_tone(self, turn: SpokenAudio):
        start = time.perf_counter()
        try:
            features = await asyncio.to_thread(
                analyze_tone, turn.samples, turn.sample_rate, turn.text
            )
        except ValueError as e:  # e.g. nothing audible: follow nothing this turn
            logger.debug(f"{self}: no tone for this turn: {e}")
            return
        analysis_ms = (time.perf_counter() - start) * 1000
        reading, style = self._session.tone.follow(features)
        logger.debug(f"{self}: tone {reading} -> {style} ({analysis_ms:.0f} ms)")
        if self.on_tone is not None:
            await self.on_tone(as_log(features, reading, style, reading.describe(), analysis_ms))
