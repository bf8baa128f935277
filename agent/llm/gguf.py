"""Read a GGUF file's header: is it GGUF at all, and how long a context was it trained for.

llama.cpp allocates the whole context when it loads a model, so a wrong ``context_tokens``
(or a file that is not a model) must be caught from the header, before loading: a context
of 10^8 tokens took 12 s and 5.8 GB before failing.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
# Value types of the GGUF key/value section: fixed-size scalars by struct format.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


class NotGGUFError(ValueError):
    pass


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise NotGGUFError("the file ends inside its header")
    return struct.unpack("<" + fmt, data)[0]


def _string(f: BinaryIO) -> str:
    return f.read(_read(f, "Q")).decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int):
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item_kind, count = _read(f, "I"), _read(f, "Q")
        if item_kind in _SCALARS:  # skipped: arrays are token lists, not needed here
            f.seek(count * struct.calcsize("<" + _SCALARS[item_kind]), 1)
        else:
            for _ in range(count):
                _value(f, item_kind)
        return None
    raise NotGGUFError(f"unknown metadata value type {kind}")


def gguf_metadata(path: Path, until=lambda metadata: False) -> dict[str, object]:
    """The scalar and string metadata of a GGUF file (arrays are skipped); reading stops
    early once ``until(metadata)`` holds (the token lists come late and are long)."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise NotGGUFError(f"{path} is not a GGUF model file (it does not start with GGUF)")
        version = _read(f, "I")
        if version < 2:
            raise NotGGUFError(f"{path} is GGUF version {version}; llama.cpp reads 2 and later")
        _tensors, count = _read(f, "Q"), _read(f, "Q")
        metadata = {}
        for _ in range(count):
            key = _string(f)
            metadata[key] = _value(f, _read(f, "I"))
            if until(metadata):
                break
        return metadata


def trained_context(path: Path) -> int | None:
    """The context length the model was trained for (``{architecture}.context_length``)."""

    def key(metadata):
        return f"{metadata.get('general.architecture')}.context_length"

    metadata = gguf_metadata(path, until=lambda m: key(m) in m)
    value = metadata.get(key(metadata))
    return int(value) if isinstance(value, int) else None
