"""MisoTTS checkpoints in the release format: a directory with ``config.json`` and
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``), parameter
names as in the reference implementation's state dict.

``config.json`` holds ``backbone_flavor``, ``decoder_flavor`` (a flavor name or an object
of sizes, see tts.miso.flavors), ``text_vocab_size``, ``audio_vocab_size`` and
``audio_num_codebooks``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from tts.miso.flavors import TransformerSizes, resolve_flavor
from tts.miso.model import MisoConfig, MisoModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


# Causal masks the reference registers as (persistent) buffers in setup_caches: a state
# dict saved after it carries them. They are derived, not learned, so they are skipped.
DERIVED_KEYS = frozenset({"backbone_causal_mask", "decoder_causal_mask"})


class CheckpointError(ValueError):
    """The checkpoint is missing, malformed or does not fit the architecture."""


def read_config(directory: Path) -> MisoConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE} (a MisoTTS checkpoint has "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    missing = [k for k in ("backbone_flavor", "decoder_flavor") if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)}")
    try:
        config = MisoConfig(
            backbone=resolve_flavor(raw["backbone_flavor"], "backbone_flavor"),
            decoder=resolve_flavor(raw["decoder_flavor"], "decoder_flavor"),
            text_vocab_size=int(raw.get("text_vocab_size", 128_256)),
            audio_vocab_size=int(raw.get("audio_vocab_size", 2051)),
            audio_num_codebooks=int(raw.get("audio_num_codebooks", 32)),
        )
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if config.audio_num_codebooks < 2:
        raise CheckpointError(f"{path}: audio_num_codebooks must be at least 2")
    return config


def config_json(config: MisoConfig) -> dict:
    return {
        "backbone_flavor": config.backbone.as_json(),
        "decoder_flavor": config.decoder.as_json(),
        "text_vocab_size": config.text_vocab_size,
        "audio_vocab_size": config.audio_vocab_size,
        "audio_num_codebooks": config.audio_num_codebooks,
    }


def _weight_files(directory: Path) -> list[Path]:
    index = directory / WEIGHTS_INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / WEIGHTS_FILE
    if not single.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}")
    return [single]


def _iter_tensors(files: list[Path], device: str | torch.device, dtype: torch.dtype
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors one at a time, already cast, so peak memory stays near the final model's."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    yield name, handle.get_tensor(name).to(device=device, dtype=dtype)
        except SafetensorError as exc:
            raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None


def _resolve_directory(path: str | os.PathLike) -> Path:
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate.parent
    if candidate.is_dir():
        return candidate
    text = str(path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        # A Hugging Face repo id such as "MisoLabs/MisoTTS": fetched (or found in the local
        # cache) only on machines that are online; otherwise a clear message.
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(
                text, allow_patterns=[CONFIG_FILE, "model.safetensors*"]
            ))
        except Exception as exc:  # noqa: BLE001 (offline, gated, missing: all end here)
            raise CheckpointError(
                f"MisoTTS checkpoint {text!r} is not a local directory and could not be "
                f"fetched from the Hugging Face hub ({type(exc).__name__}: {exc}). Download "
                f"it (huggingface-cli download {text}) and pass the directory."
            ) from None
    raise CheckpointError(f"MisoTTS checkpoint not found: {path}")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> MisoModel:
    """A release-format checkpoint as an eval-mode MisoModel on ``device`` in ``dtype``.

    Every parameter must be present with its shape; nothing extra may be there. Call
    ``setup_caches(batch_size)`` on the result before generating.
    """
    directory = _resolve_directory(path)
    config = read_config(directory)
    with torch.device("meta"):
        model = MisoModel(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}

    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for name, tensor in _iter_tensors(_weight_files(directory), device, dtype):
        name = name.removeprefix("module.")
        if name in DERIVED_KEYS:
            continue
        if name not in expected:
            unexpected.append(name)
            continue
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{directory}: {name} has shape {tuple(tensor.shape)}, the config in "
                f"{CONFIG_FILE} needs {expected[name]}"
            )
        state[name] = tensor
    missing = sorted(set(expected) - set(state))
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} key(s): {_preview(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} key(s): {_preview(sorted(unexpected))}")
        raise CheckpointError(
            f"{directory} does not match a MisoTTS model of its {CONFIG_FILE}: "
            + "; ".join(problems)
        )
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False)


def _preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------
# Writing checkpoints (random weights for tests and benchmarks, or converted ones)


def release_parameter_shapes(config: MisoConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the release format with its shape, spelled out from the sizes
    (independently of MisoModel's module tree, so the loader is checked against it)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def transformer(prefix: str, sizes: TransformerSizes) -> None:
        d, hd = sizes.embed_dim, sizes.head_dim
        for i in range(sizes.num_layers):
            p = f"{prefix}.layers.{i}"
            shapes[f"{p}.sa_norm.scale"] = (d,)
            shapes[f"{p}.attn.q_proj.weight"] = (sizes.num_heads * hd, d)
            shapes[f"{p}.attn.k_proj.weight"] = (sizes.num_kv_heads * hd, d)
            shapes[f"{p}.attn.v_proj.weight"] = (sizes.num_kv_heads * hd, d)
            shapes[f"{p}.attn.output_proj.weight"] = (d, sizes.num_heads * hd)
            shapes[f"{p}.mlp_norm.scale"] = (d,)
            shapes[f"{p}.mlp.w1.weight"] = (sizes.intermediate_dim, d)
            shapes[f"{p}.mlp.w2.weight"] = (d, sizes.intermediate_dim)
            shapes[f"{p}.mlp.w3.weight"] = (sizes.intermediate_dim, d)
        shapes[f"{prefix}.norm.scale"] = (d,)

    transformer("backbone", config.backbone)
    transformer("decoder", config.decoder)
    bd, dd = config.backbone.embed_dim, config.decoder.embed_dim
    n, v = config.audio_num_codebooks, config.audio_vocab_size
    shapes["text_embeddings.weight"] = (config.text_vocab_size, bd)
    shapes["audio_embeddings.weight"] = (v * n, bd)
    shapes["projection.weight"] = (dd, bd)
    shapes["codebook0_head.weight"] = (v, bd)
    shapes["audio_head"] = (n - 1, dd, v)
    return shapes


def write_random_checkpoint(directory: str | os.PathLike, config: MisoConfig, seed: int = 0,
                            dtype: torch.dtype = torch.bfloat16) -> Path:
    """A release-format checkpoint of random weights (stored in ``dtype``, bf16 like the
    releases). Norm scales are near 1 and weights small, so activations stay finite and
    every parameter still matters."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in release_parameter_shapes(config).items():
        if name.endswith(".scale"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif "embeddings" in name:
            value = torch.randn(shape, generator=generator)
        else:
            fan_in = shape[-1] if name != "audio_head" else shape[1]
            value = torch.randn(shape, generator=generator) / fan_in ** 0.5
        tensors[name] = value.to(dtype).contiguous()
    save_file(tensors, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(config_json(config), indent=2))
    return directory
