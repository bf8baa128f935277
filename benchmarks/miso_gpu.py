"""MisoTTS for many callers at once: time to first audio, frame cost, RTF, memory, prefix cache.

    python -m benchmarks.miso_gpu [--model miso-8b|csm-1b|tiny] [--batches 1 4 8]
        [--context-secs 30] [--utterance-secs 10] [--out out/benchmarks/miso_gpu.json]

Random weights at the model's real sizes are built directly on the device (no checkpoint
file: seconds on a GPU), with kyutai's Mimi architecture (random) as the codec. On a CUDA GPU
the default is MisoTTS 8B (Llama-3.2-8B-style backbone + 300M depth decoder) in bf16 with
CUDA graphs; without one it is the tests' tiny config in float32 (a smoke test: CI runs it),
and ``--model csm-1b`` gives the CPU figures of a Sesame-CSM-1B-sized model.

Each caller has its own conversation of ``--context-secs`` (user and bot turns, their text
and Mimi codes) in the product's path: MisoGenerator with one session per caller, the
FrameBatcher batching them, the streaming Mimi decoder (1 frame, then 4-frame chunks).
Random weights never emit the end frame, so every utterance runs to ``--utterance-secs``.
For each batch size B, B callers speak at once:

- first sentence (the whole conversation is read: full prefill) and second sentence (the
  conversation is already in the session's cache row; only the first sentence and the new
  text are read): time to first audio, from the text's arrival to the first audio chunk;
- per frame step: ms p50/p95 for the backbone half and the depth-decoder half (CUDA events
  on a GPU), and the codec's ms per frame of audio;
- RTF per stream: wall time from first to last audio chunk over the audio it covers;
- peak memory (GPU allocator on CUDA, resident set on the CPU).

Then, at batch 1, a conversation of five sentences: the fifth's time to first audio with
the session's cache against a one-off reading the same context from scratch.
Prints one JSON summary and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import threading
import time

import torch

from benchmarks.report import write_report
from pipelines.callers.scoring import percentile
from tts.miso import KNOWN_FLAVORS, MisoConfig, MisoModel
from tts.miso.codec import MimiCodec
from tts.miso.frame_step import StepTiming
from tts.miso.generator import FRAME_SECS, MisoGenerator, Segment

MODELS = {
    "miso-8b": MisoConfig(backbone=KNOWN_FLAVORS["llama-8B"], decoder=KNOWN_FLAVORS["llama-300M"]),
    "csm-1b": MisoConfig(backbone=KNOWN_FLAVORS["llama-1B"], decoder=KNOWN_FLAVORS["llama-100M"]),
}
WORDS_SAID = (
    "so yes I think that would work well for us tomorrow if the weather holds and we can meet "
    "at the station around ten then go on to the market together"
)


def tiny_config() -> tuple[MisoConfig, dict]:
    from tests.miso_setup import SMALL_MIMI, TINY_MISO

    return TINY_MISO, SMALL_MIMI


def random_model(config: MisoConfig, device: torch.device, dtype: torch.dtype) -> MisoModel:
    """A MisoModel of random weights made where it will run (nothing on the host)."""
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = MisoModel(config)
        finally:
            torch.set_default_dtype(previous)
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() >= 2:
                    fan_in = param.shape[1] if name == "audio_head" else param.shape[-1]
                    param.normal_(0, fan_in**-0.5, generator=generator)
    return model.eval()


class SyntheticText:
    """Token ids for text without the Llama-3 tokenizer file (about one id per word, as the
    real one gives for plain English): used only where ``llama-models`` is not installed."""

    name = "synthetic"

    def encode_segment(self, text: str, speaker: int) -> list[int]:
        ids = [int.from_bytes(hashlib.sha1(w.encode()).digest()[:4], "big") % 128_000
               for w in f"[{speaker}] {text}".split()]
        return [128_000, *ids, 128_001]


def text_tokenizer():
    """The Llama-3 tokenizer and its name, or the synthetic one where it is missing."""
    try:
        from tts.miso.text import TextTokenizer

        return TextTokenizer.load(), "llama-3"
    except Exception:  # noqa: BLE001 - any reason it is unavailable: fall back, and say so
        return SyntheticText(), SyntheticText.name


def sentence(seed: int, words: int = 12) -> str:
    vocabulary = WORDS_SAID.split()
    picked = (vocabulary[(seed * 7 + i) % len(vocabulary)] for i in range(words))
    return " ".join(picked).capitalize() + "."


def conversation(seed: int, secs: float, num_codebooks: int, turn_secs: float = 5.0):
    """User and bot turns adding up to ``secs`` of audio, with random codes."""
    generator = torch.Generator().manual_seed(seed)
    segments, left, i = [], secs, 0
    while left > 0:
        frames = max(1, round(min(turn_secs, left) / FRAME_SECS))
        codes = torch.randint(0, 2048, (num_codebooks, frames), generator=generator)
        segments.append(Segment(i % 2, sentence(seed + i), torch.zeros(1), codes=codes))
        left -= frames * FRAME_SECS
        i += 1
    return segments


class TimedDecoders:
    """Times every streaming Mimi decode (per frame of audio) on ``codec``."""

    def __init__(self, codec: MimiCodec):
        self.ms_per_frame: list[float] = []
        self._lock = threading.Lock()
        make = codec.streaming_decoder
        cuda = codec.device.type == "cuda"

        def timed_decoder():
            decoder = make()
            decode = decoder.decode

            def timed(codes):
                start = time.perf_counter()
                audio = decode(codes)
                if cuda:
                    torch.cuda.synchronize(codec.device)
                with self._lock:
                    self.ms_per_frame.append((time.perf_counter() - start) * 1000 / codes.shape[1])
                return audio

            decoder.decode = timed
            return decoder

        codec.streaming_decoder = timed_decoder


def speak(generator, text, context, session, secs) -> dict:
    """One utterance: time to first audio, then when each chunk arrived and what it covers."""
    start = time.perf_counter()
    chunks = []
    for chunk in generator.stream(text, 1, context, session=session, max_audio_secs=secs,
                                  first_chunk_frames=1, chunk_frames=4):
        chunks.append((time.perf_counter(), chunk.codes.shape[1], chunk.codes))
    first_at, first_frames = chunks[0][0], chunks[0][1]
    frames = sum(n for _, n, _ in chunks)
    later_secs = (frames - first_frames) * FRAME_SECS
    return {
        "ttfa_ms": (first_at - start) * 1000,
        "frames": frames,
        "rtf": (chunks[-1][0] - first_at) / later_secs if later_secs else None,
        "codes": torch.cat([c for _, _, c in chunks], dim=1),
    }


def together(work) -> list[dict]:
    """Run the callables at once (one thread each, released together)."""
    results: list[dict | None] = [None] * len(work)
    barrier = threading.Barrier(len(work))

    def run(i):
        barrier.wait()
        results[i] = work[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def p50_p95(values) -> dict:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95)}


def run_batch(generator, steps: list[StepTiming], decoders: TimedDecoders, batch: int,
              args, num_codebooks: int) -> dict:
    sessions = [f"b{batch}-{i}" for i in range(batch)]
    contexts = [conversation(100 * batch + i, args.context_secs, num_codebooks)
                for i in range(batch)]
    steps.clear()
    decoders.ms_per_frame.clear()
    first = together([
        lambda i=i: speak(generator, sentence(i), contexts[i], sessions[i], args.utterance_secs)
        for i in range(batch)
    ])
    step_times = [s for s in steps if s.rows >= batch]  # steps with every caller in
    codec_ms = list(decoders.ms_per_frame)
    read_before = generator.frames.positions_read
    # The second sentence: the first one joins the context, as MisoEngine passes it.
    for i, result in enumerate(first):
        contexts[i] = [*contexts[i], Segment(1, sentence(i), torch.zeros(1),
                                             codes=result["codes"])]
    second = together([
        lambda i=i: speak(generator, sentence(50 + i, 8), contexts[i], sessions[i], 0.8)
        for i in range(batch)
    ])
    read_second = generator.frames.positions_read - read_before
    for session in sessions:
        generator.forget(session)
    return {
        "prompt_positions": int(generator.plan(sentence(0), 1, contexts[0][:-1],
                                               args.utterance_secs).tokens.shape[0]),
        "ttfa_full_prefill_ms": p50_p95([r["ttfa_ms"] for r in first]),
        "ttfa_cached_ms": p50_p95([r["ttfa_ms"] for r in second]),
        "positions_read_per_caller_second_sentence": read_second / batch,
        "frame_ms": {
            "backbone": p50_p95([s.backbone_ms for s in step_times]),
            "decoder": p50_p95([s.decoder_ms for s in step_times]),
            "total": p50_p95([s.backbone_ms + s.decoder_ms for s in step_times]),
            "codec_per_frame": p50_p95(codec_ms),
            "steps_measured": len(step_times),
        },
        "rtf_per_stream": {"p50": percentile([r["rtf"] for r in first], 50),
                           "max": max(r["rtf"] for r in first if r["rtf"] is not None)},
        "frames_per_stream": min(r["frames"] for r in first),
    }


def fifth_sentence(generator, args, num_codebooks: int) -> dict:
    """Four sentences in one session, then the fifth with the session's cache and as a
    one-off reading the whole context (the same context)."""
    context = conversation(7, args.context_secs, num_codebooks)
    short = min(args.utterance_secs, 0.8)
    for i in range(4):
        out = speak(generator, sentence(20 + i, 6), context, "talk", short)
        context = [*context, Segment(1, sentence(20 + i, 6), torch.zeros(1), codes=out["codes"])]
    read_before = generator.frames.positions_read
    cached = speak(generator, sentence(30, 6), context, "talk", short)
    read_cached = generator.frames.positions_read - read_before
    generator.forget("talk")
    one_off = speak(generator, sentence(30, 6), context, None, short)
    return {
        "prompt_positions": int(generator.plan(sentence(30, 6), 1, context, short)
                                .tokens.shape[0]),
        "positions_read_with_cache": read_cached,
        "ttfa_cached_ms": round(cached["ttfa_ms"], 1),
        "ttfa_full_prefill_ms": round(one_off["ttfa_ms"], 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--model", choices=[*MODELS, "tiny"], default="miso-8b" if cuda else "tiny")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--context-secs", type=float, default=30.0)
    parser.add_argument("--utterance-secs", type=float, default=10.0)
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="out/benchmarks/miso_gpu.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    began = time.perf_counter()

    if args.model == "tiny":
        config, mimi_overrides = tiny_config()
    else:
        config, mimi_overrides = MODELS[args.model], None
    start = time.perf_counter()
    model = random_model(config, device, dtype)
    codec = MimiCodec.random(mimi_overrides, seed=0, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    build_secs = time.perf_counter() - start
    tokenizer, tokenizer_name = text_tokenizer()
    generator = MisoGenerator(model, tokenizer, codec, speakers=[0, 1],
                              sessions=max(args.batches), cuda_graphs=not args.no_cuda_graphs)
    steps: list[StepTiming] = []
    generator.frames.on_step = steps.append
    decoders = TimedDecoders(codec)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # Warm-up: kernels load, CUDA graphs are captured for the batch sizes used.
    together([lambda i=i: speak(generator, "Hello.", [], f"warm{i}", 0.24)
              for i in range(max(args.batches))])
    for i in range(max(args.batches)):
        generator.forget(f"warm{i}")
    batches = {str(b): run_batch(generator, steps, decoders, b, args,
                                 config.audio_num_codebooks) for b in args.batches}
    fifth = fifth_sentence(generator, args, config.audio_num_codebooks)
    generator.close()

    if device.type == "cuda":
        peak = {"peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20)}
    else:
        peak = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    weights = sum(p.numel() for p in model.parameters())
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "model": args.model,
        "parameters_billions": round(weights / 1e9, 3),
        "dtype": str(dtype).removeprefix("torch."),
        "cuda_graphs": device.type == "cuda" and not args.no_cuda_graphs,
        "text_tokenizer": tokenizer_name,
        "weights_built_secs": round(build_secs, 2),
        "context_secs": args.context_secs,
        "utterance_secs": args.utterance_secs,
        "frame_ms_budget": FRAME_SECS * 1000,
        "batches": batches,
        "fifth_sentence": fifth,
        **peak,
        "wall_secs": round(time.perf_counter() - began, 1),
    }
    write_report(report, args.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
