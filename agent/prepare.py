"""Every model a config names, ready on this machine (setup.sh runs it for the default)."""

from __future__ import annotations

import sys
from pathlib import Path

from agent.config import ConfigError, load_config
from agent.models import ModelNotFoundError, resolve_model


def resolve_config_models(config) -> dict[str, Path]:
    """Every model an AgentConfig names, resolved (assembled from package parts, or
    fetched from the hub when online): its role -> local path."""
    refs = {"asr": config.asr.model, "llm": config.llm.model}
    if config.tts.piper is not None:
        refs["tts"] = config.tts.piper.model
    return {role: resolve_model(ref, role) for role, ref in refs.items() if ref is not None}


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.prepare [CONFIG]``: get every model of a config (default: the
    default config) onto this machine, as setup.sh does; one line per model."""
    args = sys.argv[1:] if argv is None else argv
    try:
        config = load_config(args[0] if args else "default")
        paths = resolve_config_models(config)
    except (ConfigError, ModelNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for role, path in paths.items():
        print(f"{role}: {path}")
    return _fetch_llama_build(config)


def _fetch_llama_build(config) -> int:
    """node-llama-cpp's llama.cpp, built for this CPU, where the config may run it
    (agent/llm/llama_build.py); with ``auto``, a failure leaves the wheel's build to run."""
    from agent.llm.llama_build import LlamaBuildError, fetch_npm_build, npm_supported

    runtime = config.llm.runtime
    if config.llm.backend != "llama-cpp" or runtime == "xllamacpp":
        return 0
    if runtime == "auto" and not npm_supported():
        print("llm runtime: xllamacpp (node-llama-cpp's build is for Linux on x86-64)")
        return 0
    try:
        print(f"llm runtime: node-llama-cpp, {fetch_npm_build()}")
    except (LlamaBuildError, OSError) as e:
        if runtime == "node-llama-cpp":
            print(f"error: llm.runtime node-llama-cpp: {e}", file=sys.stderr)
            return 1
        print(f"llm runtime: xllamacpp (node-llama-cpp's build could not be fetched: {e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
