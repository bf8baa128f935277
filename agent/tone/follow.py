"""Following the user's tone: how this turn sounded against how this speaker usually sounds,
and the delivery and words the reply should take from it.

Each turn's ToneFeatures (agent.tone.analysis) are compared with a per-session baseline: a typical
speaker to begin with, shifting toward this speaker's own average as turns accumulate, so
a naturally fast talker is not "hurried" every turn. The deviations become
- a SpeakingStyle for the voice: a fraction of the user's deviation, within bounds that keep
  speech natural, blended with the previous turn's style so one odd turn does not jump;
- a short factual hint for the LLM ("fast, loud; rushed").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from agent.tone.analysis import ToneFeatures
from tts.base import NEUTRAL_STYLE, SpeakingStyle


@dataclass(frozen=True)
class ToneReading:
    """This turn relative to the speaker's baseline (0 = as usual)."""

    rate_log2: float  # log2(rate / usual rate): +0.3 is about 23 % faster
    loudness_db: float
    pitch_semitones: float
    range_log2: float  # log2(pitch range / usual range): livelier (+) or flatter (-)

    def describe(self) -> str | None:
        """A short factual note of what stood out ("fast, loud; rushed"), or
        None if the turn sounded as usual. Short because it is prompt the LLM reads on the
        way to its first word."""
        parts = []
        if self.rate_log2 > 0.2:
            parts.append("fast")
        elif self.rate_log2 < -0.2:
            parts.append("slow")
        if self.loudness_db > 4:
            parts.append("loud")
        elif self.loudness_db < -4:
            parts.append("quiet")
        if self.pitch_semitones > 2:
            parts.append("high-pitched")
        elif self.pitch_semitones < -2:
            parts.append("low-pitched")
        if self.range_log2 > 0.4:
            parts.append("lively")
        elif self.range_log2 < -0.4:
            parts.append("flat")
        if not parts:
            return None
        mood = self.mood()
        return ", ".join(parts) + (f"; {mood}" if mood else "")

    def mood(self) -> str | None:
        energy = self.rate_log2 / 0.2 + self.loudness_db / 4 + self.pitch_semitones / 2
        if energy >= 2:
            return "rushed"
        if energy <= -2:
            return "calm"
        return None


@dataclass(frozen=True)
class FollowBounds:
    """How far the voice may move and how much of the user's deviation it mirrors."""

    gain: float = 0.9
    max_rate: float = 1.35
    min_rate: float = 0.72
    max_loudness_db: float = 4.0
    min_loudness_db: float = -6.0
    max_pitch_semitones: float = 3.5
    min_expressiveness: float = 0.7
    max_expressiveness: float = 1.4
    # Weight of this turn's target against the previous style: < 1 damps a single odd turn.
    responsiveness: float = 0.85


# A typical speaker, the starting baseline: syllables/s (pauses excluded), a capture level,
# a mid F0 between typical male and female voices, a conversational F0 range.
TYPICAL = ToneFeatures(
    f0_median_hz=160.0, f0_range_semitones=6.0, loudness_dbfs=-26.0, syllable_rate=5.2,
    pause_ratio=0.1, speech_secs=2.0,
)
# How many turns the typical speaker counts for in each baseline. Pitch has none: voices
# differ by an octave, so a pitch is only high or low against this speaker's own turns
# (the first turn sets it). Rate and level are read against typical values from the start.
PRIOR_TURNS = {"rate": 2.0, "loudness": 2.0, "pitch": 0.0, "range": 0.0}


class ToneFollower:
    """One session's baseline and current style. Not thread-safe: one per session."""

    def __init__(self, bounds: FollowBounds = FollowBounds(), enabled: bool = True):
        self.bounds = bounds
        self.enabled = enabled
        self.style = NEUTRAL_STYLE
        self._sums = {"rate": 0.0, "loudness": 0.0, "pitch": 0.0, "range": 0.0}
        self._counts = {"rate": 0.0, "loudness": 0.0, "pitch": 0.0, "range": 0.0}

    def _baseline(self, key: str, typical: float) -> float | None:
        weight = PRIOR_TURNS[key] + self._counts[key]
        if weight == 0:
            return None  # nothing to compare with yet
        return (PRIOR_TURNS[key] * typical + self._sums[key]) / weight

    def _observe(self, key: str, value: float | None) -> None:
        if value is not None and math.isfinite(value):
            self._sums[key] += value
            self._counts[key] += 1

    def reading(self, features: ToneFeatures) -> ToneReading:
        """This turn against the baseline of the turns before it (log/semitone domain)."""

        def log2_ratio(value, key, typical):
            baseline = self._baseline(key, math.log2(typical))
            if value is None or value <= 0 or baseline is None:
                return 0.0
            return math.log2(value) - baseline

        return ToneReading(
            rate_log2=log2_ratio(features.syllable_rate, "rate", TYPICAL.syllable_rate)
            if features.speech_secs > 0.3 else 0.0,
            loudness_db=features.loudness_dbfs - self._baseline("loudness",
                                                                 TYPICAL.loudness_dbfs),
            pitch_semitones=12 * log2_ratio(features.f0_median_hz, "pitch",
                                            TYPICAL.f0_median_hz),
            range_log2=log2_ratio(features.f0_range_semitones, "range",
                                  TYPICAL.f0_range_semitones),
        )

    def follow(self, features: ToneFeatures) -> tuple[ToneReading, SpeakingStyle]:
        """Read this turn, move the style toward it, then fold the turn into the baseline."""
        reading = self.reading(features)
        if self.enabled:
            self.style = self._next_style(reading)
        if features.speech_secs > 0.3:
            self._observe("rate", math.log2(features.syllable_rate)
                          if features.syllable_rate > 0 else None)
        self._observe("loudness", features.loudness_dbfs)
        if features.f0_median_hz:
            self._observe("pitch", math.log2(features.f0_median_hz))
        if features.f0_range_semitones:
            self._observe("range", math.log2(features.f0_range_semitones))
        return reading, self.style

    def _next_style(self, reading: ToneReading) -> SpeakingStyle:
        b = self.bounds

        def clamp(value, low, high):
            return min(high, max(low, value))

        target = SpeakingStyle(
            rate=clamp(2.0 ** (b.gain * reading.rate_log2), b.min_rate, b.max_rate),
            loudness_db=clamp(b.gain * reading.loudness_db, b.min_loudness_db,
                              b.max_loudness_db),
            pitch_semitones=clamp(b.gain * reading.pitch_semitones, -b.max_pitch_semitones,
                                  b.max_pitch_semitones),
            expressiveness=clamp(2.0 ** (b.gain * reading.range_log2), b.min_expressiveness,
                                 b.max_expressiveness),
        )
        w = b.responsiveness
        prev = self.style
        return SpeakingStyle(
            rate=w * target.rate + (1 - w) * prev.rate,
            loudness_db=w * target.loudness_db + (1 - w) * prev.loudness_db,
            pitch_semitones=w * target.pitch_semitones + (1 - w) * prev.pitch_semitones,
            expressiveness=w * target.expressiveness + (1 - w) * prev.expressiveness,
        )


def as_log(features: ToneFeatures, reading: ToneReading, style: SpeakingStyle,
           hint: str | None, analysis_ms: float) -> dict:
    """The turn's tone as the JSON log and the page show it."""
    return {
        "features": {k: (round(v, 3) if isinstance(v, float) else v)
                     for k, v in asdict(features).items()},
        "reading": {k: round(v, 3) for k, v in asdict(reading).items()},
        "style": {k: round(v, 3) for k, v in asdict(style).items()},
        "hint": hint,
        "analysis_ms": round(analysis_ms, 1),
    }
