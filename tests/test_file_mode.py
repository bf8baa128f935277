"""File mode end to end with real Silero, Whisper, a real small LLM and the Piper voice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.audio import write_wav
from pipelines.local.file_mode import FileTurn, run_files
from tests.conftest import speak, wer


async def test_spoken_questions_get_spoken_answers(stack, question_wavs, transcribe, tmp_path):
    chosen = question_wavs[:2]
    output, log = tmp_path / "reply.wav", tmp_path / "reply.json"
    result = await run_files(
        stack, [FileTurn(p) for p, _ in chosen], output_path=output, log_path=log
    )

    assert len(result.turns) == 2
    rate = result.output_sample_rate
    for (path, question), turn, audio in zip(chosen, result.turns, result.reply_audio):
        assert wer(question, turn["transcript"]) <= 0.2, turn
        assert turn["reply"].strip(), turn
        assert len(audio) / rate > 0.3
        # What the bot said out loud is what the LLM wrote.
        assert wer(turn["reply"], transcribe(audio, rate)) <= 0.35, turn
        stages = turn["latency_secs"]
        for stage in (
            "voice_to_voice",
            "turn_end_detection",
            "asr",
            "llm_first_sentence",
            "tts_first_audio",
        ):
            assert stages[stage] is not None and stages[stage] >= 0, (stage, stages)

    logged = json.loads(log.read_text())
    assert [t["transcript"] for t in logged["turns"]] == [t["transcript"] for t in result.turns]
    assert output.exists() and output.stat().st_size > 44

    # The conversation remembers both exchanges, in order.
    messages = result.session.context.get_messages()
    roles = [m["role"] for m in messages if m["role"] in ("user", "assistant")]
    assert roles == ["user", "assistant", "user", "assistant"]


async def test_each_user_turn_is_captured_with_its_transcript(stack, question_wavs, tmp_path):
    path, question = question_wavs[0]
    result = await run_files(stack, [FileTurn(path)])
    turns = list(result.session.user_turns)
    assert len(turns) == 1
    captured = turns[0]
    assert captured.sample_rate == 16000
    assert wer(question, captured.text) <= 0.2
    # The capture holds the question's speech (plus pre-roll), not the silence around it.
    spoken = speak(stack, question)
    voiced = np.flatnonzero(np.abs(spoken) > 300)
    speech_secs = (voiced[-1] - voiced[0]) / 16000
    assert speech_secs - 0.1 <= captured.duration_secs <= speech_secs + 0.9, (
        captured.duration_secs,
        speech_secs,
    )
    # The bot's reply is kept too, for engines that condition on it.
    assert len(result.session.bot_replies) >= 1


def _cli_error(argv: list[str], capsys) -> str:
    """run_agent's error for ``argv`` (file mode), which must come before any model loads."""
    import run_agent

    with pytest.raises(SystemExit) as exit_:
        run_agent.main(["--config", "tiny", "--transport", "file", *argv])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_file_mode_never_overwrites_an_input_or_its_own_outputs(tmp_path, capsys):
    wav = write_wav(tmp_path / "question.wav", np.zeros(16000, np.int16), 16000)
    original = wav.read_bytes()
    out = str(tmp_path / "replies.wav")
    # The log used to default to OUTPUT with .json: --output r.json made it overwrite the WAV.
    assert "give a .wav path" in _cli_error(["--input", str(wav), "--output", "r.json"], capsys)
    assert "is one of the inputs" in _cli_error(["--input", str(wav), "--output", str(wav)], capsys)
    assert "is one of the inputs" in _cli_error(
        ["--input", str(wav), "--output", out, "--log", str(wav)], capsys
    )
    assert "is the --output WAV" in _cli_error(
        ["--input", str(wav), "--output", out, "--log", out], capsys
    )
    unwritable = "/sys/voice-agent-test/replies.wav"  # sysfs: not even root writes there
    assert "cannot be written" in _cli_error(["--input", str(wav), "--output", unwritable], capsys)
    assert wav.read_bytes() == original
    assert not (tmp_path / "replies.wav").exists()


def test_an_input_over_the_length_limit_is_refused_before_loading(tmp_path, capsys):
    import run_agent

    wav = write_wav(tmp_path / "long.wav", np.zeros(16000 * 3, np.int16), 16000)
    argv = ["--config", "tiny", "--transport", "file", "--input", str(wav)]
    argv += ["--output", str(tmp_path / "r.wav"), "--max-input-secs", "2"]
    assert run_agent.main(argv) == 2
    assert "over --max-input-secs 2" in capsys.readouterr().err


def test_an_interrupted_run_keeps_the_turns_it_answered(question_wavs, tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import wave

    out, log = tmp_path / "replies.wav", tmp_path / "replies.json"
    # Five turns: under a loaded machine the interrupt may land a turn or two late.
    inputs = [str(path) for path, _ in question_wavs[:5]]
    run = subprocess.Popen(
        [sys.executable, "run_agent.py", "--config", "tiny", "--transport", "file"]
        + [arg for path in inputs for arg in ("--input", path)]
        + ["--output", str(out)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in run.stderr:  # progress: one line per answered turn
            if "turn 1/5 done" in line:
                break
        run.send_signal(signal.SIGINT)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    turns = json.loads(log.read_text())["turns"]
    assert 1 <= len(turns) < 5 and turns[0]["reply"], turns
    with wave.open(str(out)) as replies:  # a whole WAV, holding the answered replies
        secs = replies.getnframes() / replies.getframerate()
    answered = sum(t["reply_audio"]["duration_secs"] for t in turns)
    assert secs >= answered > 0.5


async def test_a_voice_that_fails_on_a_reply_ends_that_turn_and_the_next_is_answered(
    stack, question_wavs, tmp_path
):
    """The voice raising on the first reply (a fault injected around the real Piper engine:
    Piper itself does not fail on demand): that turn ends, the bot listens again, and the
    next question gets a whole spoken answer."""
    import dataclasses

    from tts.base import SpeechEngine

    class FailsOnce(SpeechEngine):
        def __init__(self, voice: SpeechEngine):
            self.voice, self.sample_rate, self.calls = voice, voice.sample_rate, 0

        def synthesize(self, text, context):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("the voice failed")
            yield from self.voice.synthesize(text, context)

    voice = FailsOnce(stack.speech)
    broken = dataclasses.replace(stack, speech=voice)
    turns = [FileTurn(question_wavs[0][0]), FileTurn(question_wavs[1][0])]
    result = await run_files(broken, turns)
    one, two = result.turns
    assert one["transcript"] and one["reply_audio"]["duration_secs"] < 0.5, one
    assert two["transcript"] and two["reply"], two
    assert two["reply_audio"]["duration_secs"] > 0.5, two
    assert voice.calls >= 2 and result.session.gate.listening
