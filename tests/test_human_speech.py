"""pipelines/callers/human_speech.py without downloads: TextGrids, trimming, paused turns, level."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.callers.human_speech import (
    JOIN,
    MINIMUM,
    PAD,
    PAUSED_BETWEEN,
    PAUSED_MID,
    PAUSED_MID_PROMPTS,
    Clip,
    Sources,
    find_words,
    joined,
    leveled,
    paused,
    prompt_text,
    read_alignment,
    read_tier,
    speech_frames,
    textgrid_clip,
    trimmed,
)

RATE = 16000
SHORT = """File type = "ooTextFile"
Object class = "TextGrid"

0
2
<exists>
1
"IntervalTier"
"words"
0
2
5
0
0.5
""
0.5
0.9
"so"
0.9
0.905
"uh"
0.905
1.2
""
1.2
1.6
"uh"
"""
LONG = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 1
tiers? <exists>
size = 1
item []:
    item [1]:
        class = "IntervalTier"
        name = "word"
        xmin = 0
        xmax = 1
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 0.4
            text = "mary"
        intervals [2]:
            xmin = 0.4
            xmax = 1
            text = ""
"""


def tone(secs: float, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(round(secs * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def clip(audio: np.ndarray, text: str) -> Clip:
    return Clip(trimmed(audio, RATE, 0, len(audio)), RATE, text, "test", "MIT", "someone")


def test_read_tier_short_and_long_format(tmp_path):
    (tmp_path / "s.TextGrid").write_text(SHORT)
    (tmp_path / "l.TextGrid").write_text(LONG)
    assert read_tier(tmp_path / "s.TextGrid")[1] == (0.5, 0.9, "so")
    assert read_tier(tmp_path / "l.TextGrid", "word") == [(0, 0.4, "mary"), (0.4, 1, "")]
    with pytest.raises(ValueError, match="no interval tier 'phones'"):
        read_tier(tmp_path / "l.TextGrid", "phones")


def test_find_words_skips_silence_and_an_aligners_sliver(tmp_path):
    (tmp_path / "s.TextGrid").write_text(SHORT)
    tier = read_tier(tmp_path / "s.TextGrid")
    assert find_words(tier, "so uh") == (1, 2)
    assert find_words(tier, "uh", after=0.9, min_secs=0.1) == (4, 4)


def test_textgrid_clip_pads_with_silence_only(tmp_path):
    (tmp_path / "s.TextGrid").write_text(SHORT)
    tier = read_tier(tmp_path / "s.TextGrid")
    audio = np.full(2 * RATE, 1000, np.int16)
    cut = textgrid_clip(audio, RATE, tier, "so", source="t", license="MIT", speaker="x")
    assert cut.speech_secs == pytest.approx(0.4)
    assert cut.audio[: round(PAD * RATE) // 2].any()  # the silence before "so" is kept
    assert not cut.audio[-round(PAD * RATE) :].any()  # "uh" follows at once: zeros


def test_trimming_keeps_pad_around_speech():
    audio = np.concatenate([np.zeros(RATE, np.int16), tone(0.5), np.zeros(RATE, np.int16)])
    speech = np.flatnonzero(speech_frames(audio, RATE))
    assert (speech[0], speech[-1] + 1) == (100, 150)
    assert len(trimmed(audio, RATE, RATE, RATE + RATE // 2)) == round((0.5 + 2 * PAD) * RATE)


def test_paused_turn_timing_with_and_without_filler():
    first, second, um = clip(tone(1.0), "one"), clip(tone(0.8), "two"), clip(tone(0.3), "um")
    turn, fields = paused(first, second, 0.6)
    assert turn.transcript == "one two" and fields["first_part"] == "one"
    assert fields["gap_at_secs"] == pytest.approx(1.0 + PAD)
    assert len(turn.audio) / RATE == pytest.approx(PAD + 1.0 + 0.6 + 0.8 + PAD)
    turn, fields = paused(first, second, 0.8, um)
    assert turn.transcript == "one um two" and fields["filler"]
    assert fields["gap_secs"] == pytest.approx(1.1)
    assert fields["filler_at_secs"] == pytest.approx(fields["gap_at_secs"] + 0.4)
    with pytest.raises(ValueError, match="shorter than the padding"):
        paused(first, second, 0.4, um)


def test_leveled_sets_active_speech_level():
    audio, gain = leveled(np.concatenate([np.zeros(RATE, np.int16), tone(1.0, 500)]), RATE)
    rms = np.sqrt(np.mean(audio[RATE:].astype(np.float64) ** 2)) / 32768
    assert 20 * np.log10(rms) == pytest.approx(-26, abs=0.2)
    assert gain > 0


def test_read_alignment_of_pocketsphinx_json(tmp_path):
    words = [{"b": 0.0, "d": 0.2, "t": "<sil>"}, {"b": 0.2, "d": 0.13, "t": "was(2)"},
             {"b": 0.33, "d": 0.5, "t": "not"}]  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps({"b": 0, "d": 0.83, "w": words}))
    tier = read_alignment(tmp_path / "a.json")
    assert tier == [(0.0, 0.2, ""), (0.2, 0.33, "was"), (0.33, 0.83, "not")]
    assert find_words(tier, "was not") == (1, 2)


def test_prompt_text_reads_as_one_sentence():
    first = prompt_text(["If this is correct, press..."], closing=False)
    assert first == "If this is correct, press"
    assert prompt_text(["Removed."], opening=False) == "removed."
    rest = prompt_text(["three", "... letters of your party's last name."], opening=False)
    assert rest == "three letters of your party's last name."
    assert prompt_text(["you have"], closing=False) == "You have"
    assert prompt_text(["I'm sorry", "Goodbye"]) == "I'm sorry goodbye."


def test_joined_prompts_keep_little_silence_between_them():
    one, two = clip(tone(0.5), "one"), clip(tone(0.3), "two")
    phrase = joined([one, two], "one two")
    assert phrase.transcript == "one two" and phrase.source == "test + test"
    assert phrase.speech_secs == pytest.approx(0.5 + 2 * JOIN + 0.3)
    speech = np.flatnonzero(speech_frames(phrase.audio, RATE))
    assert np.diff(speech).max() * 0.01 <= 2 * JOIN + 0.02  # no pause inside the phrase


class FakeSources(Sources):
    """Sources with one aligned recording: "so uh" at 0.5-0.905 s, "uh" at 1.2-1.6 s (SHORT),
    then "the cat" at 2.0-2.6 s."""

    def __init__(self, tmp_path):
        (tmp_path / "s.TextGrid").write_text(SHORT)
        rest = [(1.6, 2.0, ""), (2.0, 2.3, "THE"), (2.3, 2.6, "cat"), (2.6, 3.0, "")]
        self.tier = read_tier(tmp_path / "s.TextGrid") + rest
        silence = np.zeros(RATE // 2, np.int16)
        self.audio = np.concatenate([silence, tone(2.1), silence])

    def aligned(self, origin):
        tier = [(s, e, label.lower()) for s, e, label in self.tier]
        return self.audio, RATE, tier, {"source": origin, "license": "MIT", "speaker": "x"}


def test_paused_mid_cuts_at_the_bar_with_the_speakers_filler(tmp_path):
    turn, fields = FakeSources(tmp_path).paused_mid("rec", "the | cat", "uh", 0.8)
    assert turn.transcript == "the uh cat" and fields["first_part"] == "the"
    assert fields["gap_at_secs"] == pytest.approx(PAD + 0.3)
    assert fields["filler_word"] == "uh"  # none after "the": the first long enough one
    assert fields["gap_secs"] == pytest.approx(0.8 + 0.4)
    turn, fields = FakeSources(tmp_path).paused_mid("rec", "uh | the", None, 0.4)
    assert turn.transcript == "uh the" and not fields["filler"]  # the sliver "uh" is not it
    assert fields["gap_at_secs"] == pytest.approx(PAD + 0.4)
    assert len(turn.audio) / RATE == pytest.approx(PAD + 0.4 + 0.4 + 0.3 + PAD)


def test_paused_tables():
    assert len(PAUSED_MID) + len(PAUSED_MID_PROMPTS) >= MINIMUM["paused_mid"]
    assert len(PAUSED_BETWEEN) >= MINIMUM["paused_between"]
    mid_silences = [t[-1] for t in PAUSED_MID + PAUSED_MID_PROMPTS]
    assert all(0.4 <= s <= 1.2 for s in mid_silences) and len(set(mid_silences)) >= 5
    for origin, sentence, filler, silence in PAUSED_MID:
        first, second = sentence.split("|")
        assert first.strip() and second.strip() and sentence.count("|") == 1
        assert not first.strip().endswith((".", "?", "!"))
        if filler:  # only the MFA author's own "um"/"uh", and room for it in the silence
            assert "/" not in origin and filler in ("um", "uh") and silence >= 2 * 2 * PAD
    fillers = sum(bool(t[2]) for t in PAUSED_MID)
    assert fillers >= (len(PAUSED_MID) + len(PAUSED_MID_PROMPTS)) / 3
