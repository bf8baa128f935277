"""The simplest turn end: the turn is over after ``turn.silence_timeout_secs`` of silence."""

from __future__ import annotations

from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy


def load() -> None:
    return None


def stop_strategies(config, _shared, _cpu) -> list:
    return [SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=config.turn.silence_timeout_secs)]
