"""Which part's native memory grows call after call: each part's work for one call, done
again and again in this one process, with the resident memory it leaves behind.

    python -m benchmarks.memory_by_part [--config default] [--calls 60]

benchmarks/server_memory.py found the server growing ~0.9 MiB a call over 20 sequential
calls, with the Python heap flat: native memory. Here the parts a call uses run alone,
each ``--calls`` times after a warm-up of 10 (so caches and pools have filled), and each
reports RSS growth per call over the first and the second half (memory that levels off
grows less in the second), after ``gc.collect()`` and glibc's ``malloc_trim(0)``:

* whisper: CTranslate2 transcribing a 3 s human clip (one turn);
* llm: llama.cpp, a new session's 24-token reply, then the session forgotten;
* piper: onnxruntime speaking two sentences of a call's replies (of ten, in turn);
* silero: a call's VAD analyzer on the shared session, over 3 s of audio;
* smart_turn: a call's Smart Turn analyzer on the shared session, judging one turn;
* tone: the pitch tracker on one turn;
* resampler: Pipecat's stream resampler (soxr), made for a call, 3 s through it;
* opus: aiortc's Opus encoder and decoder (PyAV / libopus) made for a call, 3 s each way;
* av_resampler: PyAV's resampler made for a call (the WebRTC transport's), 3 s through it;
* webrtc: two aiortc peer connections over loopback (ICE, DTLS, SRTP), 3 s of audio sent
  from one to the other, both closed: a browser call without the pipeline.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import time

import numpy as np
import psutil

from agent.config import load_config
from benchmarks.report import write_report
from pipelines.stack import load_stack

CLIP_SECS = 3
REPLIES = [
    "Paris is the capital of France.",
    "Oh no, that's annoying. Did you make it on time?",
    "Sorry, I missed that. Could you say it again?",
    "The dove is a symbol of peace.",
    "We need to breathe oxygen.",
    "There are twenty nine days in a leap year, and that happens every four years.",
    "Sure.",
    "I think the best way is to start early and take the bus.",
    "Hello there, how can I help you today?",
    "Water boils at one hundred degrees Celsius at sea level.",
]


def rss_mib() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss / 2**20


def parts(stack, clip: np.ndarray) -> dict:
    """Each part's work for one call (``clip``: int16 speech at 16 kHz)."""
    from pipecat.audio.utils import create_stream_resampler
    from pipecat.audio.vad.vad_analyzer import VADParams

    from agent.tone.analysis import analyze_tone
    from pipelines.services.analyzers import SharedSileroVADAnalyzer, SharedSmartTurnAnalyzer
    from tts.base import SpeechContext

    audio = clip.astype(np.float32) / 32768
    calls = iter(range(10**9))

    def whisper():
        list(stack.whisper.transcribe(audio, beam_size=1, language="en")[0])

    def llm():
        session = f"memory-{next(calls)}"
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        stream = stack.llm.stream_chat(
            messages, max_tokens=24, temperature=0.0, seed=0, session=session
        )
        "".join(stream)
        stack.llm.forget(session)

    def piper():
        # Every reply is a new length, which is what onnxruntime's memory pattern kept a
        # plan for, each.
        call = next(calls)
        for text in (REPLIES[call % 10], REPLIES[(call * 3 + 1) % 10]):
            list(stack.speech.synthesize(text, SpeechContext()))

    def silero():
        import asyncio

        analyzer = SharedSileroVADAnalyzer(session=stack.silero, params=VADParams())
        analyzer.set_sample_rate(16000)
        step = analyzer.num_frames_required() * 2
        data = clip.tobytes()

        async def run():
            for start in range(0, len(data) - step, step):
                await analyzer.analyze_audio(data[start : start + step])

        asyncio.run(run())

    def smart_turn():
        analyzer = SharedSmartTurnAnalyzer(session=stack.turn_end, cpu=stack.cpu)
        analyzer._predict_endpoint(audio[-16000 * 8 :])

    def tone():
        analyze_tone(clip, 16000, "What is the capital of France?")

    def resampler():
        import asyncio

        stream = create_stream_resampler()
        data = clip.tobytes()

        async def run():
            for start in range(0, len(data), 640):
                await stream.resample(data[start : start + 640], 16000, 24000)

        asyncio.run(run())

    def opus():
        from aiortc.codecs import get_decoder, get_encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters
        from av import AudioFrame

        codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
        encoder, decoder = get_encoder(codec), get_decoder(codec)
        pcm = np.repeat(np.resize(clip, 960 * 50 * CLIP_SECS // 2), 2)  # 48 kHz stereo-ish
        for start in range(0, len(pcm) - 1920, 1920):
            frame = AudioFrame.from_ndarray(pcm[start : start + 1920].reshape(1, -1), "s16", "stereo")
            frame.sample_rate, frame.pts = 48000, start // 2
            packets, _ = encoder.encode(frame)
            for packet in packets:
                from aiortc.jitterbuffer import JitterFrame

                decoder.decode(JitterFrame(data=packet, timestamp=start // 2))

    def av_resampler():
        from av import AudioFrame
        from av.audio.resampler import AudioResampler

        resampler = AudioResampler("s16", "mono", 16000)
        stereo = np.repeat(np.resize(clip, 960 * 50 * CLIP_SECS), 2).reshape(1, -1)
        for start in range(0, stereo.shape[1] - 1920, 1920):
            frame = AudioFrame.from_ndarray(stereo[:, start : start + 1920], "s16", "stereo")
            frame.sample_rate = 48000
            resampler.resample(frame)

    def webrtc():
        import asyncio

        asyncio.run(_loopback_call(clip))

    return {
        "whisper": whisper,
        "llm": llm,
        "piper": piper,
        "silero": silero,
        "smart_turn": smart_turn,
        "tone": tone,
        "resampler": resampler,
        "opus": opus,
        "av_resampler": av_resampler,
        "webrtc": webrtc,
    }


async def _loopback_call(clip: np.ndarray) -> None:
    """Two aiortc peers connected over loopback; ``clip`` (16 kHz) sent from one to the
    other as 20 ms frames, then both closed."""
    import asyncio
    import fractions

    from aiortc import MediaStreamTrack, RTCPeerConnection
    from av import AudioFrame

    class Clip(MediaStreamTrack):
        kind = "audio"

        def __init__(self):
            super().__init__()
            self._at = 0

        async def recv(self):
            await asyncio.sleep(0.02)
            samples = np.resize(clip[self._at : self._at + 320], 320).reshape(1, -1)
            frame = AudioFrame.from_ndarray(samples, "s16", "mono")
            frame.sample_rate, frame.pts = 16000, self._at
            frame.time_base = fractions.Fraction(1, 16000)
            self._at += 320
            return frame

    caller, callee = RTCPeerConnection(), RTCPeerConnection()
    heard = asyncio.Event()
    frames = 0

    @callee.on("track")
    def on_track(track):
        async def listen():
            nonlocal frames
            while frames < 50 * CLIP_SECS:
                await track.recv()
                frames += 1
            heard.set()

        asyncio.ensure_future(listen())

    caller.addTrack(Clip())
    await caller.setLocalDescription(await caller.createOffer())
    await callee.setRemoteDescription(caller.localDescription)
    await callee.setLocalDescription(await callee.createAnswer())
    await caller.setRemoteDescription(callee.localDescription)
    await asyncio.wait_for(heard.wait(), 30)
    await caller.close()
    await callee.close()


def measure(work, calls: int) -> dict:
    for _ in range(10):
        work()
    start = rss_mib()
    middle = None
    began = time.perf_counter()
    for i in range(calls):
        work()
        if i == calls // 2 - 1:
            middle = rss_mib()
    end = rss_mib()
    half = calls // 2
    return {
        "kib_per_call_first_half": round((middle - start) * 1024 / half, 1),
        "kib_per_call_second_half": round((end - middle) * 1024 / (calls - half), 1),
        "secs_per_call": round((time.perf_counter() - began) / calls, 3),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--parts", nargs="+", help="only these parts")
    parser.add_argument("--out", default="out/benchmarks/memory_by_part.json")
    args = parser.parse_args()
    from benchmarks.call_latency import load_set

    stack = load_stack(load_config(args.config))
    clip_path = load_set("human", 1, None)[0]
    import soundfile as sf

    clip, rate = sf.read(str(clip_path["path"]), dtype="int16")
    if rate != 16000:
        import soxr

        clip = soxr.resample(clip, rate, 16000)
    clip = np.resize(clip, 16000 * CLIP_SECS).astype(np.int16)
    report = {"config": args.config, "calls": args.calls, "rss_start_mib": round(rss_mib(), 1)}
    for name, work in parts(stack, clip).items():
        if args.parts and name not in args.parts:
            continue
        report[name] = measure(work, args.calls)
        print(name, json.dumps(report[name]), flush=True)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
