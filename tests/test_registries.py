"""A new part is one module and one registry entry, and a name no registry knows is refused
before any model loads. The speech engine and turn-end policy added here are this module's
own, made as modules and registered for the test only."""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy

import tts
from agent.config import ConfigError, load_config, parse_config
from pipelines import turns
from pipelines.local.file_mode import FileTurn, run_files
from pipelines.serve.telephony import check_phone_providers
from pipelines.stack import load_stack
from tests.conftest import wer
from tts.base import SpeechEngine


class BeepEngine(SpeechEngine):
    """Says every sentence as 0.2 s of a 440 Hz tone, and remembers what it was given."""

    sample_rate = 16000

    def __init__(self):
        self.spoken: list[tuple[str, int]] = []  # text, user utterances heard

    def synthesize(self, text, context):
        heard = sum(1 for u in context.conversation if u.speaker == "user")
        self.spoken.append((text, heard))
        t = np.arange(self.sample_rate // 5) / self.sample_rate
        yield (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


def _module(monkeypatch, name: str, **contents) -> None:
    """A module ``name`` holding ``contents``, importable for this test only."""
    module = types.ModuleType(name)
    module.__dict__.update(contents)
    monkeypatch.setitem(sys.modules, name, module)


async def test_an_engine_and_a_turn_end_policy_added_by_registration_answer_a_call(
    stack, question_wavs, monkeypatch, tmp_path
):
    engines = []

    def load_beep(config):
        engines.append(BeepEngine())
        return engines[-1]

    _module(monkeypatch, "beep_voice", load=load_beep)
    _module(
        monkeypatch,
        "fixed_silence",
        load=lambda: None,
        stop_strategies=lambda config, shared, cpu: [
            SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.8)
        ],
    )
    monkeypatch.setitem(tts.ENGINES, "beep", tts.EngineEntry("beep_voice"))
    monkeypatch.setitem(turns.TURN_END_POLICIES, "fixed-silence", "fixed_silence")
    config = stack.config.model_copy(deep=True)
    config.tts.engine = "beep"
    config.turn.end_detection = "fixed-silence"
    beep_stack = load_stack(config, warm_up=False)
    (engine,) = engines
    assert beep_stack.speech is engine and beep_stack.turn_end is None
    path, question = question_wavs[0]
    result = await run_files(beep_stack, [FileTurn(path)], output_path=tmp_path / "out.wav")
    (entry,) = result.turns
    assert wer(question, entry["transcript"]) <= 0.25 and entry["reply"]
    # The new voice spoke the reply, hearing the user's turn it answers.
    assert engine.spoken and all(heard == 1 for _, heard in engine.spoken)
    assert entry["reply_audio"]["duration_secs"] >= 0.2 * len(engine.spoken) - 0.05


def test_names_no_registry_knows_are_refused_before_any_model_loads():
    config = load_config("tiny")
    with pytest.raises(ConfigError, match="unknown tts.engine 'kokoro'.*piper"):
        parse_config({**config.model_dump(), "tts": {"engine": "kokoro"}})
    for section, key, name in [("llm", "backend", "vllm"), ("turn", "end_detection", "magic")]:
        bad = config.model_copy(deep=True)
        setattr(getattr(bad, section), key, name)
        started = time.monotonic()
        with pytest.raises(ConfigError, match=f"unknown {section}.{key} '{name}'"):
            load_stack(bad)
        assert time.monotonic() - started < 5  # refused before loading anything
    with pytest.raises(ConfigError, match="unknown sipgate .*known: twilio"):
        check_phone_providers(["twilio", "sipgate"])
