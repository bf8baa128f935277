"""Sizes of the two Llama-3.2-style transformers in a MisoTTS / Sesame-CSM checkpoint.

A release's config.json names each transformer by flavor (``backbone_flavor``,
``decoder_flavor``). The named flavors are the ones the public releases use; a flavor may
also be spelled out as an object of sizes, which is how small (test) checkpoints describe
themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TransformerSizes:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int = 2048
    rope_base: float = 500_000.0
    # Llama-3 frequency scaling factor (torchtune's Llama3ScaledRoPE), not a context multiple.
    scale_factor: float = 32.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "num_kv_heads", "embed_dim", "intermediate_dim",
                     "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"flavor size {name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if (self.embed_dim // self.num_heads) % 2:
            raise ValueError("head dimension must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


KNOWN_FLAVORS: dict[str, TransformerSizes] = {
    # MisoTTS 8B: backbone and depth decoder.
    "llama-8B": TransformerSizes(num_layers=32, num_heads=32, num_kv_heads=8, embed_dim=4096,
                                 intermediate_dim=14_336),
    "llama-300M": TransformerSizes(num_layers=8, num_heads=24, num_kv_heads=6, embed_dim=1536,
                                   intermediate_dim=6912),
    # Sesame CSM-1B, same checkpoint format.
    "llama-1B": TransformerSizes(num_layers=16, num_heads=32, num_kv_heads=8, embed_dim=2048,
                                 intermediate_dim=8192),
    "llama-100M": TransformerSizes(num_layers=4, num_heads=8, num_kv_heads=2, embed_dim=1024,
                                   intermediate_dim=8192),
}

_SIZE_KEYS = {f.name for f in fields(TransformerSizes)}


def resolve_flavor(flavor: str | dict[str, Any], field_name: str) -> TransformerSizes:
    """A flavor name or an object of sizes, as found in config.json under ``field_name``."""
    if isinstance(flavor, str):
        if flavor not in KNOWN_FLAVORS:
            raise ValueError(
                f"{field_name}: unknown flavor {flavor!r}; known: {', '.join(KNOWN_FLAVORS)}, "
                "or an object of sizes"
            )
        return KNOWN_FLAVORS[flavor]
    if isinstance(flavor, dict):
        unknown = set(flavor) - _SIZE_KEYS
        if unknown:
            raise ValueError(f"{field_name}: unknown size keys {sorted(unknown)}")
        try:
            return TransformerSizes(**flavor)
        except TypeError as exc:
            raise ValueError(f"{field_name}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{field_name}: {exc}") from None
    raise ValueError(f"{field_name} must be a flavor name or an object, got {flavor!r}")
