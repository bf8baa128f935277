"""Turn-taking processors, and the registry of turn-end policies.

A turn-end policy decides when the user has finished: a module with ``load()`` (what
every session shares, loaded once per process: a model, or None) and
``stop_strategies(config, shared, cpu)`` (one session's Pipecat user-turn stop
strategies), plus one entry in ``TURN_END_POLICIES``; ``turn.end_detection`` in a config
picks it by name.
"""

from __future__ import annotations

from types import ModuleType

from agent.config import registered

TURN_END_POLICIES: dict[str, str] = {
    "smart-turn": "pipelines.turns.turn_end",
    "silence": "pipelines.turns.silence_end",
}


def turn_end_policy(name: str) -> ModuleType:
    """The module of the policy ``turn.end_detection`` names."""
    return registered(TURN_END_POLICIES, "turn.end_detection", name)
