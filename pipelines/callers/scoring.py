"""How scripted calls are scored: word error rates, percentiles, Whisper on a reply.

One place for each, shared by the tests and the benchmarks. Text is compared after
``agent.llm.echo.clean`` (lower case, no punctuation, digits as words)."""

from __future__ import annotations

import numpy as np
import soxr

from agent.llm.echo import clean


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one hypothesis (0 for two empty texts, 1 for words heard in silence)."""
    import jiwer  # a test and benchmark dependency, not the agent's

    ref, hyp = clean(reference), clean(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp))


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate over a set (errors of all items over the words of all items)."""
    import jiwer

    pairs = [(clean(r), clean(h)) for r, h in zip(references, hypotheses) if clean(r)]
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])) if pairs else float("nan")


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile of the values that are not None, to the millisecond."""
    values = [v for v in values if v is not None]
    return round(float(np.percentile(values, q)), 3) if values else None


def transcribe(whisper, samples: np.ndarray, rate: int) -> str:
    """Whisper's words for int16 ``samples`` at ``rate`` (full window, greedy)."""
    if not len(samples):
        return ""
    audio = samples.astype(np.float32) / 32768
    if rate != 16000:
        audio = soxr.resample(audio, rate, 16000)
    segments, _ = whisper.transcribe(audio, beam_size=1, language="en")
    return " ".join(s.text.strip() for s in segments)
