"""kyutai's own Mimi (the ``moshi`` package) on fixed inputs: the reference our codec must match.

Runs in the side venv that ``./setup.sh --test`` makes (``.venv-moshi``: moshi cannot share the
agent's venv), never in the agent's own; it imports nothing from this repository.
tests/test_miso_moshi_parity.py runs it and compares.

    .venv-moshi/bin/python tests/moshi_reference_mimi.py --seed 0 --config full --out-dir DIR

It builds moshi's Mimi with random weights (``get_mimi(None, ...)``: kyutai's architecture, or
``small``, tests/miso_setup.py's SMALL_MIMI in moshi's terms), gives the parts that moshi leaves
at a trivial value random ones (the codebooks, which it leaves at zero; the layer scales and
layer norms), and writes two .safetensors files into the output directory:

``mimi.safetensors``: the model's state dict, in the format moshi loads kyutai's
``tokenizer-e351c8d8-checkpoint125.safetensors`` from (with moshi's current names), and
``reference.safetensors``:

* ``wave_partial`` / ``wave_whole``: test waveforms, the first with a partial last frame;
* ``codes_partial`` / ``codes_whole``: ``mimi.encode`` of each (32 codebooks), and
  ``codes_partial_k8``: the same with the model set to 8 codebooks;
* ``decode_codes``: random codes (32 x frames), and ``decode_oneshot``: ``mimi.decode`` of them;
  ``decode_k8``: ``mimi.decode`` of their first 8 codebooks;
* ``stream_1``: the streaming decode (``with mimi.streaming(1)``) one frame at a time, and
  ``stream_chunks``: in the chunks of the metadata's ``chunks``.

The metadata also records the versions, the seed and the config.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import moshi
import torch
from moshi.models import loaders
from safetensors.torch import save_file

FRAME = 1920  # samples per frame at 24 kHz


def small_config() -> dict:
    """tests/miso_setup.py's SMALL_MIMI as a moshi ``mimi_config``: a 3-frame (6-step)
    attention window, so a short test runs well past it."""
    config = copy.deepcopy(loaders._mimi_config)
    config["seanet"].update(dimension=64, n_filters=8)
    config["quantizer"].update(dimension=32, bins=256, input_dimension=64, output_dimension=64)
    config["transformer"].update(
        d_model=64,
        num_heads=4,
        num_layers=2,
        dim_feedforward=128,
        context=6,
        input_dimension=64,
        output_dimensions=[64],
    )
    return config


CONFIGS = {
    # (moshi config, frames to decode, chunks for the chunked streaming decode)
    "full": (None, 20, [3, 1, 5, 2, 7, 2]),
    "small": (small_config(), 24, [5, 1, 2, 9, 3, 4]),
}


def waveform(samples: int, generator: torch.Generator) -> torch.Tensor:
    """A speech-like test signal in [-1, 1]: a gliding harmonic tone, an envelope, noise."""
    t = torch.arange(samples, dtype=torch.float64) / 24000
    pitch = 2 * math.pi * (140 * t + 60 * t**2)
    tone = sum(torch.sin(k * pitch) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t) ** 2
    noise = torch.randn(samples, generator=generator, dtype=torch.float64)
    return (0.3 * envelope * tone + 0.02 * noise).float()


def randomize_transformers(mimi, generator: torch.Generator) -> None:
    """Random layer scales (moshi's init: 0.01) and layer norms (1 and 0), so the transformer
    layers' part of the output is large and a swapped norm or scale would show."""
    with torch.no_grad():
        for name, parameter in mimi.named_parameters():
            if name.endswith(("layer_scale_1.scale", "layer_scale_2.scale")):
                parameter.copy_(0.8 + 0.2 * torch.randn(parameter.shape, generator=generator))
            elif ".norm1." in name or ".norm2." in name:
                center = 1.0 if name.endswith("weight") else 0.0
                parameter.copy_(center + 0.2 * torch.randn(parameter.shape, generator=generator))


def randomize_codebooks(mimi, latents: torch.Tensor, generator: torch.Generator) -> None:
    """Random codebooks, which moshi leaves at zero (everything would encode to code 0).

    The centroids are drawn at the scale of the projected latents of the test signal, so the
    codes vary from frame to frame; each codebook's ``cluster_usage`` is random, so a centroid
    (embedding_sum / cluster_usage) depends on both buffers.
    """
    with torch.no_grad():
        for rvq in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
            scale = float(rvq.input_proj(latents).std())
            for layer in rvq.vq.layers:
                codebook = layer._codebook
                shape = codebook.embedding_sum.shape
                usage = 0.5 + 1.5 * torch.rand(shape[0], generator=generator)
                centroids = scale * torch.randn(shape, generator=generator)
                codebook.cluster_usage.copy_(usage)
                codebook.embedding_sum.copy_(centroids * usage[:, None])
                codebook._embedding = None  # drop the cached centroids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full")
    parser.add_argument("--out-dir", required=True, help="where to write the two files")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    mimi_config, frames, chunks = CONFIGS[args.config]
    torch.manual_seed(args.seed)  # get_mimi draws its random weights from the global RNG
    generator = torch.Generator().manual_seed(args.seed)
    mimi = loaders.get_mimi(None, mimi_config=mimi_config, device="cpu", num_codebooks=32)
    mimi.eval()

    wave_partial = waveform(12 * FRAME + 700, generator)  # 12 frames and a partial 13th
    wave_whole = waveform(9 * FRAME, generator)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        randomize_transformers(mimi, generator)
        latents = mimi._encode_to_unquantized_latent(wave_partial[None, None])
        randomize_codebooks(mimi, latents, generator)
        for name, wave in (("partial", wave_partial), ("whole", wave_whole)):
            out[f"wave_{name}"] = wave
            out[f"codes_{name}"] = mimi.encode(wave[None, None])[0]
        mimi.set_num_codebooks(8)
        out["codes_partial_k8"] = mimi.encode(wave_partial[None, None])[0]
        mimi.set_num_codebooks(32)

        codes = torch.randint(0, mimi.cardinality, (1, 32, frames), generator=generator)
        out["decode_codes"] = codes[0]
        out["decode_oneshot"] = mimi.decode(codes)[0, 0]
        out["decode_k8"] = mimi.decode(codes[:, :8])[0, 0]
        for name, sizes in (("stream_1", [1] * frames), ("stream_chunks", chunks)):
            assert sum(sizes) == frames
            pieces, start = [], 0
            with mimi.streaming(batch_size=1):
                for size in sizes:
                    pieces.append(mimi.decode(codes[:, :, start : start + size])[0, 0])
                    start += size
            out[name] = torch.cat(pieces)

    def contiguous(tensors):
        return {name: tensor.detach().clone().contiguous() for name, tensor in tensors.items()}

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(contiguous(mimi.state_dict()), out_dir / "mimi.safetensors")
    metadata = {
        "moshi": moshi.__version__,
        "torch": torch.__version__,
        "seed": str(args.seed),
        "config": args.config,
        "chunks": json.dumps(chunks),
        "seconds": f"{time.perf_counter() - started:.2f}",
    }
    save_file(contiguous(out), out_dir / "reference.safetensors", metadata=metadata)
    print(json.dumps(metadata), file=sys.stderr)


if __name__ == "__main__":
    main()
