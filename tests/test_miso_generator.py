"""The MisoTTS generator: the 2048-position budget, streaming == one-shot, stopping, the
codebook knob, reproducibility and bad input. Tiny random checkpoint, small random Mimi,
the real Llama-3 tokenizer."""

from __future__ import annotations

import time

import pytest
import torch

from tests.miso_setup import tiny_parts
from tts.miso.generator import ContextTooLongError, MisoGenerator, Segment

FRAME = 1920  # samples per Mimi frame at 24 kHz


# Tiny tensors: a second torch thread costs more than it saves (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_parts(tmp_path_factory.mktemp("gen"), model_seed=4, codec_seed=1)


@pytest.fixture()
def generator(parts):
    model, tokenizer, codec = parts
    generator = MisoGenerator(model, tokenizer, codec, speakers=[0, 1])
    yield generator
    generator.close()  # the model's caches serve one generator at a time


def voice(frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(frames * FRAME, generator=g)


def positions(tokenizer, text, speaker, frames):
    """Positions a segment takes, counted by hand: its text tokens, one per audio frame,
    one for the end-of-audio frame."""
    return len(tokenizer.encode_segment(text, speaker)) + frames + 1


def test_a_segment_takes_text_tokens_plus_frames_plus_one(generator, parts):
    _, tokenizer, _ = parts
    segment = Segment(0, "Hello there, how are you?", voice(7))
    tokens, mask = generator.tokenize_segment(segment)
    assert tokens.shape == (positions(tokenizer, segment.text, 0, 7), 33)
    text_len = len(tokenizer.encode_segment(segment.text, 0))
    assert mask[:text_len, -1].all() and not mask[:text_len, :-1].any()
    assert mask[text_len:, :-1].all() and not mask[text_len:, -1].any()
    assert not tokens[-1].any()  # the end-of-audio frame is all zeros


def fitting_context(tokenizer, text, max_frames, max_seq_len=2048):
    """Three segments that, with ``text`` and room for ``max_frames``, fill max_seq_len
    exactly; the last segment's text is padded so its length can be tuned per token."""
    gen = len(tokenizer.encode_segment(text, 1))
    segments = [Segment(0, "Tell me a story.", voice(200, 1)),
                Segment(1, "Once upon a time.", voice(300, 2))]
    used = sum(positions(tokenizer, s.text, s.speaker, len(s.audio) // FRAME) for s in segments)
    remaining = max_seq_len - max_frames - gen - used
    text_tokens = len(tokenizer.encode_segment("What then?", 0))
    frames = remaining - text_tokens - 1
    segments.append(Segment(0, "What then?", voice(frames, 3)))
    return segments


def test_context_that_fills_2048_exactly_is_kept_whole(generator, parts):
    _, tokenizer, _ = parts
    text = "And they lived happily ever after."
    context = fitting_context(tokenizer, text, max_frames=10)
    plan = generator.plan(text, 1, context, max_audio_secs=0.8)
    assert plan.max_frames == 10
    assert plan.dropped_segments == 0
    assert plan.tokens.shape[0] + plan.max_frames == 2048

    # One frame more in the oldest segment and it no longer fits: it is the one dropped.
    longer = [Segment(0, context[0].text, voice(201, 1))] + context[1:]
    plan = generator.plan(text, 1, longer, max_audio_secs=0.8)
    assert (plan.kept_segments, plan.dropped_segments) == (2, 1)
    kept_len = sum(positions(tokenizer, s.text, s.speaker, len(s.audio) // FRAME)
                   for s in longer[1:])
    assert plan.tokens.shape[0] == kept_len + len(tokenizer.encode_segment(text, 1))


def test_generation_at_the_full_budget_stays_within_2048_positions(generator, parts):
    _, tokenizer, _ = parts
    text = "The end."
    context = fitting_context(tokenizer, text, max_frames=6)
    chunks = list(generator.stream(text, 1, context, max_audio_secs=0.48, topk=1))
    frames = sum(c.codes.shape[1] for c in chunks)
    assert 0 < frames <= 6


def test_voice_prompt_is_never_dropped(parts):
    model, tokenizer, codec = parts
    prompt = Segment(1, "This is how I sound.", voice(50, 9))
    generator = MisoGenerator(model, tokenizer, codec, voice_prompt=prompt)
    prompt_len = positions(tokenizer, prompt.text, 1, 50)
    old = [Segment(0, f"Turn {i}.", voice(400, i)) for i in range(6)]
    plan = generator.plan("Okay.", 1, old, max_audio_secs=2)
    assert plan.dropped_segments > 0
    assert torch.equal(plan.tokens[:prompt_len], generator.tokenize_segment(prompt)[0])
    assert plan.tokens.shape[0] + plan.max_frames <= 2048
    generator.close()


def test_text_too_long_for_the_budget_is_refused(generator):
    with pytest.raises(ContextTooLongError, match="shorten the text"):
        generator.plan("word " * 2100, 1, [], max_audio_secs=1)
    with pytest.raises(ContextTooLongError, match="audio frames"):
        generator.plan("A short sentence.", 1, [], max_audio_secs=200)


def test_streaming_equals_one_shot_and_starts_after_one_frame(generator):
    context = [Segment(0, "Hi there.", voice(20, 5))]
    options = {"max_audio_secs": 1.2, "temperature": 0.8, "topk": 30, "seed": 7}
    chunks = list(generator.stream("Hello, nice to meet you.", 1, context,
                                   first_chunk_frames=1, chunk_frames=4, **options))
    assert chunks[0].codes.shape[1] == 1 and len(chunks[0].audio) == FRAME
    assert all(c.codes.shape[1] <= 4 for c in chunks)
    whole = generator.generate("Hello, nice to meet you.", 1, context, **options)
    streamed_codes = torch.cat([c.codes for c in chunks], dim=1)
    assert torch.equal(streamed_codes, whole.codes)
    streamed = torch.cat([c.audio for c in chunks])
    assert streamed.shape == whole.audio.shape == (whole.codes.shape[1] * FRAME,)
    peak = float(whole.audio.abs().max())
    assert float((streamed - whole.audio).abs().max()) <= 1e-4 * max(1.0, peak)


def test_seeded_runs_repeat_and_seeds_differ(generator):
    def codes(seed):
        return generator.generate("Good morning.", 1, max_audio_secs=0.8, seed=seed).codes

    assert torch.equal(codes(3), codes(3))
    assert not torch.equal(codes(3), codes(4))


def test_stops_at_an_all_zero_frame(generator, monkeypatch):
    model = generator.model
    real = model.decoder_frame
    calls = []

    def end_after_five(*args, **kwargs):
        calls.append(1)
        frame = real(*args, **kwargs)
        return torch.zeros_like(frame) if len(calls) == 6 else frame

    monkeypatch.setattr(model, "decoder_frame", end_after_five)
    chunks = list(generator.stream("Stop soon.", 1, max_audio_secs=4, chunk_frames=4, seed=0))
    assert sum(c.codes.shape[1] for c in chunks) == 5
    assert len(calls) <= 9  # at most the rest of the chunk the end frame fell in


def test_max_duration_limits_frames(generator):
    out = generator.generate("Keep talking.", 1, max_audio_secs=0.4, seed=0)
    assert out.codes.shape[1] <= 5


def test_first_k_codebooks_only(generator):
    out = generator.generate("Quick.", 1, max_audio_secs=0.4, seed=0, num_codebooks=8)
    assert out.codes.shape[0] == 32
    assert not out.codes[8:].any()
    assert len(out.audio) == out.codes.shape[1] * FRAME


@pytest.mark.parametrize("segment, error, message", [
    (Segment(0, "Hi.", torch.zeros(2, 4 * FRAME)), ValueError, "mono"),
    (Segment(0, "Hi.", voice(4), sample_rate=16000), ValueError, "24000"),
    (Segment(0, "Hi.", torch.zeros(0)), ValueError, "empty"),
    (Segment(0, "Hi.", torch.full((FRAME,), float("nan"))), ValueError, "NaN"),
    (Segment(0, "  ", voice(4)), ValueError, "empty"),
    (Segment(7, "Hi.", voice(4)), ValueError, "unknown speaker id 7"),
    (Segment(0, "Hi.", [0.0] * FRAME), TypeError, "torch tensor"),
])
def test_bad_segments_are_refused_clearly(generator, segment, error, message):
    with pytest.raises(error, match=message):
        list(generator.stream("Hello.", 1, [segment], max_audio_secs=0.2))


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0}, "temperature"),
    ({"topk": 0}, "topk"),
    ({"num_codebooks": 33}, "num_codebooks"),
    ({"first_chunk_frames": 0}, "chunk"),
])
def test_bad_options_are_refused(generator, kwargs, message):
    with pytest.raises(ValueError, match=message):
        list(generator.stream("Hello.", 1, max_audio_secs=0.2, **kwargs))


def test_empty_text_and_unknown_speaker(generator):
    with pytest.raises(ValueError, match="empty"):
        list(generator.stream("", 1))
    with pytest.raises(ValueError, match="unknown speaker id 3"):
        list(generator.stream("Hello.", 3))


def test_abandoning_a_stream_frees_its_row_for_the_next_utterance(generator):
    stream = generator.stream("A long sentence nobody waits for.", 1, max_audio_secs=4, seed=0)
    next(stream)
    assert generator.frames.busy_rows() == 1  # mid-utterance: its row is taken
    stream.close()  # what the TTS service does when the session ends mid-sentence
    assert wait_for(lambda: generator.frames.busy_rows() == 0)
    assert generator.generate("Next.", 1, max_audio_secs=0.16, seed=0).codes.shape[1] >= 1


def wait_for(condition, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
