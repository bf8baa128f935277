"""MisoTTS for several conversations at once (tts/miso/batch.py through MisoGenerator):
sessions batched together make the frames each would make alone, a session's conversation
stays read between its utterances (only the new part is prefilled) with output identical to
reading it all afresh, and rows are shared fairly when there are more sessions than rows.
Tiny random checkpoint, small random Mimi, the real Llama-3 tokenizer; greedy (topk=1)."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.miso_setup import TINY_MISO, tiny_parts
from tts.miso.generator import MisoGenerator, Segment
from tts.miso.text import TextTokenizer

FRAME = 1920

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_parts(tmp_path_factory.mktemp("batch"), model_seed=7, codec_seed=2)


def make_generator(parts, sessions):
    model, tokenizer, codec = parts
    return MisoGenerator(model, tokenizer, codec, speakers=[0, 1], sessions=sessions)


def voice(frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(frames * FRAME, generator=g)


def conversation(seed: int, turns: int = 2) -> list[Segment]:
    return [Segment(i % 2, f"Turn {i} of talk {seed}.", voice(6 + i, 10 * seed + i))
            for i in range(turns)]


GREEDY = {"topk": 1, "max_audio_secs": 0.96}


class BatchSizes:
    """Records how many rows each batched frame step ran over."""

    def __init__(self, model, monkeypatch):
        self.sizes: list[int] = []
        real = model.backbone_frame

        def recording(tokens, *args, **kwargs):
            self.sizes.append(tokens.shape[0])
            return real(tokens, *args, **kwargs)

        monkeypatch.setattr(model, "backbone_frame", recording)


def test_sessions_generated_together_make_the_frames_each_makes_alone(parts, monkeypatch):
    texts = ["Good morning to you.", "That sounds lovely.", "Let me check."]
    contexts = [conversation(s) for s in range(3)]

    alone_generator = make_generator(parts, sessions=1)
    alone = [alone_generator.generate(t, 1, c, **GREEDY).codes for t, c in zip(texts, contexts)]
    alone_generator.close()

    generator = make_generator(parts, sessions=3)
    steps = BatchSizes(generator.model, monkeypatch)
    together: dict[int, torch.Tensor] = {}
    start = threading.Barrier(3)

    def speak(i):
        start.wait()
        together[i] = generator.generate(texts[i], 1, contexts[i], session=f"s{i}",
                                         **GREEDY).codes

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    generator.close()

    assert max(steps.sizes) == 3  # all three in one step, at least once
    for i in range(3):
        assert together[i].shape[1] > 0
        assert torch.equal(together[i], alone[i]), f"session {i} differs when batched"


def test_a_sessions_next_sentence_reads_only_what_is_new_and_matches_a_full_reading(parts):
    generator = make_generator(parts, sessions=2)
    context = conversation(1, turns=3)
    first = generator.generate("Hello there.", 1, context, session="a", **GREEDY)
    # The bot's sentence joins the context (with its codes, as MisoEngine passes them).
    spoken = Segment(1, "Hello there.", first.audio, codes=first.codes)
    context = [*context, spoken]

    stream = generator._start("How are you?", 1, context, "a", 0.96,
                              generator._sampling(1.0, 1, None, None), None)
    reused = stream.reused_positions
    kept = torch.stack(list(stream), dim=1)
    plan = generator.plan("How are you?", 1, context, 0.96)
    # Everything up to the last frame fed back of the first sentence was already read.
    assert reused >= plan.tokens.shape[0] - len(TextTokenizer.load().encode_segment(
        "How are you?", 1)) - 2
    assert reused < plan.tokens.shape[0]

    fresh = generator.generate("How are you?", 1, context, **GREEDY)  # a one-off: no cache
    assert torch.equal(kept, fresh.codes)
    generator.close()


def test_a_full_budget_is_cut_back_once_and_the_start_then_stays_put(parts):
    generator = make_generator(parts, sessions=1)
    # Segments of ~150 positions; 15 s of room for audio leaves ~1830 for context.
    context = [Segment(i % 2, f"Part {i}.", voice(140, i)) for i in range(14)]
    options = {"topk": 1, "max_audio_secs": 15.0}
    plans = []

    def remember(plan):
        plans.append(plan)

    frames = generator._start("Next.", 1, context, "s", 15.0,
                              generator._sampling(1.0, 1, None, None), remember)
    next(frames)  # the prompt has been read
    frames.close()
    first = plans[-1]
    assert first.dropped_segments > 0
    # Cut back to about half the budget, so the following turns fit as they are.
    assert first.tokens.shape[0] < 0.6 * 2048
    for extra in range(2):
        context = [*context, Segment(extra % 2, f"More {extra}.", voice(140, 100 + extra))]
        frames = generator._start("Next.", 1, context, "s", 15.0,
                                  generator._sampling(1.0, 1, None, None), remember)
        reused = frames.reused_positions
        next(frames)
        frames.close()
        assert plans[-1].first_segment == first.first_segment  # the start stayed put
        assert reused > first.tokens.shape[0] - 20  # the old context was not read again
    # And the output is what a full reading of the same context gives.
    kept = generator.generate("Fine.", 1, context, session="s", **options, seed=None)
    plan = plans[-1]
    one_off = generator.generate("Fine.", 1, context[len(context) - plan.kept_segments:],
                                 **options)
    assert torch.equal(kept.codes, one_off.codes)
    generator.close()


def test_more_sessions_than_rows_are_all_answered(parts):
    generator = make_generator(parts, sessions=2)
    results: dict[int, int] = {}

    def speak(i):
        out = generator.generate(f"Caller {i} here.", 1, conversation(i, turns=1),
                                 session=f"c{i}", **GREEDY)
        results[i] = out.codes.shape[1]

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(frames > 0 for frames in results.values())
    assert generator.frames.sessions() <= 2
    generator.close()


def test_rows_with_fewer_codebooks_share_a_step_with_full_ones(parts, monkeypatch):
    generator = make_generator(parts, sessions=2)
    steps = BatchSizes(generator.model, monkeypatch)
    results = {}
    start = threading.Barrier(2)

    def speak(name, codebooks):
        start.wait()
        results[name] = generator.generate("Same words.", 1, conversation(3), session=name,
                                           num_codebooks=codebooks, **GREEDY).codes

    threads = [threading.Thread(target=speak, args=args) for args in (("full", None),
                                                                       ("coarse", 4))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    generator.close()
    assert max(steps.sizes) == 2
    assert not results["coarse"][4:].any()
    assert torch.equal(results["coarse"][:4, :1], results["full"][:4, :1])


def test_a_forgotten_session_frees_its_row(parts):
    generator = make_generator(parts, sessions=1)
    generator.generate("One.", 1, conversation(5), session="gone", **GREEDY)
    assert generator.frames.sessions() == 1
    generator.forget("gone")
    assert generator.frames.sessions() == 0
    assert generator.generate("Two.", 1, session="next", **GREEDY).codes.shape[1] > 0
    generator.close()


# -- what one caller does must not hurt another (review findings) -------------------------

N = TINY_MISO.audio_num_codebooks


def text_prompt(length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(length, N + 1, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    tokens[:, -1] = torch.randint(1, 1000, (length,), generator=g)
    mask[:, -1] = True
    return tokens, mask


def finishes(work, secs: float = 10.0) -> bool:
    """Whether ``work()`` returns (or raises) within ``secs``."""
    done = threading.Event()
    raised = []

    def run():
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - returning or raising, it did not hang
            raised.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(secs)


@pytest.fixture()
def batcher(parts):
    from tts.miso.batch import FrameBatcher

    made = []

    def make(rows):
        made.append(FrameBatcher(parts[0], rows=rows))
        return made[-1]

    yield make
    for b in made:
        b.close()


def test_a_bad_request_is_refused_to_its_caller_and_the_others_go_on(batcher):
    from tts.miso.batch import Sampling

    frames = batcher(2)
    good = frames.generate("good", *text_prompt(30), 20, Sampling(topk=1))
    next(good)
    bad_codes = text_prompt(10, 1)
    bad_codes[0][0, 0] = 5000  # past the audio vocabulary
    for tokens_mask, max_frames, sampling, message in [
        (text_prompt(10, 1), 5, Sampling(topk=1, num_codebooks=N + 1), "num_codebooks"),
        (text_prompt(10, 1), 0, Sampling(topk=1), "max_frames"),
        (text_prompt(10, 1), 5, Sampling(temperature=0), "temperature"),
        (bad_codes, 5, Sampling(topk=1), "audio codes"),
    ]:
        with pytest.raises(ValueError, match=message):
            frames.generate("bad", *tokens_mask, max_frames, sampling)
    # A top-k past the vocabulary is simply all of it, not an error inside the batch.
    wide = frames.generate("wide", *text_prompt(10, 2), 3, Sampling(topk=5000))
    assert len(list(wide)) == 3
    assert len(list(good)) == 19


def test_streams_end_cleanly_for_every_reader(batcher):
    from tts.miso.batch import Sampling

    frames = batcher(1)
    done = frames.generate(None, *text_prompt(20), 3, Sampling(topk=1))
    assert len(list(done)) == 3
    assert finishes(lambda: next(done)) and list(done) == []  # ended stays ended
    running = frames.generate("a", *text_prompt(30), 400, Sampling(topk=1))
    waiting = frames.generate("b", *text_prompt(30, 1), 5, Sampling(topk=1))  # no row free
    next(running)
    frames.close()
    assert finishes(lambda: waiting.reused_positions)
    with pytest.raises(RuntimeError, match="closed"):
        list(waiting)


def test_forgetting_a_session_abandons_its_waiting_utterance_too(batcher):
    from tts.miso.batch import Sampling

    frames = batcher(1)
    first = frames.generate("A", *text_prompt(30), 30, Sampling(topk=1))
    next(first)
    waiting = frames.generate("A", *text_prompt(40), 30, Sampling(topk=1))
    frames.forget("A")
    assert finishes(lambda: list(waiting))
    assert frames.sessions() == 0


def test_a_second_batcher_on_the_same_model_is_refused(batcher):
    from tts.miso.batch import FrameBatcher

    first = batcher(1)
    with pytest.raises(RuntimeError, match="already serves"):
        FrameBatcher(first.model, rows=1)
    first.close()
    batcher(1)  # once closed, the model is free again


def test_speech_made_with_fewer_codebooks_is_reused_when_it_comes_back(parts):
    generator = make_generator(parts, sessions=1)
    context = conversation(2)
    first = generator.generate("Short one.", 1, context, session="a", num_codebooks=4, **GREEDY)
    spoken = Segment(1, "Short one.", first.audio, codes=first.codes, codebooks=4)
    frames = generator._start("Next.", 1, [*context, spoken], "a", 0.96,
                              generator._sampling(1.0, 1, 4, None), None)
    reused = frames.reused_positions
    frames.close()
    plan = generator.plan("Next.", 1, [*context, spoken], 0.96)
    text = len(TextTokenizer.load().encode_segment("Next.", 1))
    assert reused >= plan.tokens.shape[0] - text - 2  # up to the last frame fed back
    generator.close()


def test_planning_encodes_only_the_segments_it_keeps(parts):
    generator = make_generator(parts, sessions=1)
    codec = generator.codec
    encoded = []
    real = codec.encode
    codec.encode = lambda audio: (encoded.append(1), real(audio))[1]
    try:
        context = [Segment(i % 2, f"Part {i}.", voice(140, 200 + i)) for i in range(40)]
        plan = generator.plan("Next.", 1, context, 15.0)
    finally:
        del codec.encode
        generator.close()
    assert plan.dropped_segments > 0
    assert len(encoded) <= plan.kept_segments + 1  # the one that did not fit, no older


def test_a_sliding_dialogue_window_does_not_move_the_start_every_turn(parts):
    generator = make_generator(parts, sessions=1)

    def said(i):
        return Segment(i % 2, "Okay.", torch.zeros(1), codes=torch.full((N, 12), i + 1))

    history, held, moved = [said(i) for i in range(64)], None, 0
    for _ in range(6):
        # All 64 fit; the window drops the oldest each turn (the TTS service's dialogue deque).
        plan = generator.plan("Sure.", 1, history[-64:], 15.0, keep_from=held, cut_back=True)
        moved += held is not None and plan.first_segment != held
        held = plan.first_segment
        history.append(said(len(history)))
    generator.close()
    assert moved == 1  # once, then the start stays put
