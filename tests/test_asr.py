"""Whisper over the utterance's own window hears what the full 30 s window hears."""

from __future__ import annotations

import numpy as np
import pytest

from agent.asr.whisper import ShortUtteranceWhisper, ended_early, repeats_itself
from agent.audio import load_input_wav
from agent.config import load_config
from agent.models import resolve_model
from pipelines.callers.answer_set import CONVERSATION_QUESTIONS
from tests.conftest import QUESTIONS, speak, wer


def test_utterance_window_transcribes_like_the_full_window(stack):
    short = ShortUtteranceWhisper(stack.whisper, utterance_window=True)
    full = ShortUtteranceWhisper(stack.whisper, utterance_window=False)
    refs, short_hyps, full_hyps = [], [], []
    # All twelve everyday questions: Piper's voice varies from run to run, and over five
    # one garbled clip ("What colors does this guy want a clear day?") failed the test.
    for question in CONVERSATION_QUESTIONS:
        audio = speak(stack, question).astype(np.float32) / 32768
        audio = np.concatenate([audio, np.zeros(8000, np.float32)])
        refs.append(question)
        short_hyps.append(" ".join(s.text for s in short.transcribe(audio, language="en")[0]))
        full_hyps.append(" ".join(s.text for s in full.transcribe(audio, language="en")[0]))
    short_wer = np.mean([wer(r, h) for r, h in zip(refs, short_hyps)])
    full_wer = np.mean([wer(r, h) for r, h in zip(refs, full_hyps)])
    # Over these 12 questions the utterance window costs about 0.035 WER
    # (benchmarks/asr_window.py).
    assert short_wer <= full_wer + 0.1, (short_hyps, full_hyps)
    assert short_wer <= 0.15, short_hyps


def test_silence_is_not_transcribed_as_words(stack):
    short = ShortUtteranceWhisper(stack.whisper)
    segments, _ = short.transcribe(np.zeros(16000 * 2, np.float32), language="en")
    # Pipecat's service drops segments Whisper itself thinks are not speech.
    assert all(s.no_speech_prob > 0.5 or not s.text.strip() for s in segments), segments


def test_long_audio_uses_the_ordinary_path(stack):
    short = ShortUtteranceWhisper(stack.whisper, max_short_secs=1.0)
    audio = speak(stack, QUESTIONS[0]).astype(np.float32) / 32768
    segments, info = short.transcribe(audio, language="en")
    assert info is not None  # faster-whisper's own result, with its TranscriptionInfo
    assert wer(QUESTIONS[0], " ".join(s.text for s in segments)) <= 0.2


def test_early_transcription_answers_the_same_speech_with_silence_after(stack):
    whisper = ShortUtteranceWhisper(stack.whisper)
    speech = speak(stack, QUESTIONS[0]).astype(np.float32) / 32768
    trailing = np.zeros(8000, np.float32)
    expected = whisper.transcribe(np.concatenate([speech, trailing]), language="en")[0][0].text
    # The voice fell silent: transcription starts on the speech so far...
    whisper.transcribe_early(speech, trailing, "en")
    # ...and the segment asked for a moment later (0.2 s more silence) gets that result.
    segment = np.concatenate([speech, np.zeros(3200, np.float32), trailing])
    (utterance,), _ = whisper.transcribe(segment, language="en")
    assert whisper.early_hits == 1 and utterance.text == expected


def test_early_transcription_is_not_used_when_the_user_went_on(stack):
    whisper = ShortUtteranceWhisper(stack.whisper)
    first = speak(stack, "What is the capital").astype(np.float32) / 32768
    rest = speak(stack, "of France?").astype(np.float32) / 32768
    trailing = np.zeros(8000, np.float32)
    whisper.transcribe_early(first, trailing, "en")
    (utterance,), _ = whisper.transcribe(np.concatenate([first, rest, trailing]), language="en")
    assert whisper.early_hits == 0
    # The words after the early part were heard too (Whisper's spelling of two joined
    # Piper clips varies: "of France?" once came out "A friends?").
    assert len(utterance.text.split()) >= 5, utterance.text
    # A different language is a different request too.
    whisper.transcribe_early(first, trailing, "de")
    whisper.transcribe(np.concatenate([first, trailing]), language="en")
    assert whisper.early_hits == 0


@pytest.mark.parametrize(
    "text, looping",
    [
        ("Um, um, um, um, um, um.", True),
        ("And, uh, that should be good. And, uh, that should be good.", True),
        ("Words, words, words, words.", True),
        ("Um, so this is the, um, acoustic corpus.", False),
        ("Here are some more words, words, words.", False),
        ("It is what it is.", False),
    ],
)
def test_whisper_looping_is_told_from_a_person_repeating_a_little(text, looping):
    assert repeats_itself(text) is looping


def test_the_speech_end_watch_keeps_the_segment_pipecat_keeps_whatever_the_frame_sizes():
    """An early transcription is used only for the very audio Pipecat's segmented STT sends:
    the last second before the VAD start, to the sample, then the speech (a phone line's
    frames, resampled from 8 kHz, are not all 320 samples long)."""
    from agent.asr.speech_end import SpeechEndWatch

    rng = np.random.default_rng(0)
    watch = SpeechEndWatch()
    pipecat = bytearray()  # SegmentedSTTService.process_audio_frame's buffer, as it keeps it
    for i in range(150):
        if i == 100:
            watch.speech_started()
        frame = rng.normal(0, 2000, int(rng.choice([318, 320, 322, 160]))).astype(np.int16)
        watch.add(frame.tobytes(), 16000)
        pipecat += frame.tobytes()
        if i < 100 and len(pipecat) > 32000:
            pipecat = pipecat[len(pipecat) - 32000 :]
    assert np.array_equal(watch.segment(), np.frombuffer(bytes(pipecat), np.int16))


@pytest.mark.parametrize(
    ("text", "secs", "answered"),
    [
        ("Thank you.", 1.2, True),
        ("Thank you.", 120.0, False),  # what 120 s of crowd babble came out as
        ("So, um, I was thinking we could go to the lake on Sunday if it is warm.", 7.0, True),
        ("What is the what is the what is the what is the", 8.0, False),
        ("No, no, no, no.", 1.5, True),
        ("I'm sorry, I'm sorry, I'm sorry.", 2.5, True),
        ("", 3.0, True),  # nothing to answer anyway; not this rule's business
    ],
)
def test_words_no_person_says_to_the_bot_are_not_answered(text, secs, answered):
    from agent.asr.whisper import meaningless

    assert (meaningless(text, secs) is None) == answered


def test_a_word_lost_in_a_long_stretch_of_noise_is_not_a_turn(stack):
    """Real Whisper: two words, then ten seconds of loud machine hum in one segment."""
    short = ShortUtteranceWhisper(stack.whisper)
    words = speak(stack, "Thank you.").astype(np.float32) / 32768
    t = np.arange(16000 * 10) / 16000
    hum = 0.3 * np.sign(np.sin(2 * np.pi * 110 * t)) + 0.05 * np.random.default_rng(0).normal(
        size=t.size
    )
    audio = np.concatenate([words, hum.astype(np.float32), np.zeros(4000, np.float32)])
    segments, _ = short.transcribe(audio, language="en")
    assert segments == [], segments
    # The same words alone are a turn.
    segments, _ = short.transcribe(np.concatenate([words, np.zeros(8000, np.float32)]), "en")
    assert "thank" in " ".join(s.text for s in segments).lower()


@pytest.mark.parametrize(
    "text, secs, early",
    [
        ("Please", 3.3, True),  # the first word of "Please enter your password ..."
        ("change", 1.8, True),  # "Change to which folder?"
        ("No.", 1.1, False),  # a one-word turn
        ("Press 1-4. New messages.", 4.0, False),  # slow, with a pause
        ("Go forward 10 meters.", 2.05, False),
    ],
)
def test_too_few_words_for_the_audio_is_whisper_ending_early(text, secs, early):
    assert ended_early(text, secs) == early


def test_the_default_whisper_hears_a_turn_it_would_end_after_a_word(asterisk):
    """The default config's Whisper (base) stops after "Please" on this human prompt in a
    10 s window; heard again over the full window, the whole sentence comes back."""
    from faster_whisper import WhisperModel

    asr = load_config("default").asr
    model = WhisperModel(
        str(resolve_model(asr.model, "asr")), device="cpu", compute_type=asr.compute_type
    )
    whisper = ShortUtteranceWhisper(
        model, min_window_secs=asr.min_window_secs, filler_prompt=asr.filler_prompt
    )
    samples, _ = load_input_wav(asterisk.folder / "enter-num-blacklist.wav", 16000)
    _, text = asterisk("enter-num-blacklist")
    (utterance,), _ = whisper.transcribe(samples.astype(np.float32) / 32768, language="en")
    assert wer(text, utterance.text) <= 0.2, utterance.text
