"""The local assistant on a real audio stack: PulseAudio with two null sinks stands in for a
sound card. A WAV played into one sink is the microphone (its monitor is what PortAudio
records), and the other sink is the speaker (its monitor is recorded here, as a person
would hear it). ``run_agent.py --transport local`` runs as a user starts it, through
ALSA's ``pulse`` device; nothing in it is replaced."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import speak, wer, write_wav

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France?"


@pytest.fixture
def pulse(tmp_path):
    """A private PulseAudio server with sinks "mic" and "speaker"; its environment."""
    for tool in ("pulseaudio", "pactl", "paplay", "parecord"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install pulseaudio)")
    if not Path("/usr/share/alsa/alsa.conf.d/pulse.conf").exists():
        pytest.skip("ALSA's pulse device is missing (apt-get install libasound2-plugins)")
    runtime = tmp_path / "pulse-runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    env.pop("PULSE_SERVER", None)
    started = subprocess.run(
        ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n",
         "--load=module-native-protocol-unix",
         "--load=module-null-sink sink_name=mic",
         "--load=module-null-sink sink_name=speaker",
         f"--log-target=file:{tmp_path / 'pulse.log'}"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        pytest.skip(f"PulseAudio could not start here: {started.stderr.strip()[:200]}")
    yield {**env, "PULSE_SOURCE": "mic.monitor", "PULSE_SINK": "speaker"}
    subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=30)


def test_a_spoken_question_is_answered_out_loud_through_pulseaudio(pulse, stack, tmp_path):
    question = write_wav(tmp_path / "question.wav", speak(stack, QUESTION), 16000)
    heard = tmp_path / "heard.wav"
    agent = subprocess.Popen(
        [sys.executable, str(ROOT / "run_agent.py"), "--transport", "local", "--config", "tiny",
         "--input-device", "pulse", "--output-device", "pulse"],
        cwd=ROOT, env=pulse, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    recorder = None
    lines: list[str] = []
    try:
        for line in agent.stdout:  # models load, then it listens
            lines.append(line)
            if line.startswith("Listening."):
                break
        else:
            pytest.fail("the agent exited before listening:\n" + "".join(lines))
        recorder = subprocess.Popen(
            ["parecord", "-d", "speaker.monitor", "--rate=16000", "--channels=1",
             "--file-format=wav", str(heard)],
            env=pulse,
        )
        time.sleep(1.0)
        subprocess.run(["paplay", "-d", "mic", str(question)], env=pulse, check=True, timeout=30)
        deadline = time.monotonic() + 90
        for line in agent.stdout:  # the per-turn line comes once the reply has played
            lines.append(line)
            if " turn 1: " in line or time.monotonic() > deadline:
                break
        time.sleep(2.0)  # what the speaker still plays, and no second turn from its echo
    finally:
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(timeout=10)
        agent.send_signal(signal.SIGINT)
        try:
            rest, _ = agent.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            rest, _ = agent.communicate()
        lines.append(rest or "")
    log = "".join(lines)
    turn_lines = [line for line in log.splitlines() if " turn " in line and "voice-to-voice" in line]
    assert len(turn_lines) == 1, log  # one question, one turn: the bot did not hear itself
    said = turn_lines[0].split("heard ", 1)[1].strip("'\"")
    assert wer(QUESTION, said) <= 0.25, said
    # The reply came out of the speaker: speech, which Whisper can make words of.
    audio, rate = sf.read(str(heard), dtype="int16")
    assert rate == 16000 and len(audio) > rate
    loud = np.abs(audio.astype(np.int32)) > 1000
    assert loud.mean() > 0.05, "the speaker stayed silent"
    from pipelines.callers.scoring import transcribe

    words = transcribe(stack.whisper, audio, rate)
    assert len(words.split()) >= 2, words
