"""Microphone and speakers through sounddevice (PortAudio), for talking to the bot locally.

Pipecat's LocalAudioTransport needs PyAudio; sounddevice installs from a wheel and only
needs the system's libportaudio2. Input arrives on PortAudio's thread and is handed to
the event loop; output is written on a single worker thread, which blocks for as long as
the sound card takes to play it, so playback paces the pipeline.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame, StartFrame
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams


def _sounddevice():
    try:
        import sounddevice
    except OSError as e:  # the Python package is there but PortAudio is not
        raise RuntimeError(
            f"sounddevice cannot load PortAudio ({e}); install it with: apt-get install libportaudio2"
        ) from e
    return sounddevice


class SoundDeviceInput(BaseInputTransport):
    def __init__(self, params: TransportParams, device: int | str | None = None, **kwargs):
        super().__init__(params, **kwargs)
        self._device = device
        self._stream = None

    async def start(self, frame: StartFrame):
        await super().start(frame)
        if self._stream is None:
            sd = _sounddevice()
            loop = asyncio.get_running_loop()
            rate = self.sample_rate

            def on_audio(indata, _frames, _time, _status):
                audio = InputAudioRawFrame(audio=bytes(indata), sample_rate=rate, num_channels=1)
                asyncio.run_coroutine_threadsafe(self.push_audio_frame(audio), loop)

            self._stream = sd.RawInputStream(
                samplerate=rate,
                channels=1,
                dtype="int16",
                blocksize=int(rate * 0.02),
                device=self._device,
                callback=on_audio,
            )
            self._stream.start()
        await self.set_transport_ready(frame)

    async def cleanup(self):
        await super().cleanup()
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


class SoundDeviceOutput(BaseOutputTransport):
    def __init__(self, params: TransportParams, device: int | str | None = None, **kwargs):
        super().__init__(params, **kwargs)
        self._device = device
        self._stream = None
        self._executor = ThreadPoolExecutor(max_workers=1)

    async def start(self, frame: StartFrame):
        await super().start(frame)
        if self._stream is None:
            sd = _sounddevice()
            self._stream = sd.RawOutputStream(
                samplerate=self.sample_rate, channels=1, dtype="int16", device=self._device
            )
            self._stream.start()
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        if self._stream is None:
            return False
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._stream.write, frame.audio
        )
        return True

    async def cleanup(self):
        try:
            await super().cleanup()
            if self._stream is not None:
                self._stream.stop()
                self._stream.close()
                self._stream = None
        finally:
            self._executor.shutdown(wait=False)


class SoundDeviceTransport(BaseTransport):
    def __init__(self, params: TransportParams, input_device=None, output_device=None):
        super().__init__()
        self._input = SoundDeviceInput(params, device=input_device)
        self._output = SoundDeviceOutput(params, device=output_device)

    def input(self) -> SoundDeviceInput:
        return self._input

    def output(self) -> SoundDeviceOutput:
        return self._output
