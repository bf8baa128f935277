"""Captures, for each user turn, the audio the user spoke and its transcript.

Placed between the half-duplex gate and speech recognition. The user aggregator runs the
VAD and broadcasts its speech start/stop frames and the end of the turn both ways; the
upstream copies reach this recorder. A turn's audio runs from a pre-roll before the first
VAD start (the VAD only fires after ``start_secs`` of speech) to the last VAD stop; the
transcript is the text the aggregator wrote to the LLM context for that turn.
"""

from __future__ import annotations

from collections import deque

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
from tts.base import SpokenAudio

# A user turn longer than this is cut at its start; nobody speaks one turn for minutes.
MAX_TURN_SECS = 120.0


class UserTurnRecorder(FrameProcessor):
    """Stores each finished user turn (audio + transcript) in the session state."""

    def __init__(
        self, *, session: SessionState, pre_roll_secs: float, vad_start_secs: float, **kwargs
    ):
        super().__init__(**kwargs)
        self._session = session
        self._lead_secs = pre_roll_secs + vad_start_secs
        self._recent: deque[np.ndarray] = deque()
        self._recent_samples = 0
        self._turn: list[np.ndarray] | None = None
        self._turn_samples = 0
        self._speech_end_samples = 0
        self._sample_rate = 16000
        self._finished_audio: np.ndarray | None = None
        self._turns_ended = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._add_audio(frame)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._speech_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speech_end_samples = self._turn_samples
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._turn_ended()
        elif isinstance(frame, LLMContextUserTurnFrame) and self._finished_audio is not None:
            logger.debug(f"{self}: captured a user turn of "
                         f"{len(self._finished_audio) / self._sample_rate:.2f} s: {frame.text!r}")
            self._session.add_user_turn(
                SpokenAudio(self._finished_audio, self._sample_rate, frame.text.strip())
            )
            self._finished_audio = None
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
        # Outside a turn only the last lead-in is kept, for the next turn's pre-roll.
        self._recent.append(samples)
        self._recent_samples += len(samples)
        keep = int(self._lead_secs * self._sample_rate)
        while self._recent and self._recent_samples - len(self._recent[0]) >= keep:
            self._recent_samples -= len(self._recent.popleft())

    def _speech_started(self):
        if self._turn is not None:
            return  # the user resumed within the same turn
        lead = np.concatenate(self._recent) if self._recent else np.zeros(0, np.int16)
        lead = (
            lead[-int(self._lead_secs * self._sample_rate) :] if self._lead_secs > 0 else lead[:0]
        )
        self._turn = [lead]
        self._turn_samples = len(lead)
        self._speech_end_samples = 0
        self._recent.clear()
        self._recent_samples = 0

    def _turn_ended(self):
        # Every end of turn is counted (the tone follower matches turns by number), even one
        # with no speech captured.
        self._turns_ended += 1
        if self._turn is None:
            self._session.turn_ended(self._turns_ended, None)
            return
        audio = np.concatenate(self._turn)
        end = self._speech_end_samples or len(audio)
        self._finished_audio = audio[:end]
        self._session.turn_ended(
            self._turns_ended, SpokenAudio(self._finished_audio, self._sample_rate, "")
        )
        self._turn = None
        self._turn_samples = 0
