"""Tone following through the whole pipeline with the CPU voice (real Silero, Whisper,
SmolLM2, Piper): how the user sounds moves the reply's delivery; the LLM's context holds
only what was said."""

from __future__ import annotations

import dataclasses

from agent.audio import write_wav
from agent.tone.analysis import analyze_tone
from pipelines.local.file_mode import FileTurn, run_files
from tts.base import SpeakingStyle, SpeechContext

QUESTION = "What is the capital of France?"
HURRIED = SpeakingStyle(rate=1.45, loudness_db=6.0, pitch_semitones=2.0, expressiveness=1.3)
CALM = SpeakingStyle(rate=0.7, loudness_db=-10.0, pitch_semitones=-2.0, expressiveness=0.8)


def say(stack, text, style, path):
    """``text`` in the bundled voice with ``style``, as a 16 kHz WAV: a user who sounds so."""
    import numpy as np
    import soxr

    engine = stack.speech
    audio = np.concatenate(list(engine.synthesize(text, SpeechContext(style=style))))
    audio = soxr.resample(audio.astype(np.float32) / 32768, engine.sample_rate, 16000)
    return write_wav(path, (np.clip(audio, -1, 1) * 32767).astype(np.int16), 16000)


async def test_a_hurried_loud_question_gets_a_brisker_louder_reply_than_a_calm_quiet_one(
    stack, tmp_path
):
    hurried_wav = say(stack, QUESTION, HURRIED, tmp_path / "hurried.wav")
    calm_wav = say(stack, QUESTION, CALM, tmp_path / "calm.wav")
    # The same question twice in one conversation, hurried then calm.
    result = await run_files(stack, [FileTurn(hurried_wav), FileTurn(calm_wav)])
    hurried_turn, calm_turn = result.turns
    rate = result.output_sample_rate
    hurried_reply = analyze_tone(result.reply_audio[0], rate, hurried_turn["reply"])
    calm_reply = analyze_tone(result.reply_audio[1], rate, calm_turn["reply"])

    # The user's tone was read as intended...
    heard_hurried = hurried_turn["tone"]["features"]
    heard_calm = calm_turn["tone"]["features"]
    assert heard_hurried["syllable_rate"] > heard_calm["syllable_rate"]
    assert heard_hurried["loudness_dbfs"] > heard_calm["loudness_dbfs"] + 10
    assert heard_hurried["f0_median_hz"] > heard_calm["f0_median_hz"]
    # ...and the replies are ordered the same way.
    assert hurried_reply.syllable_rate > calm_reply.syllable_rate, (hurried_reply, calm_reply)
    assert hurried_reply.loudness_dbfs > calm_reply.loudness_dbfs + 3, (hurried_reply,
                                                                         calm_reply)
    assert hurried_reply.f0_median_hz > calm_reply.f0_median_hz, (hurried_reply, calm_reply)
    hurried_style = hurried_turn["tone"]["style"]
    calm_style = calm_turn["tone"]["style"]
    assert hurried_style["rate"] > 1 > calm_style["rate"]
    assert hurried_style["pitch_semitones"] > calm_style["pitch_semitones"]

    # How the user sounded is reported (log, page), but the LLM only reads the words:
    # small models narrate notes about the user instead of answering.
    assert "fast" in hurried_turn["tone"]["hint"] and "slow" in calm_turn["tone"]["hint"]
    assert hurried_turn["tone"]["analysis_ms"] > 0
    roles = [m["role"] for m in result.session.context.get_messages()]
    assert roles == ["user", "assistant", "user", "assistant"], roles


async def test_with_following_off_the_voice_stays_neutral(stack, tmp_path):
    config = stack.config.model_copy(update={
        "tone": stack.config.tone.model_copy(update={"follow": False})
    })
    plain = dataclasses.replace(stack, config=config)
    result = await run_files(plain, [FileTurn(say(stack, QUESTION, HURRIED, tmp_path / "q.wav"))])
    (turn,) = result.turns
    assert turn["tone"]["style"] == {"rate": 1.0, "loudness_db": 0.0, "pitch_semitones": 0.0,
                                     "expressiveness": 1.0}
    assert "fast" in turn["tone"]["hint"]  # still read and reported, only not followed
