"""Which llama.cpp build the engine runs, and getting the faster one.

Two builds of the same llama.cpp C API (agent/llm/llama_lib.py describes both):

- ``xllamacpp``: the library in the xllamacpp wheel, installed with the agent. Its CPU code
  is built for AVX2, so it runs everywhere.
- ``node-llama-cpp``: the prebuilt Linux x64 libraries of node-llama-cpp (MIT), fetched
  from the npm registry by ``python -m agent.prepare`` (setup.sh). ggml picks the CPU
  backend built for this CPU when it loads (AVX-512, VNNI, AMX): on the 2-core Sapphire
  Rapids machine of the README it read a turn's words 1.5x as fast and wrote tokens
  8 % faster (``benchmarks/llm_runtime.py``). Linux on x86-64 only.

``auto`` (the default) is node-llama-cpp's when it has been fetched, else the wheel's.
"""

from __future__ import annotations

import base64
import hashlib
import io
import platform
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from agent.models import cache_dir

BUILDS = ("auto", "xllamacpp", "node-llama-cpp")

NPM_VERSION = "3.22.1"
NPM_TARBALL = f"https://registry.npmjs.org/@node-llama-cpp/linux-x64/-/linux-x64-{NPM_VERSION}.tgz"
# The registry's own "integrity" of that tarball (a release is never changed in place).
NPM_SHA512 = (
    "5uCCDNqWCNfaAm8aR/Uzxbo4HBpKgNF91kCHPepKhgMgV2OAmatoefbOlMihsqCiH2Od35E/eUHQCFbfRBJuOg=="
)
_NPM_LIBRARY = "libllama.v0.5.0.so"
_NPM_GGML = "libggml.v0.5.0.so"  # its ggml_backend_load_all_from_path loads the CPU backends


class LlamaBuildError(RuntimeError):
    """The llama.cpp build asked for is not on this machine, or not for it."""


@dataclass(frozen=True)
class Build:
    name: str
    library: Path  # libllama
    # node-llama-cpp's: ggml's library and the folder of its CPU backends, loaded first.
    ggml: Path | None = None
    # The llama_context_params field xllamacpp's llama.cpp has and node-llama-cpp's not.
    moe_cache_size: bool = True


def npm_folder() -> Path:
    return cache_dir() / "llama-builds" / f"node-llama-cpp-{NPM_VERSION}"


def npm_supported() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def choose(name: str = "auto") -> Build:
    """The build ``name`` stands for (one of BUILDS)."""
    if name not in BUILDS:
        raise LlamaBuildError(f"unknown llama.cpp build '{name}' (one of {', '.join(BUILDS)})")
    folder = npm_folder()
    fetched = (folder / _NPM_LIBRARY).is_file()
    if name == "node-llama-cpp" and not fetched:
        raise LlamaBuildError(
            f"llm.runtime node-llama-cpp: {folder} holds no build; fetch it with "
            "`python -m agent.prepare` (or use llm.runtime: xllamacpp)"
        )
    if name == "node-llama-cpp" or (name == "auto" and fetched and npm_supported()):
        return Build("node-llama-cpp", folder / _NPM_LIBRARY, folder / _NPM_GGML, False)
    try:
        import xllamacpp
    except ImportError:
        raise LlamaBuildError("the LLM runtime is missing: pip install the agent again") from None
    return Build("xllamacpp", Path(xllamacpp.__file__).parent / "xllamacpp.abi3.so")


def fetch_npm_build(url: str = NPM_TARBALL, sha512: str = NPM_SHA512) -> Path:
    """node-llama-cpp's libraries in npm_folder(), downloaded and checked once; the folder
    appears whole or not at all."""
    folder = npm_folder()
    if (folder / _NPM_LIBRARY).is_file():
        return folder
    if not npm_supported():
        raise LlamaBuildError(
            f"node-llama-cpp's build is for Linux on x86-64, not {sys.platform} {platform.machine()}"
        )
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != sha512:
        raise LlamaBuildError(
            f"{url} is not the release this agent was written for (SHA-512 differs)"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".fetching-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                wanted = member.name.startswith("package/bins/linux-x64/") and name.startswith(
                    ("libggml", "libllama.")
                )
                if (wanted or member.name == "package/LICENSE") and member.isfile():
                    (staging / name).write_bytes(archive.extractfile(member).read())
        if not (staging / _NPM_LIBRARY).is_file():
            raise LlamaBuildError(f"{url} holds no {_NPM_LIBRARY}")
        staging.chmod(0o755)  # mkdtemp makes it the user's alone
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / _NPM_LIBRARY).is_file():  # not another fetch that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
