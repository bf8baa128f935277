"""Whisper's full 30 s window vs the utterance's own window (agent/asr/whisper.py), on real speech.

    python -m benchmarks.asr_window [--config default]

Uses the human recordings in the pocketsphinx 5.1.1 source package (LibriVox sentences
with transcripts and "go forward ten meters"), fetched from PyPI into out/speech/ once,
plus the benchmark questions spoken by the Piper voice. Reports WER and time per turn.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
import soxr

from agent.asr.whisper import ShortUtteranceWhisper
from agent.config import load_config
from agent.llm.echo import clean
from pipelines.callers.answer_set import CONVERSATION_QUESTIONS as QUESTIONS
from tts import load_engine

SPEECH_DIR = Path("out/speech")


def human_recordings() -> list[tuple[str, np.ndarray]]:
    root = SPEECH_DIR / "pocketsphinx-5.1.1" / "test" / "data"
    if not root.exists():
        SPEECH_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "pocketsphinx==5.1.1",
                "-d",
                str(SPEECH_DIR),
            ],
            check=True,
        )
        with tarfile.open(SPEECH_DIR / "pocketsphinx-5.1.1.tar.gz") as archive:
            archive.extractall(SPEECH_DIR, filter="data")
    clips = []
    for wav in sorted(glob.glob(str(root / "librivox" / "*.wav"))):
        audio, rate = sf.read(wav, dtype="float32")
        clips.append(
            (Path(wav).with_suffix(".txt").read_text().strip(), soxr.resample(audio, rate, 16000))
        )
    raw = np.fromfile(root / "goforward.raw", dtype=np.int16).astype(np.float32) / 32768
    clips.append(("go forward ten meters", raw))
    return clips


def piper_questions(config) -> list[tuple[str, np.ndarray]]:
    engine = load_engine(config)
    clips = []
    for question in QUESTIONS:
        clips.append((question, engine.synthesize_all(question, 16000).astype(np.float32) / 32768))
    return clips


def evaluate(transcriber, clips) -> dict:
    refs, hyps, times = [], [], []
    for ref, audio in clips:
        audio = np.concatenate([audio, np.zeros(8000, np.float32)])  # Pipecat pads 0.5 s
        list(transcriber.transcribe(audio[:16000], language="en")[0])  # warm up this path
        start = time.perf_counter()
        # faster-whisper decodes lazily: the time counts only once the segments are listed.
        segments = list(transcriber.transcribe(audio, language="en")[0])
        times.append(time.perf_counter() - start)
        refs.append(clean(ref))
        hyps.append(clean(" ".join(s.text for s in segments)))
    return {
        "wer": round(jiwer.wer(refs, hyps), 4),
        "ms_p50": round(float(np.median(times)) * 1000),
        "ms_p95": round(float(np.percentile(times, 95)) * 1000),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    from agent.models import resolve_model

    config = load_config(args.config)
    model = WhisperModel(
        str(resolve_model(config.asr.model, "asr")),
        compute_type=config.asr.compute_type,
        cpu_threads=config.asr.cpu_threads,
    )
    sets = {
        "human (pocketsphinx sdist)": human_recordings(),
        "piper questions": piper_questions(config),
    }
    report = {}
    for name, clips in sets.items():
        report[name] = {
            window: evaluate(
                ShortUtteranceWhisper(model, utterance_window=window == "utterance"), clips
            )
            for window in ("full", "utterance")
        }
        report[name]["clips"] = len(clips)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
