"""How a session's tone follower reads turns against the speaker's baseline and turns them
into a bounded, smooth speaking style and a hint."""

from __future__ import annotations

import dataclasses

from agent.tone.follow import TYPICAL, FollowBounds, ToneFollower


def turn(rate=None, loudness=None, f0=None, f0_range=None):
    return dataclasses.replace(
        TYPICAL,
        syllable_rate=rate or TYPICAL.syllable_rate,
        loudness_dbfs=loudness if loudness is not None else TYPICAL.loudness_dbfs,
        f0_median_hz=f0 or TYPICAL.f0_median_hz,
        f0_range_semitones=f0_range or TYPICAL.f0_range_semitones,
    )


def test_a_hurried_loud_turn_reads_so_and_speeds_the_voice_up():
    follower = ToneFollower()
    follower.follow(turn())  # a first, typical turn sets the pitch baseline
    reading, style = follower.follow(turn(rate=7.0, loudness=-18, f0=200, f0_range=10))
    assert reading.rate_log2 > 0.2 and reading.loudness_db > 4 and reading.pitch_semitones > 2
    assert style.rate > 1.1 and style.loudness_db > 2 and style.pitch_semitones > 1
    assert style.expressiveness > 1
    hint = reading.describe()
    assert "fast" in hint and "loud" in hint and "high-pitched" in hint and "rushed" in hint


def test_a_naturally_fast_talker_stops_reading_as_hurried():
    follower = ToneFollower()
    readings = [follower.follow(turn(rate=6.5))[0] for _ in range(12)]
    assert readings[0].describe() is not None and "fast" in readings[0].describe()
    assert abs(readings[-1].rate_log2) < 0.1
    assert readings[-1].describe() is None


def test_the_style_stays_within_bounds_however_extreme_the_turn():
    bounds = FollowBounds()
    follower = ToneFollower(bounds)
    follower.follow(turn())
    for _ in range(5):
        _, style = follower.follow(turn(rate=20.0, loudness=0, f0=600, f0_range=40))
    assert style.rate <= bounds.max_rate + 1e-9
    assert style.loudness_db <= bounds.max_loudness_db + 1e-9
    assert style.pitch_semitones <= bounds.max_pitch_semitones + 1e-9
    assert style.expressiveness <= bounds.max_expressiveness + 1e-9
    follower = ToneFollower(bounds)
    follower.follow(turn())
    _, style = follower.follow(turn(rate=1.0, loudness=-70, f0=60, f0_range=0.5))
    assert style.rate >= bounds.min_rate - 1e-9
    assert style.loudness_db >= bounds.min_loudness_db - 1e-9
    assert style.pitch_semitones >= -bounds.max_pitch_semitones - 1e-9
    assert style.expressiveness >= bounds.min_expressiveness - 1e-9


def test_one_odd_turn_moves_the_voice_only_part_of_the_way():
    steady, jumpy = ToneFollower(), ToneFollower(FollowBounds(responsiveness=1.0))
    for follower in (steady, jumpy):
        for _ in range(4):
            follower.follow(turn())
    _, damped = steady.follow(turn(loudness=-16))
    _, full = jumpy.follow(turn(loudness=-16))
    assert 0 < damped.loudness_db < full.loudness_db
    _, after = steady.follow(turn())
    assert after.loudness_db < damped.loudness_db


def test_following_off_keeps_the_voice_neutral_but_still_reads_the_turn():
    follower = ToneFollower(enabled=False)
    reading, style = follower.follow(turn(rate=8.0, loudness=-15))
    assert reading.describe() is not None
    assert style == ToneFollower().style
