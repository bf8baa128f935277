"""MisoTTS generator speed on this machine, with a random-weight CSM-1B-sized checkpoint.

    python -m benchmarks.miso_streaming [--secs 5] [--dtype float32] [--threads 2]
        [--num-codebooks 32] [--compile-decoder] [--out out/benchmarks/miso_streaming.json]

The checkpoint (Llama-3.2 1B backbone + 100M depth decoder, 32 x 2051 audio vocabulary,
the release format) is written once to ~/.cache/voice-agent/bench/ with random weights, and
the Mimi codec is the full kyutai/mimi architecture with random weights. Random weights
never emit the end-of-speech frame, so every run makes exactly ``--secs`` of audio.

Reports, in one run and the same process:
- time to the first audio chunk, streaming (1 frame then 4-frame chunks), against the
  non-streaming path (generate every frame, then decode once): the ratio;
- per-frame time (p50/p95) and how it splits between backbone, depth decoder and Mimi;
- peak resident memory (which includes the checkpoint file's pages while it is read),
  resident memory after loading and after generating, and the weights' size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.miso_gpu import TimedDecoders
from benchmarks.report import write_report
from pipelines.callers.scoring import percentile
from tts.miso import KNOWN_FLAVORS, MisoConfig, load_model, write_random_checkpoint
from tts.miso.codec import MimiCodec
from tts.miso.generator import MisoGenerator, Segment
from tts.miso.text import TextTokenizer

CSM_1B = MisoConfig(backbone=KNOWN_FLAVORS["llama-1B"], decoder=KNOWN_FLAVORS["llama-100M"])
CACHE = Path(os.environ.get("VOICE_AGENT_CACHE", "~/.cache/voice-agent")).expanduser()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class StageClock:
    """Time per frame in each stage: the frame batcher's timing of each step's backbone and
    depth-decoder halves, and every Mimi decode."""

    def __init__(self, generator: MisoGenerator, codec: MimiCodec):
        self.steps: list = []
        generator.frames.on_step = self.steps.append
        self.decoders = TimedDecoders(codec)

    def summary(self) -> dict:
        stages = {
            "backbone": [s.backbone_ms for s in self.steps],
            "decoder": [s.decoder_ms for s in self.steps],
            "mimi": self.decoders.ms_per_frame,
        }
        return {
            stage: {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "n": len(ms)}
            for stage, ms in stages.items()
        }


def user_turn(codec) -> Segment:
    """A few seconds of speech-like audio (a sweep with a syllable envelope) as the user."""
    rate = codec.sample_rate
    t = np.arange(int(3.2 * rate)) / rate
    audio = 0.3 * np.sin(2 * np.pi * (150 + 40 * np.sin(2 * np.pi * 0.5 * t)) * t)
    audio *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return Segment(
        0,
        "Can you tell me what the weather will be like tomorrow?",
        torch.from_numpy(audio.astype(np.float32)),
        rate,
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--secs", type=float, default=5.0, help="audio to generate")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--num-codebooks", type=int, default=32)
    parser.add_argument("--compile-decoder", action="store_true")
    parser.add_argument("--out", default="out/benchmarks/miso_streaming.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    checkpoint = CACHE / "bench" / "csm-1b-random"
    if not (checkpoint / "model.safetensors").exists():
        print(f"writing a random CSM-1B-sized checkpoint to {checkpoint} ...")
        write_random_checkpoint(checkpoint, CSM_1B, seed=0)
    rss_before = peak_rss_mib()
    start = time.perf_counter()
    model = load_model(checkpoint, device="cpu", dtype=dtype)
    load_secs = time.perf_counter() - start
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    # The peak includes the checkpoint file's pages, mapped while loading; this does not.
    rss_after_load = current_rss_mib()
    if args.compile_decoder:
        model.compile_decoder_step()
    codec = MimiCodec.random(seed=0)
    generator = MisoGenerator(model, TextTokenizer.load(), codec, speakers=[0, 1])
    context = [user_turn(codec)]
    text = "Tomorrow will be sunny with a light breeze in the afternoon."
    options = {
        "max_audio_secs": args.secs,
        "temperature": 0.9,
        "topk": 50,
        "seed": 0,
        "num_codebooks": args.num_codebooks,
    }

    # Warm-up (and compilation, if asked): allocations and kernels before timing.
    generator.generate("Hello.", 1, context, **{**options, "max_audio_secs": 0.24})

    start = time.perf_counter()
    whole = generator.generate(text, 1, context, **options)
    one_shot_secs = time.perf_counter() - start

    clock = StageClock(generator, codec)
    frame_times = []
    start = time.perf_counter()
    last = start
    first_chunk_secs = None
    frames = 0
    for chunk in generator.stream(
        text, 1, context, first_chunk_frames=1, chunk_frames=4, **options
    ):
        now = time.perf_counter()
        if first_chunk_secs is None:
            first_chunk_secs = now - start
        n = chunk.codes.shape[1]
        frame_times += [(now - last) / n] * n
        frames += n
        last = now
    stream_secs = time.perf_counter() - start
    assert frames == whole.codes.shape[1], "streamed and one-shot runs made different lengths"

    ms = np.array(frame_times) * 1000
    report = {
        "checkpoint": "random CSM-1B size (llama-1B backbone + llama-100M decoder)",
        "dtype": args.dtype,
        "threads": args.threads,
        "num_codebooks": args.num_codebooks,
        "compile_decoder": args.compile_decoder,
        "context_positions": int(generator.plan(text, 1, context, args.secs).tokens.shape[0]),
        "audio_secs": round(frames * 0.08, 2),
        "frames": frames,
        "load_secs": round(load_secs, 1),
        "time_to_first_audio": {
            "streaming_secs": round(first_chunk_secs, 3),
            "non_streaming_secs": round(one_shot_secs, 3),
            "ratio_streaming_over_non_streaming": round(first_chunk_secs / one_shot_secs, 4),
        },
        "streaming_total_secs": round(stream_secs, 2),
        "real_time_factor": round(stream_secs / (frames * 0.08), 2),
        "per_frame_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p95": round(float(np.percentile(ms, 95)), 1),
        },
        "per_frame_stage_ms": clock.summary(),
        "weights_mib": round(weights_mib),
        "peak_rss_mib": round(peak_rss_mib()),
        "rss_after_load_mib": round(rss_after_load),
        "rss_after_generation_mib": round(current_rss_mib()),
        "rss_before_load_mib": round(rss_before),
    }
    write_report(report, args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
