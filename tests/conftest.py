"""Shared fixtures: the real model stack (tiny config), spoken questions, a transcriber."""

from __future__ import annotations

import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soxr

from agent.config import load_config
from benchmarks.conversation import QUESTIONS as SPOKEN_QUESTIONS
from benchmarks.conversation import clean
from pipelines.stack import ModelStack, load_stack
from tts.base import SpeechContext

QUESTIONS = SPOKEN_QUESTIONS[:5]
# Short enough to fit in the time the bot is busy with a turn, so none of it spills
# over into the time the bot listens again.
BARGE_IN = "Green bananas."


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = clean(reference), clean(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return jiwer.wer(ref, hyp)


@pytest.fixture(scope="session")
def stack() -> ModelStack:
    return load_stack(load_config("tiny"))


def speak(stack: ModelStack, text: str, rate: int = 16000) -> np.ndarray:
    """The bundled voice saying ``text``, as int16 at ``rate``."""
    audio = np.concatenate(list(stack.speech.synthesize(text, SpeechContext())))
    audio = soxr.resample(audio.astype(np.float32) / 32768, stack.speech.sample_rate, rate)
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype(np.int16).tobytes())
    return path


@pytest.fixture(scope="session")
def question_wavs(stack, tmp_path_factory) -> list[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("questions")
    return [
        (write_wav(folder / f"q{i}.wav", speak(stack, q), 16000), q)
        for i, q in enumerate(QUESTIONS)
    ]


@pytest.fixture(scope="session")
def transcribe(stack):
    def run(samples: np.ndarray, rate: int) -> str:
        audio = samples.astype(np.float32) / 32768
        if rate != 16000:
            audio = soxr.resample(audio, rate, 16000)
        segments, _ = stack.whisper.transcribe(audio, beam_size=1, language="en")
        return " ".join(s.text.strip() for s in segments)

    return run
