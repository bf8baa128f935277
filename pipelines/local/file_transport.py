"""A transport that plays WAV turns into the pipeline and records what the bot says.

Input is pushed in 20 ms chunks at real-time pace, as a microphone would deliver it, so
VAD, turn detection and latencies behave as in a live call. Output is written at
real-time pace too (as a sound card would consume it) and kept in memory.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame, StartFrame
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from agent.audio import CHUNK_SECS


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
