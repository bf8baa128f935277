"""kyutai's own Mimi weights (moshi format) as a transformers ``MimiModel``.

The reference MisoTTS / Sesame CSM code runs Mimi from kyutai's ``moshi`` package, loading
``tokenizer-e351c8d8-checkpoint125.safetensors``. That file holds moshi's module names; this
renames them to transformers' Mimi, so a user with only that file can run our codec on it.

Beyond renaming, one change: moshi's attention packs q, k and v into one ``in_proj`` and its
rotary embedding rotates *interleaved* pairs of each head's dimensions (0 with 1, 2 with 3, ...),
whereas transformers' Mimi rotates the two *halves* (i with i + head_dim/2) with the same
frequencies. Reordering each head's q and k rows (even rows first, then odd) turns one into the
other; attention scores, and so everything after them, are unchanged.

What a state dict cannot tell (heads, the attention window, the RoPE base) comes from the
config, ``MimiConfig()`` by default: kyutai's published Mimi (8 heads, a 250-step window,
RoPE base 10000), which is also what moshi's ``get_mimi`` builds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import MimiConfig, MimiModel

__all__ = ["MoshiCheckpointError", "convert_moshi_state_dict", "load_moshi_mimi"]


class MoshiCheckpointError(ValueError):
    """The tensors are not a moshi-format Mimi matching the config."""


_QUANTIZER = {"first": "semantic", "rest": "acoustic"}
# Current moshi names first; the older ones are those moshi's own loader still accepts.
_CODEBOOK_BUFFERS = {
    "_initialized": "initialized",
    "inited": "initialized",
    "cluster_usage": "cluster_usage",
    "cluster_size": "cluster_usage",
    "embedding_sum": "embed_sum",
    "embed_sum": "embed_sum",
    "embed_avg": "embed_sum",
}
_TRANSFORMER_LAYER = {
    "self_attn.out_projs.0.weight": "self_attn.o_proj.weight",
    "self_attn.out_proj.weight": "self_attn.o_proj.weight",
    "norm1.weight": "input_layernorm.weight",
    "norm1.bias": "input_layernorm.bias",
    "norm2.weight": "post_attention_layernorm.weight",
    "norm2.bias": "post_attention_layernorm.bias",
    "linear1.weight": "mlp.fc1.weight",
    "linear2.weight": "mlp.fc2.weight",
    "layer_scale_1.scale": "self_attn_layer_scale.scale",
    "layer_scale_2.scale": "mlp_layer_scale.scale",
}
# The packed q/k/v projection: moshi's current name, then the older ones.
_IN_PROJ = ("self_attn.in_projs.0.weight", "self_attn.in_proj_weight", "self_attn.in_proj.weight")

_SEANET = re.compile(
    r"(encoder|decoder)\.model\.(\d+)\.(?:(block\.\d+|shortcut)\.)?"
    r"(?:conv\.conv|convtr\.convtr)\.(weight|bias)"
)
_TRANSFORMER = re.compile(r"(encoder|decoder)_transformer\.transformer\.layers\.(\d+)\.(.+)")
_PROJECTION = re.compile(r"quantizer\.rvq_(first|rest)\.(input_proj|output_proj)\.weight")
_CODEBOOK = re.compile(r"quantizer\.rvq_(first|rest)\.vq\.layers\.(\d+)\._codebook\.(\w+)")
_RESAMPLE = {
    "downsample.conv.conv.conv.weight": "encoder.downsample.conv.weight",
    "upsample.convtr.convtr.convtr.weight": "decoder.upsample.conv.weight",
}


def load_moshi_mimi(
    source: str | Path | Mapping[str, torch.Tensor],
    config: MimiConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> MimiModel:
    """A transformers ``MimiModel`` holding a moshi-format Mimi: a ``.safetensors`` file such
    as kyutai's ``tokenizer-e351c8d8-checkpoint125.safetensors``, or its state dict.

    Raises MoshiCheckpointError naming the tensors that are missing, unexpected or of the
    wrong shape for ``config`` (kyutai's Mimi, ``MimiConfig()``, by default).
    """
    if isinstance(source, Mapping):
        state = source
    else:
        state = _read_safetensors(Path(source).expanduser())
    config = config if config is not None else MimiConfig()
    model = MimiModel(config)
    model.load_state_dict(convert_moshi_state_dict(state, config, model), strict=True)
    for module in model.quantizer.modules():
        if hasattr(module, "_embed"):
            module._embed = None  # the centroids are cached lazily from embed_sum
    return model.to(dtype=dtype).eval()


def convert_moshi_state_dict(
    state: Mapping[str, torch.Tensor],
    config: MimiConfig | None = None,
    model: MimiModel | None = None,
) -> dict[str, torch.Tensor]:
    """moshi's Mimi tensors under transformers' ``MimiModel`` names, q/k rows reordered for
    its rotary embedding, checked against ``model`` (built from ``config`` when not given)."""
    config = config if config is not None else MimiConfig()
    expected = (model if model is not None else MimiModel(config)).state_dict()
    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unexpected = []
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise MoshiCheckpointError(f"{key!r} is a {type(tensor).__name__}, not a tensor")
        targets = _convert_one(key, tensor, config)
        if targets is None:
            unexpected.append(key)
            continue
        for target, value in targets.items():
            if target in converted:
                raise MoshiCheckpointError(
                    f"{key!r} and {sources[target]!r} both give {target!r}: "
                    "the checkpoint holds the same tensor under two names"
                )
            converted[target], sources[target] = value, key
    unexpected += [sources[name] for name in converted if name not in expected]
    if unexpected:
        hint = ""
        if any(re.search(r"\.[qkvo]_proj\.|_residual_vector_quantizer\.", k) for k in unexpected):
            hint = (
                " (these are transformers' names: load a transformers-format Mimi from its "
                "directory, config.json and model.safetensors, instead)"
            )
        elif any(re.search(r"weight_[gv]$|parametrizations", key) for key in unexpected):
            hint = (
                " (weight-normalized training tensors: an inference checkpoint, like kyutai's,"
                " has them folded into plain weights)"
            )
        raise MoshiCheckpointError(
            f"not a moshi-format Mimi for this config: {len(unexpected)} unexpected tensor(s), "
            f"e.g. {_some(unexpected)}{hint}"
        )
    missing = [name for name in expected if name not in converted]
    if missing:
        raise MoshiCheckpointError(
            f"incomplete moshi-format Mimi: {len(missing)} tensor(s) that this config needs "
            f"are missing (named as in transformers' MimiModel), e.g. {_some(missing)}"
        )
    for name, tensor in converted.items():
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want:
            raise MoshiCheckpointError(
                f"{sources[name]!r} has shape {tuple(state[sources[name]].shape)}, which does "
                f"not fit this config ({name!r} must be {want}); pass the MimiConfig the "
                "checkpoint was made with"
            )
        if not tensor.is_floating_point():
            raise MoshiCheckpointError(
                f"{sources[name]!r} has dtype {tensor.dtype}; Mimi's tensors are floats"
            )
        converted[name] = tensor.to(expected[name].dtype)
    return converted


def _convert_one(
    key: str, tensor: torch.Tensor, config: MimiConfig
) -> dict[str, torch.Tensor] | None:
    """The transformers tensor(s) for one moshi tensor, or None when the name is not Mimi's."""
    if key in _RESAMPLE:
        return {_RESAMPLE[key]: tensor}
    if match := _SEANET.fullmatch(key):
        half, index, inner, kind = match.groups()
        inner = f"{inner}." if inner else ""
        return {f"{half}.{half}_seanet.layers.{index}.{inner}conv.{kind}": tensor}
    if match := _TRANSFORMER.fullmatch(key):
        half, index, rest = match.groups()
        prefix = f"{half}.{half}_transformer.layers.{index}."
        if rest in _IN_PROJ:
            return {prefix + name: value for name, value in _split_qkv(key, tensor, config)}
        if rest in _TRANSFORMER_LAYER:
            return {prefix + _TRANSFORMER_LAYER[rest]: tensor}
        return None
    if match := _PROJECTION.fullmatch(key):
        which, projection = match.groups()
        return {
            f"quantizer.{_QUANTIZER[which]}_residual_vector_quantizer.{projection}.weight": tensor
        }
    if match := _CODEBOOK.fullmatch(key):
        which, index, buffer = match.groups()
        if buffer not in _CODEBOOK_BUFFERS:
            return None
        rvq = f"quantizer.{_QUANTIZER[which]}_residual_vector_quantizer"
        return {f"{rvq}.layers.{index}.codebook.{_CODEBOOK_BUFFERS[buffer]}": tensor}
    return None


def _split_qkv(key: str, packed: torch.Tensor, config: MimiConfig):
    """moshi's packed [q; k; v] rows as transformers' q_proj, k_proj, v_proj."""
    head_dim = config.head_dim
    q_rows = config.num_attention_heads * head_dim
    kv_rows = config.num_key_value_heads * head_dim
    want = (q_rows + 2 * kv_rows, config.hidden_size)
    if tuple(packed.shape) != want:
        raise MoshiCheckpointError(
            f"{key!r} has shape {tuple(packed.shape)}; this config "
            f"({config.num_attention_heads} heads, {config.num_key_value_heads} key/value heads "
            f"of {head_dim}, hidden size {config.hidden_size}) needs {want}; pass the "
            "MimiConfig the checkpoint was made with"
        )
    q, k, v = packed.split([q_rows, kv_rows, kv_rows])
    return [
        ("self_attn.q_proj.weight", _interleaved_to_halves(q, config.num_attention_heads)),
        ("self_attn.k_proj.weight", _interleaved_to_halves(k, config.num_key_value_heads)),
        ("self_attn.v_proj.weight", v),
    ]


def _interleaved_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's output rows from RoPE pairs (2i, 2i+1) to pairs (i, i + d/2)."""
    rows, columns = weight.shape
    head_dim = rows // heads
    pairs = weight.reshape(heads, head_dim // 2, 2, columns)
    return pairs.transpose(1, 2).reshape(rows, columns).contiguous()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"moshi-format Mimi checkpoint {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise MoshiCheckpointError(
            f"{str(path)!r} is not a readable .safetensors file: {exc}"
        ) from exc


def _some(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
