"""Pipecat's faster-whisper service over a WhisperModel loaded once per process."""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.whisper.stt import WhisperSTTService

from agent.asr.speech_end import SpeechEndWatch
from agent.asr.whisper import ShortUtteranceWhisper

# Silence Pipecat's segmented STT appends to each segment (its default, set explicitly
# because early transcription must add the same).
TRAILING_SILENCE_SECS = 0.5


class SharedWhisperSTTService(WhisperSTTService):
    """Pipecat's faster-whisper service, reading a WhisperModel loaded once per process.

    With ``early``, it starts transcribing when the user's voice drops to silence, a
    fifth of a second before the VAD (which waits ``stop_secs`` to be sure) reports the
    stop and Pipecat asks for the segment (agent/asr/whisper.py, ``transcribe_early``).
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


