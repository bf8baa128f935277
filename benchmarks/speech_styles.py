"""Spoken questions in contrasting styles: fast/slow, loud/quiet, high/low, varied independently.

    python -m benchmarks.speech_styles [--config default] [--turns 24] [--human]
                                       [--pitch-method resample|sox] [--force]

The user side of benchmarks/tone_following.py. Every turn is one of the short factual
questions of benchmarks/conversation.py spoken by the configured Piper voice, with
  * rate: 1.45x (fast) to 0.7x (slow) the neutral rendering's rate, through Piper's
    length_scale (about 0.45 to 1.65: durations do not scale in proportion to it, so each
    turn's length_scale is calibrated until its active speech lasts as the rate asks);
  * loudness: the active speech level moved -12 dB to +6 dB around -26 dBFS (no clipping);
  * pitch: -4 to +4 semitones, by resampling (Piper first speaks slower/faster by the same
    factor so the duration comes out as the rate asks; formants move with the pitch, as
    between speakers) or by sox's ``pitch`` effect (duration kept by WSOLA; --pitch-method).
The ``turns`` are ``turns/2`` questions asked twice: first with every factor at one of
``turns/2`` evenly spaced levels, in orders chosen so that rate, loudness, pitch and the turn
number are pairwise uncorrelated (a Latin-square-like design: a reply that follows one of
them cannot score by following another), then again with every factor mirrored (fastest <->
slowest, loudest <-> quietest, highest <-> lowest). Each pair says the same words, so the
difference within a pair is the style alone (see benchmarks/tone_following.py).

``--human`` adds turns from real recordings (the LibriVox sentences and "go forward ten
meters" of the pocketsphinx 5.1.1 source package, see benchmarks/asr_window.py), each clip
twice, level and pitch moved the same way (by resampling: their rate moves with the pitch).

Every styled turn is checked: Whisper (the config's model) must still hear the words
(WER <= 0.2; a question it mishears is spoken again, up to 5 times, and the table says how
often), and the measured features must move as intended against a neutral rendering
of the same question. Features come from agent.tone.analysis.analyze_tone when that module exists,
and always from the independent reference measurement below (Praat pitch via
praat-parselmouth, active speech level, syllables of the text per second of speech).

WAVs (16 kHz mono int16) and a manifest go to out/speech/styles/; a later run with the same
parameters reuses them (Piper samples its noise, so a re-render is not bit-identical).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from agent.llm.echo import clean
from pipelines.callers.answer_set import CONVERSATION_QUESTIONS as QUESTIONS
from pipelines.callers.scoring import transcribe

STYLES_DIR = Path("out/speech/styles")
RATE = 16000
DESIGN_VERSION = 5

# The neutral active speech level; TYPICAL.loudness_dbfs of agent/tone/follow.py is -26 too.
REFERENCE_DBFS = -26.0
RATES = (1.45, 0.7)  # fast .. slow, speaking-rate factor vs the neutral rendering
RATE_TOLERANCE = 0.03  # calibration stops within 3 % of the asked duration
LOUDNESS_DB = (-12.0, 6.0)
PITCH_SEMITONES = (-4.0, 4.0)
MAX_PEAK = 10 ** (-1 / 20)  # -1 dBFS
MAX_WER = 0.2
RENDER_TRIES = 5
# Looser bounds for the check that a factor moved as intended (measured vs intended
# change against the neutral rendering); the table shows the real numbers.
TOLERANCE = {"rate_log2": 0.15, "loudness_db": 1.5, "pitch_semitones": 1.0}


@dataclass
class StyledTurn:
    index: int
    set: str  # "questions" or "human"
    pair: int  # turns of the same pair say the same words in mirrored styles
    half: str  # "A" (first pass through the questions) or "B" (mirrored)
    text: str
    path: Path
    source: str
    # rate: speaking-rate factor vs neutral (1/length_scale; for resampled human speech the
    # pitch factor); loudness_db vs REFERENCE_DBFS; pitch_semitones vs the unshifted voice.
    intended: dict
    neutral_path: Path | None = None
    heard: str = ""
    wer: float | None = None
    neutral_heard: str = ""
    neutral_wer: float | None = None  # what Whisper makes of the unstyled speech
    measured: dict = field(default_factory=dict)  # "reference" / "agent" -> features
    neutral: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)

    def samples(self) -> np.ndarray:
        audio, rate = sf.read(self.path, dtype="int16")
        assert rate == RATE, f"{self.path}: {rate} Hz"
        return audio

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["neutral_path"] = str(self.neutral_path) if self.neutral_path else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StyledTurn:
        d = dict(d)
        d["path"] = Path(d["path"])
        d["neutral_path"] = Path(d["neutral_path"]) if d.get("neutral_path") else None
        return cls(**d)


# ---------------------------------------------------------------------------------------
# The design


def _rank_corr(a, b) -> float:
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom else 0.0


def ranks(values) -> np.ndarray:
    """Average ranks (ties share the mean rank), as scipy.stats.rankdata."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranked[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranked


def balanced_orders(n: int, factors: int, seed: int = 0, tries: int = 20000) -> list[list[int]]:
    """``factors`` permutations of range(n), pairwise and against the turn number as close
    to uncorrelated (Spearman) as a seeded random search finds; deterministic. Secondly, as
    few turns as possible have every factor in the outer quarters of its range (such a turn,
    e.g. fastest + quietest + lowest, is mostly a test of the speech recogniser)."""
    if n < 2:
        return [[0] * n for _ in range(factors)]
    rng = np.random.default_rng(seed)
    index = list(range(n))
    outer = max(1, round(n / 4))

    def is_outer(level):
        return level < outer or level >= n - outer

    best, best_cost = None, math.inf
    for _ in range(tries):
        orders = [list(rng.permutation(n)) for _ in range(factors)]
        columns = [index] + orders
        corr = max(abs(_rank_corr(a, b)) for a, b in itertools.combinations(columns, 2))
        corners = sum(all(is_outer(o[i]) for o in orders) for i in range(n))
        cost = corr + 0.1 * corners
        if cost < best_cost - 1e-9:
            best, best_cost = orders, cost
            if cost < 1e-9:
                break
    return [[int(x) for x in o] for o in best]


def levels(m: int) -> np.ndarray:
    return np.linspace(0, 1, m) if m > 1 else np.array([0.5])


def design(n: int, seed: int = 0) -> list[dict]:
    """Intended style of each of ``n`` turns (rounded up to even): ``n/2`` questions, each
    asked twice, the second time with every factor mirrored (its k-th fastest level becomes
    the k-th slowest, loud becomes quiet, high becomes low). Within each half every factor
    spans its range in n/2 levels, in orders uncorrelated with each other and the turn.
    A question's two turns differ in style only, so comparing them cancels what its words
    do to the features (of the question, and of an answer that ignores the style)."""
    m = max(1, (n + 1) // 2)
    rate_order, loud_order, pitch_order = balanced_orders(m, 3, seed)
    steps = levels(m)
    fast, slow = RATES
    rates = fast * (slow / fast) ** steps  # geometric: equal steps in log rate
    loudness = LOUDNESS_DB[0] + steps * (LOUDNESS_DB[1] - LOUDNESS_DB[0])
    pitch = PITCH_SEMITONES[0] + steps * (PITCH_SEMITONES[1] - PITCH_SEMITONES[0])
    out = []
    for half in ("A", "B"):
        for i in range(m):
            r, l, p = rate_order[i], loud_order[i], pitch_order[i]
            if half == "B":
                r, l, p = m - 1 - r, m - 1 - l, m - 1 - p
            out.append(
                {
                    "pair": i,
                    "half": half,
                    "rate": round(float(rates[r]), 4),
                    "loudness_db": round(float(loudness[l]), 2),
                    "pitch_semitones": round(float(pitch[p]), 2),
                }
            )
    return out


# ---------------------------------------------------------------------------------------
# Rendering


def load_piper(config):
    """The config's Piper voice itself (not the agent's engine, whose delivery follows the
    user): the questions are the user's voice and must not move with the agent's code."""
    from piper import PiperVoice

    from agent.models import resolve_model

    if config.tts.piper is None:
        raise SystemExit("the styled questions need a config with a tts.piper voice")
    model = resolve_model(config.tts.piper.model, "tts")
    return PiperVoice.load(str(model), config_path=str(model) + ".json")


def piper_speak(voice, piper_config, text: str, length_scale: float) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    syn = SynthesisConfig(
        length_scale=length_scale,
        noise_scale=piper_config.noise_scale,
        noise_w_scale=piper_config.noise_w_scale,
    )
    chunks = [c.audio_float_array for c in voice.synthesize(text, syn_config=syn)]
    return np.concatenate(chunks).astype(np.float32), int(voice.config.sample_rate)


def shift_pitch(audio: np.ndarray, rate: int, semitones: float, method: str) -> np.ndarray:
    """``audio`` at ``rate`` -> 16 kHz, ``semitones`` higher. resample: also 2^(st/12)
    times faster (the caller compensates); sox: same duration."""
    factor = 2.0 ** (semitones / 12)
    if method == "resample" or abs(semitones) < 1e-6:
        return soxr.resample(audio, rate * factor, RATE, quality="VHQ").astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(src, audio, rate, subtype="FLOAT")
        subprocess.run(
            [
                "sox",
                str(src),
                "-b",
                "32",
                "-e",
                "floating-point",
                str(dst),
                "pitch",
                f"{semitones * 100:.0f}",
                "rate",
                "-v",
                str(RATE),
            ],
            check=True,
        )
        out, _ = sf.read(dst, dtype="float32")
    return out


def _wer(text: str, heard: str) -> float:
    import jiwer

    return float(jiwer.wer(clean(text), clean(heard))) if clean(text) else 0.0


def set_level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    level = active_level_dbfs(audio, RATE)
    return audio * np.float32(10 ** ((dbfs - level) / 20))


def to_int16(audio: np.ndarray, what: str) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > MAX_PEAK:
        raise ValueError(f"{what}: peak {20 * math.log10(peak):.1f} dBFS would clip")
    return np.round(audio * 32767).astype(np.int16)


def active_secs(audio: np.ndarray, rate: int = RATE) -> float:
    return float(_active(_frames_db(audio, rate)).sum()) * 0.01


def speak_styled(voice, piper_config, text, style, pitch_method, neutral_secs):
    """``text`` at the style's pitch and rate (loudness is set by the caller): the
    length_scale is adjusted until the active speech lasts ``neutral_secs / rate``."""
    factor = 2.0 ** (style["pitch_semitones"] / 12)
    target = neutral_secs / style["rate"]
    # Resampling up by `factor` shortens the speech by it: speak that much slower first.
    ls = piper_config.length_scale / style["rate"] * (factor if pitch_method == "resample" else 1.0)
    best = None
    for _ in range(6):
        raw, rate = piper_speak(voice, piper_config, text, ls)
        audio = shift_pitch(raw, rate, style["pitch_semitones"], pitch_method)
        secs = active_secs(audio)
        if best is None or abs(math.log(secs / target)) < abs(math.log(best[1] / target)):
            best = (audio, secs, ls)
        if abs(secs / target - 1) <= RATE_TOLERANCE:
            break
        # Durations grow about as length_scale ** 0.75 (fixed costs per phoneme).
        ls = min(max(ls * (target / secs) ** (1 / 0.75), 0.3), 3.0)
    return best


def render_questions(
    config,
    n: int,
    folder: Path,
    pitch_method: str,
    questions: list[str] = QUESTIONS,
    whisper=None,
) -> list[StyledTurn]:
    """With ``whisper``, a styled turn Whisper mishears (WER > MAX_WER) is spoken again,
    up to RENDER_TRIES times (Piper samples its noise, so each rendering differs), and the
    best kept: the benchmark is about tone, its questions must be understood."""
    voice = load_piper(config)
    piper = config.tts.piper
    folder.mkdir(parents=True, exist_ok=True)
    turns, neutral_secs = [], {}
    for i, style in enumerate(design(n)):
        q = style.pop("pair")
        half = style.pop("half")
        text = questions[q % len(questions)]
        neutral_path = folder / f"q{q:02d}_neutral.wav"
        if q not in neutral_secs:
            neutral, rate = piper_speak(voice, piper, text, piper.length_scale)
            neutral = soxr.resample(neutral, rate, RATE, quality="VHQ")
            neutral = set_level(neutral, REFERENCE_DBFS)
            sf.write(neutral_path, to_int16(neutral, neutral_path.name), RATE, subtype="PCM_16")
            neutral_secs[q] = active_secs(neutral)
        best = None
        for attempt in range(1, RENDER_TRIES + 1):
            audio, secs, ls = speak_styled(voice, piper, text, style, pitch_method, neutral_secs[q])
            audio = set_level(audio, REFERENCE_DBFS + style["loudness_db"])
            wer = _wer(text, transcribe(whisper, to_int16(audio, text), RATE)) if whisper else 0
            if best is None or wer < best[0]:
                best = (wer, audio, secs, ls)
            if wer <= MAX_WER:
                break
        _, audio, secs, ls = best
        path = folder / (
            f"t{i:02d}_q{q:02d}{half}_r{style['rate']:.2f}_l{style['loudness_db']:+.0f}"
            f"_p{style['pitch_semitones']:+.1f}.wav"
        )
        sf.write(path, to_int16(audio, path.name), RATE, subtype="PCM_16")
        turns.append(
            StyledTurn(
                index=i,
                set="questions",
                pair=q,
                half=half,
                text=text,
                path=path,
                source="piper",
                intended={
                    **style,
                    "pitch_method": pitch_method,
                    "length_scale": round(ls, 3),
                    "rate_rendered": round(neutral_secs[q] / secs, 3),
                    "render_attempts": attempt,
                },
                neutral_path=neutral_path,
            )
        )
    return turns


def render_human(folder: Path, seed: int = 1) -> list[StyledTurn]:
    """The pocketsphinx sdist's human recordings, each twice: level and pitch (by
    resampling, so the rate moves with the pitch) set by a design like the questions'."""
    from benchmarks.asr_window import human_recordings

    clips = human_recordings()  # (text, float32 16 kHz); fetched from PyPI once
    folder.mkdir(parents=True, exist_ok=True)
    m = len(clips)
    styles = design(2 * m, seed)
    turns = []
    for i, style in enumerate(styles):
        c = style["pair"]
        text, audio = clips[c]
        loud, st = style["loudness_db"], style["pitch_semitones"]
        neutral_path = folder / f"h{c:02d}_neutral.wav"
        if not any(t.pair == c for t in turns):
            neutral = set_level(audio.astype(np.float32), REFERENCE_DBFS)
            sf.write(neutral_path, to_int16(neutral, neutral_path.name), RATE, subtype="PCM_16")
        shifted = shift_pitch(audio.astype(np.float32), RATE, st, "resample")
        shifted = set_level(shifted, REFERENCE_DBFS + loud)
        path = folder / f"t{i:02d}_h{c:02d}{style['half']}_l{loud:+.0f}_p{st:+.1f}.wav"
        sf.write(path, to_int16(shifted, path.name), RATE, subtype="PCM_16")
        turns.append(
            StyledTurn(
                index=i,
                set="human",
                pair=c,
                half=style["half"],
                text=text,
                path=path,
                source="pocketsphinx-5.1.1 "
                + ("goforward.raw" if "forward" in text else "librivox"),
                intended={
                    "rate": round(2.0 ** (st / 12), 4),
                    "loudness_db": loud,
                    "pitch_semitones": st,
                    "pitch_method": "resample",
                },
                neutral_path=neutral_path,
            )
        )
    return turns


# ---------------------------------------------------------------------------------------
# Measuring


def _frames_db(audio: np.ndarray, rate: int, frame_secs=0.02, hop_secs=0.01) -> np.ndarray:
    frame, hop = int(rate * frame_secs), int(rate * hop_secs)
    if len(audio) < frame:
        return np.full(1, -120.0)
    count = 1 + (len(audio) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(count)[:, None]
    power = np.mean(np.asarray(audio, np.float64)[idx] ** 2, axis=1)
    return 10 * np.log10(power + 1e-12)


def _active(frames_db: np.ndarray, bridge_frames: int = 15) -> np.ndarray:
    """Frames within 35 dB of the loud end, short gaps (< 150 ms, stop closures) bridged."""
    active = frames_db > max(np.percentile(frames_db, 95) - 35.0, -75.0)
    idx = np.flatnonzero(active)
    for a, b in itertools.pairwise(idx):
        if 1 < b - a <= bridge_frames:
            active[a:b] = True
    return active


def active_level_dbfs(audio: np.ndarray, rate: int) -> float:
    """Mean power of the active frames, dBFS (a full-scale sine is -3 dBFS)."""
    frames = _frames_db(audio, rate)
    active = frames > max(np.percentile(frames, 95) - 35.0, -75.0)
    return float(10 * np.log10(np.mean(10 ** (frames[active] / 10)) + 1e-12))


def count_syllables(text: str) -> int:
    total = 0
    for word in clean(text).split():
        word = word.replace("'", "")
        groups = len(re.findall(r"[aeiouy]+", word))
        if word.endswith("e") and not word.endswith(("le", "ee", "ye")) and groups > 1:
            groups -= 1
        total += max(groups, 1)
    return total


def reference_features(samples: np.ndarray, rate: int, text: str) -> dict:
    """ToneFeatures' fields, measured independently of agent.tone.analysis: Praat's F0 (median and
    10-90 % range of voiced frames), the active speech level, syllables of ``text`` per
    second of active speech, the share of pauses between the first and last speech."""
    import parselmouth

    audio = np.asarray(samples, np.float64)
    if samples.dtype == np.int16:
        audio = audio / 32768
    frames = _frames_db(audio, rate)
    active = _active(frames)
    speech_secs = float(active.sum()) * 0.01
    idx = np.flatnonzero(active)
    span = (idx[-1] - idx[0] + 1) * 0.01 if len(idx) else 0.0
    pitch = parselmouth.Sound(audio, sampling_frequency=rate).to_pitch(
        time_step=0.01, pitch_floor=60, pitch_ceiling=500
    )
    f0 = pitch.selected_array["frequency"]
    f0 = f0[f0 > 0]
    p10, p50, p90 = np.percentile(f0, [10, 50, 90]) if len(f0) else (0.0, 0.0, 0.0)
    return {
        "f0_median_hz": round(float(p50), 2),
        "f0_range_semitones": round(float(12 * math.log2(p90 / p10)), 2) if len(f0) else 0.0,
        "loudness_dbfs": round(active_level_dbfs(audio, rate), 2),
        "syllable_rate": round(count_syllables(text) / speech_secs, 3) if speech_secs else 0.0,
        "pause_ratio": round(1 - speech_secs / span, 3) if span else 0.0,
        "speech_secs": round(speech_secs, 3),
    }


def agent_analyzer():
    """agent.tone.analysis.analyze_tone, or None while that module does not exist."""
    try:
        from agent.tone.analysis import analyze_tone
    except ModuleNotFoundError as e:
        if e.name in ("agent.tone.analysis",):
            return None
        raise
    return analyze_tone


def agent_features(analyze, samples: np.ndarray, rate: int, text: str) -> dict | None:
    if analyze is None:
        return None
    try:
        features = analyze(samples, rate, text)
    except ValueError as e:  # nothing audible, too short: the agent follows nothing then
        return {"error": str(e)}
    return {
        k: (round(float(v), 3) if v is not None else None)
        for k, v in dataclasses.asdict(features).items()
    }


def measure(turn_samples: np.ndarray, rate: int, text: str, analyze) -> dict:
    out = {"reference": reference_features(turn_samples, rate, text)}
    agent = agent_features(analyze, turn_samples, rate, text)
    if agent is not None:
        out["agent"] = agent
    return out


def deltas(styled: dict, neutral: dict) -> dict:
    """Measured change of a styled turn against its neutral rendering."""

    def log2_ratio(a, b):
        return round(math.log2(a / b), 3) if a and b else None

    return {
        "rate_log2": log2_ratio(styled.get("syllable_rate"), neutral.get("syllable_rate")),
        "loudness_db": round(styled["loudness_dbfs"] - neutral["loudness_dbfs"], 2)
        if styled.get("loudness_dbfs") is not None and neutral.get("loudness_dbfs") is not None
        else None,
        "pitch_semitones": round(
            12 * log2_ratio(styled.get("f0_median_hz"), neutral.get("f0_median_hz")), 2
        )
        if log2_ratio(styled.get("f0_median_hz"), neutral.get("f0_median_hz")) is not None
        else None,
    }


def verify(turns: list[StyledTurn], whisper) -> None:
    """Whisper's words, WER, features of each turn and of its neutral rendering, checks."""
    import jiwer

    analyze = agent_analyzer()
    for turn in turns:
        samples = turn.samples()
        turn.heard = transcribe(whisper, samples, RATE)
        ref, hyp = clean(turn.text), clean(turn.heard)
        turn.wer = round(jiwer.wer(ref, hyp), 4) if ref else None
        turn.measured = measure(samples, RATE, turn.text, analyze)
        if turn.neutral_path is not None:
            neutral, _ = sf.read(turn.neutral_path, dtype="int16")
            turn.neutral = measure(neutral, RATE, turn.text, analyze)
            turn.neutral_heard = transcribe(whisper, neutral, RATE)
            turn.neutral_wer = round(jiwer.wer(ref, clean(turn.neutral_heard)), 4)
        intended = {
            "rate_log2": math.log2(turn.intended["rate"]),
            "loudness_db": turn.intended["loudness_db"],
            "pitch_semitones": turn.intended["pitch_semitones"],
        }
        checks = {"wer_ok": turn.wer is not None and turn.wer <= MAX_WER}
        for source in turn.measured:
            if source not in turn.neutral or "error" in turn.measured[source]:
                continue
            change = deltas(turn.measured[source], turn.neutral[source])
            checks[f"{source}_change"] = change
            # Only the human clips' rate is measured against their own natural rate, and a
            # TTS's own timing jitter is in the neutral rendering too: a loose check.
            checks[f"{source}_within_tolerance"] = {
                k: (change[k] is not None and abs(change[k] - intended[k]) <= TOLERANCE[k])
                for k in intended
            }
        turn.checks = checks


def feature_correlations(turns: list[StyledTurn], source: str) -> dict:
    """Spearman: intended vs measured per factor, and between the measured factors."""
    rows = [t for t in turns if source in t.measured and "error" not in t.measured[source]]
    if len(rows) < 3:
        return {}
    measured = {
        "rate": [t.measured[source]["syllable_rate"] for t in rows],
        "loudness": [t.measured[source]["loudness_dbfs"] for t in rows],
        "pitch": [t.measured[source]["f0_median_hz"] for t in rows],
    }
    intended = {
        "rate": [t.intended["rate"] for t in rows],
        "loudness": [t.intended["loudness_db"] for t in rows],
        "pitch": [t.intended["pitch_semitones"] for t in rows],
    }
    return {
        "intended_vs_measured": {
            k: round(_rank_corr(intended[k], measured[k]), 3) for k in measured
        },
        "between_measured": {
            f"{a}~{b}": round(_rank_corr(measured[a], measured[b]), 3)
            for a, b in itertools.combinations(measured, 2)
        },
        "between_intended": {
            f"{a}~{b}": round(_rank_corr(intended[a], intended[b]), 3)
            for a, b in itertools.combinations(intended, 2)
        },
    }


# ---------------------------------------------------------------------------------------
# Cache and entry points


def _params(config, n: int, pitch_method: str) -> dict:
    return {
        "design_version": DESIGN_VERSION,
        "turns": n,
        "pitch_method": pitch_method,
        "voice": config.tts.piper.model.model_dump(exclude_none=True) if config.tts.piper else None,
        "reference_dbfs": REFERENCE_DBFS,
    }


def _cached(manifest_path: Path, params: dict) -> list[StyledTurn] | None:
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("params") != params:
        return None
    turns = [StyledTurn.from_dict(d) for d in manifest["turns"]]
    return turns if all(t.path.exists() for t in turns) else None


def styled_turns(
    config,
    n: int,
    *,
    pitch_method: str = "resample",
    human: bool = False,
    folder: Path = STYLES_DIR,
    force: bool = False,
    whisper=None,
) -> tuple[list[StyledTurn], dict]:
    """The styled turns (rendered, or reused from ``folder``) and the manifest. With
    ``whisper`` every turn is also verified (transcript, WER, features). The questions are
    kept per pitch method and turn count, the human recordings apart (they depend on
    neither); each with a manifest.json."""
    if pitch_method == "sox" and not shutil.which("sox"):
        raise SystemExit("--pitch-method sox needs sox (apt-get install sox)")
    parts = [
        ("questions", folder / f"{pitch_method}_{n}", _params(config, n, pitch_method)),
    ]
    if human:
        parts.append(
            (
                "human",
                folder / "human",
                {"design_version": DESIGN_VERSION, "reference_dbfs": REFERENCE_DBFS},
            )
        )
    all_turns, all_params = [], {}
    for name, sub, params in parts:
        manifest_path = sub / "manifest.json"
        turns = None if force else _cached(manifest_path, params)
        if turns is None:
            if name == "questions":
                turns = render_questions(config, n, sub, pitch_method, whisper=whisper)
            else:
                turns = render_human(sub)
        if whisper is not None and any(t.wer is None for t in turns):
            verify(turns, whisper)
        manifest = {"params": params, "turns": [t.as_dict() for t in turns]}
        sub.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=2))
        all_turns += turns
        all_params[name] = {**params, "folder": str(sub)}
    manifest = {"params": all_params, "turns": [t.as_dict() for t in all_turns]}
    if all(t.wer is not None for t in all_turns):
        manifest["summary"] = summarize(all_turns)
    return all_turns, manifest


def summarize(turns: list[StyledTurn]) -> dict:
    out = {}
    for set_name in sorted({t.set for t in turns}):
        rows = [t for t in turns if t.set == set_name]
        sources = sorted({s for t in rows for s in t.measured})
        out[set_name] = {
            "turns": len(rows),
            "wer_max": max((t.wer for t in rows if t.wer is not None), default=None),
            "wer_mean": round(float(np.mean([t.wer for t in rows if t.wer is not None])), 4),
            "neutral_wer_mean": round(
                float(np.mean([t.neutral_wer for t in rows if t.neutral_wer is not None])), 4
            ),
            "wer_over_limit": [t.path.name for t in rows if not t.checks.get("wer_ok")],
            "features_from": sources,
            "correlations": {s: feature_correlations(rows, s) for s in sources},
            "outside_tolerance": {
                s: [
                    f"{t.path.name}:{k}"
                    for t in rows
                    for k, ok in t.checks.get(f"{s}_within_tolerance", {}).items()
                    if not ok
                ]
                for s in sources
            },
        }
    return out


def load_whisper(config):
    from faster_whisper import WhisperModel

    from agent.models import resolve_model

    return WhisperModel(
        str(resolve_model(config.asr.model, "asr")),
        compute_type=config.asr.compute_type,
        cpu_threads=config.asr.cpu_threads,
    )


def table(turns: list[StyledTurn], source: str = "reference") -> str:
    head = (
        f"{'turn':<28} {'rate x':>6} {'meas':>6} {'loud dB':>7} {'meas':>6} "
        f"{'pitch st':>8} {'meas':>6} {'dBFS':>6} {'F0 Hz':>6} {'syl/s':>5} {'WER':>5} "
        f"{'WER0':>5} {'try':>3}"
    )
    lines = [
        (
            f"features: {source}; meas = change vs the neutral rendering; WER0 = WER of the "
            "neutral rendering; try = renderings until Whisper understood it"
        ),
        head,
    ]
    for t in turns:
        change = t.checks.get(f"{source}_change", {})
        feats = t.measured.get(source, {})
        rate_meas = 2 ** change["rate_log2"] if change.get("rate_log2") is not None else None

        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"

        lines.append(
            f"{t.path.name[:28]:<28} {t.intended['rate']:>6.2f} {f(rate_meas, '>6.2f')} "
            f"{t.intended['loudness_db']:>+7.1f} {f(change.get('loudness_db'), '>+6.1f')} "
            f"{t.intended['pitch_semitones']:>+8.1f} {f(change.get('pitch_semitones'), '>+6.1f')} "
            f"{f(feats.get('loudness_dbfs'), '>6.1f')} {f(feats.get('f0_median_hz'), '>6.0f')} "
            f"{f(feats.get('syllable_rate'), '>5.1f')} {f(t.wer, '>5.2f')} "
            f"{f(t.neutral_wer, '>5.2f')} {t.intended.get('render_attempts', '-'):>3}"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument(
        "--turns", type=int, default=24, help="user turns: half as many questions, each asked twice"
    )
    parser.add_argument("--pitch-method", choices=["resample", "sox"], default="resample")
    parser.add_argument("--human", action="store_true", help="add the human recordings")
    parser.add_argument("--force", action="store_true", help="render again")
    parser.add_argument("--out", default="out/benchmarks/speech_styles.json")
    args = parser.parse_args()
    from agent.config import load_config
    from benchmarks.report import write_report

    config = load_config(args.config)
    turns, manifest = styled_turns(
        config,
        args.turns,
        pitch_method=args.pitch_method,
        human=args.human,
        force=args.force,
        whisper=load_whisper(config),
    )
    for source in sorted({s for t in turns for s in t.measured}):
        print(table(turns, source))
    print(json.dumps(manifest["summary"], indent=2))
    print(f"report: {write_report(manifest, args.out)}")


if __name__ == "__main__":
    main()
