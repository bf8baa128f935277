"""MisoTTS inside the voice pipeline: a tiny random-weight checkpoint in the release format
and a random-weight Mimi, loaded from a config by the real loaders, speaking the replies of
the real tiny stack (Silero, Whisper, SmolLM2). Random weights make noise, so what is
checked is what the engine is given to condition on, and that audio comes out."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from agent.audio import write_wav
from agent.config import load_config
from pipelines.local.file_mode import FileTurn, run_files
from tests.conftest import BARGE_IN, speak, wer
from tests.miso_setup import miso_config_file
from tts import load_engine
from tts.base import EngineUnavailableError

VOICE_PROMPT_TEXT = "This is how the assistant sounds."


@pytest.fixture(scope="module")
def miso_stack(stack, tmp_path_factory):
    folder = tmp_path_factory.mktemp("miso")
    # The voice prompt as a user would supply it: a 16 kHz WAV, resampled on loading.
    prompt_wav = write_wav(folder / "voice.wav", speak(stack, VOICE_PROMPT_TEXT), 16000)
    config = load_config(str(miso_config_file(
        folder, voice_prompt={"audio": str(prompt_wav), "text": VOICE_PROMPT_TEXT}
    )))
    engine = load_engine(config)
    engine.warm_up()
    return dataclasses.replace(stack, config=config, speech=engine)


class ContextLog:
    """Every context the engine was given: (segments, plan) per spoken sentence."""

    def __init__(self, engine):
        self.entries = []
        self._lock = threading.Lock()
        engine.context_observers.append(self.record)

    def record(self, segments, plan):
        with self._lock:
            self.entries.append((list(segments), plan))


async def test_replies_condition_on_the_users_turn_and_earlier_sentences(
    stack, miso_stack, question_wavs
):
    engine = miso_stack.speech
    barge_in = speak(stack, BARGE_IN)  # in Piper's voice: real speech
    log = ContextLog(engine)
    frames = engine.generator.frames
    reused_before = frames.positions_reused
    (q1, text1), (q2, text2) = question_wavs[0], question_wavs[1]
    try:
        result = await run_files(miso_stack, [
            FileTurn(q1),
            FileTurn(q2, during_reply=barge_in, during_reply_when="speaking"),
        ])
    finally:
        engine.context_observers.remove(log.record)

    captured = list(result.session.user_turns)
    assert len(captured) == 2
    assert wer(text1, captured[0].text) <= 0.2 and wer(text2, captured[1].text) <= 0.2
    assert log.entries, "the engine was never asked to speak"
    for audio in result.reply_audio:
        assert len(audio) > 0 and np.abs(audio).max() > 0

    user, bot = engine.options.user_speaker, engine.options.bot_speaker
    prompt = engine.generator.voice_prompt
    assert prompt is not None and prompt.text == VOICE_PROMPT_TEXT and prompt.speaker == bot
    assert prompt.sample_rate == 24_000 and len(prompt.audio) > 24_000
    prompt_tokens, _ = engine.generator.tokenize_segment(prompt)
    for segments, plan in log.entries:
        # Every sentence's context opens with the voice prompt.
        assert torch.equal(plan.tokens[: len(prompt_tokens)], prompt_tokens)
        user_segments = [s for s in segments if s.speaker == user]
        assert user_segments, "a reply was spoken without the user's turn in context"
        # Each user segment is one captured turn: its transcript, its audio at 24 kHz.
        for segment in user_segments:
            turn = next(t for t in captured if t.text == segment.text)
            assert segment.sample_rate == 24_000
            assert abs(len(segment.audio) / 24_000 - turn.duration_secs) < 0.01
            assert "banana" not in segment.text.lower()
        assert plan.dropped_segments == 0
        assert {s.speaker for s in segments} <= {user, bot}

    # The first sentence of the first reply hears exactly the first question.
    first_segments, _ = log.entries[0]
    assert [s.speaker for s in first_segments] == [user]
    assert first_segments[0].text == captured[0].text
    # Later sentences also hear what the bot already said, with the codes it made.
    later = [segs for segs, _ in log.entries[1:]]
    assert any(s.speaker == bot and s.codes is not None for segs in later for s in segs)
    # The barge-in spoken during the second reply reached no context.
    total_user_secs = sum(len(s.audio) for segs, _ in log.entries for s in segs
                          if s.speaker == user) / 24_000
    assert total_user_secs > 0
    assert result.dropped_input_secs >= len(barge_in) / 16000 - 0.1

    # Later sentences found the conversation already read in the session's cache row, and
    # the row was given back when the call ended.
    assert frames.positions_reused - reused_before > len(prompt_tokens)
    assert frames.sessions() == 0


def test_gpu_config_refuses_to_start_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = load_config(str(miso_config_file(tmp_path, device="cuda")))
    with pytest.raises(EngineUnavailableError, match="no CUDA GPU"):
        load_engine(config)
    config.tts.miso.allow_cpu = True
    config.tts.miso.text_format = "csm"
    engine = load_engine(config)
    assert engine.generator.device.type == "cpu"
    # CSM-1B's framing: "[1]Hello", no space after the speaker tag.
    assert engine.generator.text_tokenizer.segment_format.render("Hello", 1) == "[1]Hello"


def test_shipped_gpu_configs_are_valid():
    for name in ("miso-8b", "csm-1b"):
        config = load_config(name)
        assert config.tts.engine == "miso"
        assert config.tts.miso.device == "cuda" and config.tts.miso.dtype == "bfloat16"
    assert load_config("csm-1b").tts.miso.text_format == "csm"
    assert load_config("miso-8b").tts.miso.text_format == "miso"


def run_agent_with(config_path, wav):
    return subprocess.run(
        [sys.executable, "run_agent.py", "--config", str(config_path), "--transport", "file",
         "--input", str(wav), "--output", str(wav.parent / "out.wav")],
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_run_agent_explains_why_miso_cannot_start(tmp_path, question_wavs):
    wav = question_wavs[0][0]
    run = run_agent_with("configs/miso-8b.yaml", wav)
    assert run.returncode == 2
    assert "no CUDA GPU" in run.stderr and "Traceback" not in run.stderr

    config = yaml.safe_load(Path("configs/csm-1b.yaml").read_text())
    config["tts"]["miso"].update(checkpoint=str(tmp_path / "not-downloaded"), allow_cpu=True)
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(config))
    run = run_agent_with(path, wav)
    assert run.returncode == 2
    assert "MisoTTS cannot start" in run.stderr and "not-downloaded" in run.stderr
    assert "Traceback" not in run.stderr
