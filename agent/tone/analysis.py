"""How a user's turn sounded: pitch, expressiveness, loudness, tempo and pausing.

``analyze_tone`` takes the audio captured for one user turn (mono int16, or float in
[-1, 1]; the capture runs from shortly before speech to its end) and measures:

* where speech is: 20 ms frames (10 ms apart) whose energy clears a threshold set from the
  turn itself (30 dB under its loud frames; 6 dB over its noise floor when it has one) and
  an absolute floor of -65 dBFS, so a quiet speaker still registers and a silent capture
  does not. Gaps of 0.15 s or more inside the span from first to last speech are pauses;
  shorter gaps (stop closures, breaths between words) count as speech.
* pitch with Praat's autocorrelation tracker (through parselmouth, 60..600 Hz): the median
  F0 of the voiced speech frames and their 10th..90th percentile span in semitones, frames
  more than an octave from the median left out as tracking errors.
* loudness: RMS over the speech (non-pause) part of the span, in dB re full scale
  (a full-scale square wave is 0 dBFS, a full-scale sine -3 dBFS); DC is removed first.
* tempo: syllables per second of speech time. With a transcript the syllables are counted
  from its spelling (``count_syllables``); without one they are the syllable nuclei found
  in the audio: peaks of the vowel-band (250..2500 Hz) intensity contour that are voiced
  and rise at least 2 dB above the dips separating them from their neighbours (after de
  Jong & Wempe 2009, "Praat script to detect syllable nuclei and measure speech rate
  automatically"). Nuclei miss some unstressed syllables, so on the same speech they read
  about 10% under the transcript count (more in noise: about 20% at 10 dB SNR).

It is cheap (about 25 ms for a 5 s turn on a 2-core machine, most of it the pitch tracker)
and uses only numpy and parselmouth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.tone.syllables import count_syllables

HOP_SECS = 0.01  # speech frames are two hops (20 ms) long, one hop apart
MIN_PAUSE_SECS = 0.15
# Speech shorter than this with pauses (or nothing) on both sides is a click, not speech.
MIN_SEGMENT_SECS = 0.06
# Nothing quieter than this is speech, however quiet the rest of the turn.
ABS_FLOOR_DBFS = -65.0
# Speech frames lie within this many dB of the turn's loud frames ...
SPEECH_RANGE_DB = 30.0
# ... and, when the capture holds a noise floor distinct from its speech, this far above it.
NOISE_MARGIN_DB = 6.0
# Levels below this are reported as this (digital silence has no finite level).
SILENCE_DBFS = -120.0

PITCH_FLOOR_HZ = 60.0
PITCH_CEILING_HZ = 600.0
# Fewer voiced frames than this (10 ms each) give no pitch.
MIN_VOICED_FRAMES = 3
# Voiced frames further than this from the turn's median are tracking errors, not intonation.
OUTLIER_SEMITONES = 12.0

# Syllable nuclei: the intensity of the vowel band (250..2500 Hz, where vowels are strong and
# fricatives weak), in 5 ms steps smoothed by a ~50 ms Hann window. A nucleus is a voiced
# peak within NUCLEUS_RANGE_DB of the turn's loudest that rises NUCLEUS_MIN_DIP_DB above the
# dips separating it from higher peaks (de Jong & Wempe use 2 dB).
NUCLEUS_BAND_HZ = (250.0, 2500.0)
NUCLEUS_STEP_SECS = 0.005
NUCLEUS_SMOOTH_SECS = 0.05
NUCLEUS_RANGE_DB = 25.0
NUCLEUS_MIN_DIP_DB = 2.0


@dataclass(frozen=True)
class ToneFeatures:
    """How one turn sounded. See the module docstring for how each figure is measured."""

    f0_median_hz: float | None  # median F0 over voiced frames; None if nothing voiced
    f0_range_semitones: float | None  # 10th..90th percentile F0 span in semitones
    loudness_dbfs: float  # RMS level over speech (non-pause) frames, dB re full scale
    syllable_rate: float  # syllables per second of speech time (pauses excluded)
    pause_ratio: float  # share of the first-to-last speech span spent in pauses >= 0.15 s
    speech_secs: float  # speech time (span minus pauses)


def analyze_tone(
    samples: np.ndarray, sample_rate: int, transcript: str | None = None
) -> ToneFeatures:
    """Measure how a turn sounded from its audio (and, for the syllable rate, its words).

    ``samples`` is mono audio: int16 (or any integer type, scaled by its full range) or
    float with full scale 1.0. NaN and infinite values are read as 0. With no speech found,
    rate, pause ratio and speech time are 0, pitch is None, and loudness is the level of
    the whole capture. Raises ValueError for empty audio or a non-positive sample rate.
    """
    x = _as_float_mono(samples)
    x = x - x.mean()
    if not (
        isinstance(sample_rate, (int, float, np.integer, np.floating))
        and math.isfinite(sample_rate)
        and sample_rate > 0
    ):
        raise ValueError(f"sample_rate must be a positive number, got {sample_rate!r}")
    sample_rate = float(sample_rate)
    hop = max(1, round(HOP_SECS * sample_rate))
    hop_secs = hop / sample_rate

    blocks = _block_energies(x, hop)  # mean square per 10 ms block
    frames_db = _db(0.5 * (blocks[:-1] + blocks[1:]) if len(blocks) > 1 else blocks)
    # Frame i spans blocks i and i+1; its label covers the 10 ms around its centre,
    # i.e. [(i + 0.5) hop, (i + 1.5) hop].
    speech = frames_db >= _speech_threshold(frames_db)
    segments = _speech_segments(speech, hop_secs)
    if not segments:
        return ToneFeatures(
            f0_median_hz=None,
            f0_range_semitones=None,
            loudness_dbfs=_db(np.mean(x * x)),
            syllable_rate=0.0,
            pause_ratio=0.0,
            speech_secs=0.0,
        )
    offset = 0.5 * hop_secs if len(blocks) > 1 else 0.0
    duration = len(x) / sample_rate
    seconds = [
        (max(0.0, a * hop_secs + offset), min(duration, b * hop_secs + offset)) for a, b in segments
    ]
    span = seconds[-1][1] - seconds[0][0]
    speech_secs = sum(b - a for a, b in seconds)
    pause_ratio = 1.0 - speech_secs / span if span > 0 else 0.0

    bounds = [(round(a * sample_rate), round(b * sample_rate)) for a, b in seconds]
    energy = sum(float(np.sum(x[a:b] ** 2)) for a, b in bounds)
    count = sum(b - a for a, b in bounds)
    loudness = _db(energy / count) if count else _db(np.mean(x * x))

    times, f0 = _pitch_track(x, sample_rate, seconds[0][0], seconds[-1][1])
    in_speech = _inside(times, seconds)
    f0_median, f0_range = _pitch_stats(f0[(f0 > 0) & in_speech])

    syllables = count_syllables(transcript) if transcript else 0
    if not syllables:  # no transcript, or nothing speakable in it
        syllables = len(syllable_nuclei(x, sample_rate, seconds, times, f0))
    rate = syllables / speech_secs if speech_secs > 0 else 0.0

    return ToneFeatures(
        f0_median_hz=f0_median,
        f0_range_semitones=f0_range,
        loudness_dbfs=loudness,
        syllable_rate=float(rate),
        pause_ratio=float(min(1.0, max(0.0, pause_ratio))),
        speech_secs=float(speech_secs),
    )


def syllable_nuclei(
    x: np.ndarray,
    sample_rate: float,
    segments: list[tuple[float, float]],
    pitch_times: np.ndarray,
    f0: np.ndarray,
) -> list[float]:
    """Times (seconds) of the syllable nuclei in x: voiced, prominent peaks of the vowel-band
    intensity inside the speech ``segments`` ((start, end) seconds), voicing read from the
    pitch track ``pitch_times``/``f0`` (0 where unvoiced)."""
    if not segments or len(pitch_times) == 0:
        return []
    step = max(1, round(NUCLEUS_STEP_SECS * sample_rate))
    step_secs = step / sample_rate
    start = max(0, int(segments[0][0] * sample_rate) - step)
    end = min(len(x), math.ceil(segments[-1][1] * sample_rate) + step)
    if end - start < 3 * step:
        return []
    n_fft = 1 << (end - start - 1).bit_length()  # a power of two: fast whatever the length
    spectrum = np.fft.rfft(x[start:end], n_fft)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    low, high = NUCLEUS_BAND_HZ
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    band = np.fft.irfft(spectrum, n_fft)[: end - start]
    blocks = _block_energies(band, step)
    taps = max(3, round(NUCLEUS_SMOOTH_SECS / step_secs))
    kernel = np.hanning(taps + 2)[1:-1]
    level = _db(np.convolve(blocks, kernel / kernel.sum(), mode="same"))
    centres = start / sample_rate + (np.arange(len(level)) + 0.5) * step_secs
    inside = _inside(centres, segments)
    if not inside.any():
        return []
    floor = np.max(level[inside]) - NUCLEUS_RANGE_DB

    # Local maxima (the first sample of a flat top) loud enough and inside speech.
    rising = np.diff(level) > 0
    peaks = np.flatnonzero(rising[:-1] & ~rising[1:]) + 1
    peaks = peaks[(level[peaks] >= floor) & inside[peaks]]
    if len(peaks) == 0:
        return []
    voiced_times = pitch_times[f0 > 0]
    nuclei = []
    for p in peaks:
        if _prominence(level, p) < NUCLEUS_MIN_DIP_DB:
            continue
        t = centres[p]
        # Voiced at the peak or a pitch frame next to it.
        if len(voiced_times) and np.min(np.abs(voiced_times - t)) <= 1.5 * HOP_SECS:
            nuclei.append(float(t))
    return nuclei


def _pitch_stats(voiced_hz: np.ndarray) -> tuple[float | None, float | None]:
    """Median F0 and 10th..90th percentile span in semitones of the voiced frames, leaving
    out frames more than an octave from the median: octave jumps, and noise that the
    tracker reads as voicing (low-frequency rumble looks periodic near the pitch ceiling)."""
    if len(voiced_hz) < MIN_VOICED_FRAMES:
        return None, None
    semitones = 12.0 * np.log2(voiced_hz)
    near = np.abs(semitones - np.median(semitones)) <= OUTLIER_SEMITONES
    if near.sum() >= MIN_VOICED_FRAMES:
        semitones = semitones[near]
    low, high = np.percentile(semitones, [10, 90])
    return float(2.0 ** (np.median(semitones) / 12.0)), float(high - low)


def _prominence(level: np.ndarray, p: int) -> float:
    """How far peak p rises above the higher of the lowest points between it and the
    nearest higher peak on each side (or the end). Of equal peaks the first counts as the
    higher, so a flat stretch with ripple has one nucleus, not one per ripple."""
    height = level[p]
    higher = np.flatnonzero(level[:p] >= height)
    left = higher[-1] + 1 if len(higher) else 0
    higher = np.flatnonzero(level[p + 1 :] > height)
    right = p + 1 + higher[0] if len(higher) else len(level)
    left_min = level[left : p + 1].min()
    right_min = level[p:right].min()
    return float(height - max(left_min, right_min))


# --- signal helpers -----------------------------------------------------------------------


def _as_float_mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.size == 0:
        raise ValueError("empty audio: analyze_tone needs at least one sample")
    if x.ndim > 1:
        x = np.squeeze(x)
        if x.ndim > 1:  # several channels: average them (channels on the shorter axis)
            axis = int(np.argmin(x.shape))
            x = x.astype(np.float64).mean(axis=axis).ravel()
        x = np.atleast_1d(x)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        scale = float(-info.min) if info.min < 0 else (info.max + 1) / 2.0
        centre = 0.0 if info.min < 0 else scale
        return (x.astype(np.float64) - centre) / scale
    if x.dtype.kind == "b":
        return x.astype(np.float64)
    if x.dtype.kind == "c":
        x = x.real
    x = np.asarray(x, dtype=np.float64)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _block_energies(x: np.ndarray, hop: int) -> np.ndarray:
    n = -(-len(x) // hop)
    padded = np.zeros(n * hop)
    padded[: len(x)] = x
    energies = np.mean(padded.reshape(n, hop) ** 2, axis=1)
    if len(x) % hop:  # the last block's mean over the samples it has
        energies[-1] *= hop / (len(x) % hop)
    return energies


def _db(power):
    out = 10.0 * np.log10(np.maximum(power, 10.0 ** (SILENCE_DBFS / 10.0)))
    return float(out) if np.ndim(out) == 0 else out


def _speech_threshold(frames_db: np.ndarray) -> float:
    loud = float(np.percentile(frames_db, 95))
    noise = float(np.percentile(frames_db, 10))
    # The noise term only counts when there is a floor to speak of, well under the loud
    # frames: a capture that is all speech (or one steady tone) must still be speech.
    noise_term = min(noise + NOISE_MARGIN_DB, loud - 2 * NOISE_MARGIN_DB)
    return max(ABS_FLOOR_DBFS, loud - SPEECH_RANGE_DB, noise_term)


def _speech_segments(speech: np.ndarray, hop_secs: float) -> list[tuple[int, int]]:
    """Runs of speech frames as [start, end) frame indices: gaps shorter than a pause
    bridged, then isolated runs shorter than MIN_SEGMENT_SECS dropped."""
    if not speech.any():
        return []
    padded = np.concatenate([[False], speech, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    runs = [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2], strict=True)]
    min_gap = math.ceil(MIN_PAUSE_SECS / hop_secs - 1e-9)
    merged = [runs[0]]
    for a, b in runs[1:]:
        if a - merged[-1][1] < min_gap:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    min_len = MIN_SEGMENT_SECS / hop_secs
    kept = [(a, b) for a, b in merged if b - a >= min_len]
    return kept


def _inside(times: np.ndarray, segments: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(len(times), dtype=bool)
    for a, b in segments:
        mask |= (times >= a) & (times <= b)
    return mask


def _pitch_track(
    x: np.ndarray, sample_rate: float, start: float, end: float
) -> tuple[np.ndarray, np.ndarray]:
    """Praat's autocorrelation pitch track of x between start and end seconds (with a
    little margin): frame times in seconds from the start of x, and F0 in Hz, 0 unvoiced."""
    margin = 0.05
    a = max(0, int((start - margin) * sample_rate))
    b = min(len(x), math.ceil((end + margin) * sample_rate))
    empty = np.zeros(0), np.zeros(0)
    ceiling = min(PITCH_CEILING_HZ, 0.45 * sample_rate)
    # Praat's window spans three periods of the pitch floor; shorter sounds have no pitch.
    if (b - a) / sample_rate < 3.0 / PITCH_FLOOR_HZ or ceiling <= PITCH_FLOOR_HZ:
        return empty
    import parselmouth

    try:
        sound = parselmouth.Sound(x[a:b], sampling_frequency=sample_rate)
        pitch = sound.to_pitch_ac(
            time_step=HOP_SECS, pitch_floor=PITCH_FLOOR_HZ, pitch_ceiling=ceiling
        )
        f0 = np.nan_to_num(np.asarray(pitch.selected_array["frequency"], dtype=np.float64))
        times = np.asarray(pitch.xs(), dtype=np.float64) + a / sample_rate
    except parselmouth.PraatError:  # anything else Praat refuses to analyse
        return empty
    return times, f0
