"""When the voice falls silent: a few quiet frames after speech, before the VAD is sure.

The VAD reports the end of speech only after ``stop_secs`` (0.2 s) of silence. Whisper's
transcription (pipelines/services/stt.py) starts a fifth of a second earlier, at the first
quiet frames; if the voice comes back, that work is for nothing.

Smart Turn was tried here too (it judged finished turns from 40 ms of silence as well as
from 200 ms): on 2 cores it only slowed the early transcription it ran beside, and the
turn's end waits for both.
"""

from __future__ import annotations

import numpy as np


class SpeechEndWatch:
    """Follows the audio of the current speech segment and says when the voice has just
    fallen silent (a few quiet frames after loud ones), before the VAD is sure of it.

    Keeps the segment as Pipecat's SegmentedSTTService does, byte for byte (an early
    transcription is used only for the very same audio): the last second before the VAD
    start, cut to exactly a second whatever the frame sizes (a phone line's resampled
    frames vary), then everything until the VAD stop.
    """

    QUIET_FRAMES = 2  # 20 ms frames below the level that follow speech
    FLOOR = 300  # int16 RMS: below this a frame is silent whatever the speech level
    FRACTION = 0.12  # ...or below this fraction of the segment's loudest frame

    def __init__(self, lead_secs: float = 1.0):
        self._lead_secs = lead_secs
        self._buffer = bytearray()  # int16 PCM
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
        self._buffer.clear()

    def add(self, audio: bytes, sample_rate: int) -> bool:
        """Add a frame; True when the voice has just gone quiet within the VAD's speech."""
        samples = np.frombuffer(audio, dtype=np.int16)
        self._buffer += audio
        keep = int(self._lead_secs * sample_rate) * 2
        if not self._speaking and len(self._buffer) > keep:
            del self._buffer[: len(self._buffer) - keep]
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
        return np.frombuffer(bytes(self._buffer), dtype=np.int16)
