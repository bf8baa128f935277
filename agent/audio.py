"""WAV files in and out, and where speech ends in a recording: one helper each, for file
mode, the voice prompt, the callers and the tests."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np

CHUNK_SECS = 0.02
SPEECH_RMS_FLOOR = 300  # int16 RMS below which a 20 ms window counts as silence


class WavInputError(ValueError):
    """An input WAV cannot be used; the message names the file and the problem."""


def load_input_wav(path: str | Path, sample_rate: int) -> tuple[np.ndarray, list[str]]:
    """Read a WAV as mono int16 at ``sample_rate``; return it and the conversions made.

    Missing, unreadable and empty files are errors; stereo is mixed down and other rates
    are resampled, and each conversion is reported.
    """
    import soundfile as sf
    import soxr

    path = Path(path)
    if not path.exists():
        raise WavInputError(f"input WAV not found: {path}")
    if not path.is_file():
        raise WavInputError(f"input WAV is not a file: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise WavInputError(f"cannot read {path} as audio: {e}") from None
    if data.shape[0] == 0:
        raise WavInputError(f"input WAV has no audio: {path}")
    notes = []
    if data.shape[1] > 1:
        notes.append(f"{path.name}: {data.shape[1]} channels mixed down to mono")
        data = data.mean(axis=1, keepdims=True)
    mono = data[:, 0]
    if rate != sample_rate:
        notes.append(f"{path.name}: resampled from {rate} Hz to {sample_rate} Hz")
        mono = soxr.resample(mono, rate, sample_rate)
    if not np.all(np.isfinite(mono)):
        raise WavInputError(f"input WAV contains invalid samples (NaN/inf): {path}")
    return (np.clip(mono, -1, 1) * 32767).astype(np.int16), notes


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int, channels: int = 1) -> Path:
    """Write int16 samples (interleaved when ``channels`` > 1) as a WAV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it and renamed: the file is never seen half written.
    partial = path.with_name(f".{path.name}.partial")
    with wave.open(str(partial), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(samples.astype(np.int16).tobytes())
    os.replace(partial, path)
    return path


def speech_end_offset(samples: np.ndarray, sample_rate: int) -> int:
    """Index just after the last 20 ms window with speech-level energy."""
    window = int(sample_rate * CHUNK_SECS)
    last = 0
    for start in range(0, len(samples), window):
        chunk = samples[start : start + window].astype(np.float32)
        if chunk.size and np.sqrt(np.mean(chunk**2)) > SPEECH_RMS_FLOOR:
            last = start + len(chunk)
    return last or len(samples)
