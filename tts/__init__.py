"""Speech engines behind one interface (tts/base.py), and the registry that names them.

A new engine is a module with a ``SpeechEngine`` and a ``load(config) -> SpeechEngine``,
plus one entry in ``ENGINES``; ``tts.engine`` in a config picks it by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from tts.base import EngineUnavailableError, SpeechEngine


@dataclass(frozen=True)
class EngineEntry:
    """Where an engine's ``load`` lives, and what to install when that module cannot be
    imported (its heavy dependencies are imported only when the engine is chosen)."""

    module: str
    needs: str = ""


ENGINES: dict[str, EngineEntry] = {
    "piper": EngineEntry("tts.piper_voice"),
    "miso": EngineEntry(
        "tts.miso_voice",
        needs="PyTorch and transformers: install torch for your GPU (https://pytorch.org), "
        "then ./setup.sh --miso",
    ),
}


def load_engine(config) -> SpeechEngine:
    """The engine ``config.tts.engine`` names, loaded (``config``: an AgentConfig)."""
    name = config.tts.engine
    entry = ENGINES.get(name)
    if entry is None:
        raise EngineUnavailableError(
            f"unknown tts.engine '{name}' (known: {', '.join(ENGINES)})"
        )
    try:
        module = importlib.import_module(entry.module)
    except ImportError as e:
        raise EngineUnavailableError(
            f"tts.engine '{name}' needs {entry.needs or e.name} ({e})"
        ) from None
    return module.load(config)
