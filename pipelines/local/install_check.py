"""`run_agent.py --check`: one spoken question through the whole pipeline, to know an
install works: every model of the config loads, the question is heard, answered and
spoken, and each stage's time is shown.

The question is spoken by the Piper voice the agent package ships (so the check needs no
file of the user's), played through file mode as a caller would say it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

QUESTION = "What is the capital of Italy?"
# Words the transcript must hold for the hearing to count as working.
HEARD_WORDS = ("capital", "italy")
# Less than this is no speech at all; a one-word answer ("Rome.") lasts ~0.3 s.
MIN_REPLY_SECS = 0.15


@dataclass
class CheckResult:
    transcript: str = ""
    reply: str = ""
    reply_secs: float = 0.0
    latency_secs: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def question_audio(sample_rate: int) -> np.ndarray:
    """The check's question, int16 at ``sample_rate``, in the packaged Piper voice, spoken
    without Piper's random variation: the same audio every time, so a check that passes
    once passes again. (It asked about France: with the variation Whisper tiny heard
    "friend" in about 1 check of 6, and in every one without it; "Italy" in 7 of 7.)"""
    from agent.config import load_config
    from agent.models import resolve_model
    from tts.piper_voice import PiperEngine, PiperStyle

    piper = load_config("default").tts.piper
    voice = PiperEngine(
        resolve_model(piper.model, "tts"), PiperStyle(noise_scale=0.0, noise_w_scale=0.0)
    )
    return voice.synthesize_all(QUESTION, sample_rate)


async def run_check(stack) -> CheckResult:
    """Ask the question through a file-mode session of ``stack``; what went wrong, if any."""
    from agent.audio import write_wav
    from pipelines.local.file_mode import FileTurn, run_files

    rate = stack.config.audio_in_sample_rate
    result = CheckResult()
    with tempfile.TemporaryDirectory() as folder:
        clip = write_wav(Path(folder) / "question.wav", question_audio(rate), rate)
        run = await run_files(stack, [FileTurn(clip)], reply_timeout_secs=60)
    turn = run.turns[0]
    result.transcript, result.reply = turn["transcript"], turn["reply"]
    result.reply_secs = turn["reply_audio"]["duration_secs"]
    result.latency_secs = turn["latency_secs"]
    heard = result.transcript.lower()
    if not all(word in heard for word in HEARD_WORDS):
        result.problems.append(
            f"speech recognition heard {result.transcript!r} for {QUESTION!r}: check asr.model"
        )
    apology = stack.config.llm.apology
    if not result.reply.strip() or (apology and result.reply.strip() == apology.strip()):
        result.problems.append(
            "the LLM did not answer"
            + (" (the caller heard the apology)" if result.reply.strip() else "")
            + ": check llm (the model file, or the server at llm.base_url)"
        )
    if result.reply_secs < MIN_REPLY_SECS:
        result.problems.append(
            f"the voice spoke {result.reply_secs:.2f} s of reply audio: check tts"
        )
    return result


def report(result: CheckResult, load_secs: dict[str, float]) -> str:
    """What the check found, a line per fact, for the terminal."""
    lines = ["models loaded: " + ", ".join(f"{k} {v:.1f} s" for k, v in load_secs.items())]
    lines.append(f"heard:   {result.transcript!r}")
    lines.append(f"replied: {result.reply!r} ({result.reply_secs:.1f} s of audio)")
    stages = ", ".join(
        f"{name} {secs * 1000:.0f} ms" for name, secs in result.latency_secs.items()
        if secs is not None
    )
    lines.append(f"latency: {stages}")
    lines += [f"problem: {problem}" for problem in result.problems]
    lines.append("check passed" if result.ok else "check FAILED")
    return "\n".join(lines)
