"""The local (sounddevice) transport through the whole pipeline.

There is no sound card here, so PortAudio's streams are replaced by stand-ins that
behave like one: the microphone calls back from its own thread every 20 ms in real time,
and the speaker blocks on write for as long as the audio lasts. Everything else is real.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from pipecat.frames.frames import EndFrame
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

import pipelines.local.sounddevice_transport as sdt
from pipelines.build import build_session
from tests.conftest import speak, wer


class FakeSoundDevice:
    """The parts of the sounddevice module the transport uses."""

    def __init__(self, speech: np.ndarray):
        self.speech = speech
        self.played: list[bytes] = []
        device = self

        class RawInputStream:
            def __init__(self, *, samplerate, channels, dtype, blocksize, device, callback):
                assert (channels, dtype) == (1, "int16")
                self._rate, self._block, self._callback = samplerate, blocksize, callback
                self._stop = threading.Event()

            def start(self):
                threading.Thread(target=self._run, daemon=True).start()

            def _run(self):
                audio = np.concatenate([np.zeros(self._rate // 2, np.int16), device.speech])
                start, n = time.monotonic(), 0
                while not self._stop.is_set():
                    block = audio[n * self._block : (n + 1) * self._block]
                    block = np.pad(block, (0, self._block - len(block)))
                    self._callback(block.tobytes(), self._block, None, None)
                    n += 1
                    time.sleep(max(0, start + n * self._block / self._rate - time.monotonic()))

            def stop(self):
                self._stop.set()

            def close(self):
                pass

        class RawOutputStream:
            def __init__(self, *, samplerate, channels, dtype, device):
                self._rate = samplerate

            def start(self):
                pass

            def write(self, data: bytes):
                device.played.append(bytes(data))
                time.sleep(len(data) / 2 / self._rate)

            def stop(self):
                pass

            def close(self):
                pass

        self.RawInputStream = RawInputStream
        self.RawOutputStream = RawOutputStream


async def test_local_transport_hears_the_microphone_and_speaks(stack, transcribe, monkeypatch):
    question = "What is the capital of France?"
    fake = FakeSoundDevice(speak(stack, question))
    monkeypatch.setattr(sdt, "_sounddevice", lambda: fake)
    config = stack.config
    transport = sdt.SoundDeviceTransport(
        TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=config.audio_in_sample_rate,
            audio_out_sample_rate=config.audio_out_sample_rate,
        )
    )
    session = build_session(stack, transport, session_id="local-test")
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(session.worker)
    task = asyncio.create_task(runner.run())
    try:
        for _ in range(600):
            await asyncio.sleep(0.1)
            turns = session.timeline.turns
            if turns and turns[0].done.is_set():
                break
        else:
            pytest.fail("no reply within 60 s")
    finally:
        await session.worker.queue_frame(EndFrame())
        await asyncio.wait_for(task, timeout=30)

    turn = session.timeline.turns[0]
    assert wer(question, turn.transcript) <= 0.2, turn.transcript
    played = np.frombuffer(b"".join(fake.played), dtype=np.int16)
    assert wer(turn.reply, transcribe(played, config.audio_out_sample_rate)) <= 0.35, turn.reply


def test_missing_portaudio_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(RuntimeError, match="apt-get install libportaudio2"):
        sdt._sounddevice()
