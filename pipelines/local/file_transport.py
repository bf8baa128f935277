"""A transport that plays WAV turns into the pipeline and records what the bot says.

Input is pushed in 20 ms chunks at real-time pace, as a microphone would deliver it, so
VAD, turn detection and latencies behave as in a live call. Output is written at
real-time pace too (as a sound card would consume it) and kept in memory.
"""

from __future__ import annotations

import asyncio
import os
import time
import wave
from pathlib import Path

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame, StartFrame
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

CHUNK_SECS = 0.02
SPEECH_RMS_FLOOR = 300  # int16 RMS below which a 20 ms window counts as silence


class WavInputError(ValueError):
    """An input WAV cannot be used; the message names the file and the problem."""


def load_input_wav(path: str | Path, sample_rate: int) -> tuple[np.ndarray, list[str]]:
    """Read a WAV as mono int16 at ``sample_rate``; return it and the conversions made.

    Missing, unreadable and empty files are errors; stereo is mixed down and other rates
    are resampled, and each conversion is reported.
    """
    import soundfile as sf
    import soxr

    path = Path(path)
    if not path.exists():
        raise WavInputError(f"input WAV not found: {path}")
    if not path.is_file():
        raise WavInputError(f"input WAV is not a file: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise WavInputError(f"cannot read {path} as audio: {e}") from None
    if data.shape[0] == 0:
        raise WavInputError(f"input WAV has no audio: {path}")
    notes = []
    if data.shape[1] > 1:
        notes.append(f"{path.name}: {data.shape[1]} channels mixed down to mono")
        data = data.mean(axis=1, keepdims=True)
    mono = data[:, 0]
    if rate != sample_rate:
        notes.append(f"{path.name}: resampled from {rate} Hz to {sample_rate} Hz")
        mono = soxr.resample(mono, rate, sample_rate)
    if not np.all(np.isfinite(mono)):
        raise WavInputError(f"input WAV contains invalid samples (NaN/inf): {path}")
    return (np.clip(mono, -1, 1) * 32767).astype(np.int16), notes


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int, channels: int = 1) -> Path:
    """Write int16 samples (interleaved when ``channels`` > 1) as a WAV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it and renamed: the file is never seen half written.
    partial = path.with_name(f".{path.name}.partial")
    with wave.open(str(partial), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(samples.astype(np.int16).tobytes())
    os.replace(partial, path)
    return path


def speech_end_offset(samples: np.ndarray, sample_rate: int) -> int:
    """Index just after the last 20 ms window with speech-level energy."""
    window = int(sample_rate * CHUNK_SECS)
    last = 0
    for start in range(0, len(samples), window):
        chunk = samples[start : start + window].astype(np.float32)
        if chunk.size and np.sqrt(np.mean(chunk**2)) > SPEECH_RMS_FLOOR:
            last = start + len(chunk)
    return last or len(samples)


class _RealtimePacer:
    """Sleeps so that consecutive chunks go out no faster than real time."""

    def __init__(self):
        self._next = None

    async def wait(self, secs: float):
        now = time.monotonic()
        if self._next is None or self._next < now:
            self._next = now
        delay = self._next - now
        if delay > 0:
            await asyncio.sleep(delay)
        self._next += secs


class WavFileInput(BaseInputTransport):
    def __init__(self, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._pacer = _RealtimePacer()
        self.ready = asyncio.Event()

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)
        self.ready.set()

    async def play(self, samples: np.ndarray, *, on_offset: tuple[int, callable] | None = None):
        """Push ``samples`` in 20 ms chunks; call ``on_offset[1]()`` when passing ``on_offset[0]``."""
        rate = self.sample_rate
        step = int(rate * CHUNK_SECS)
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            await self._pacer.wait(len(chunk) / rate)
            await self.push_audio_frame(
                InputAudioRawFrame(audio=chunk.tobytes(), sample_rate=rate, num_channels=1)
            )
            if on_offset and start < on_offset[0] <= start + len(chunk):
                on_offset[1]()

    async def play_silence(self, secs: float):
        await self.play(np.zeros(int(self.sample_rate * secs), np.int16))


class WavFileOutput(BaseOutputTransport):
    def __init__(self, params: TransportParams, *, realtime: bool = True, **kwargs):
        super().__init__(params, **kwargs)
        self._realtime = realtime
        self._pacer = _RealtimePacer()
        self.chunks: list[tuple[float, np.ndarray]] = []

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        samples = np.frombuffer(frame.audio, dtype=np.int16)
        self.chunks.append((time.monotonic(), samples))
        if self._realtime:
            await self._pacer.wait(len(samples) / frame.sample_rate)
        return True


class FileTransport(BaseTransport):
    def __init__(self, params: TransportParams, *, realtime_output: bool = True):
        super().__init__()
        self._input = WavFileInput(params)
        self._output = WavFileOutput(params, realtime=realtime_output)

    def input(self) -> WavFileInput:
        return self._input

    def output(self) -> WavFileOutput:
        return self._output
