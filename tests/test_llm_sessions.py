"""The shared in-process LLM (agent/llm/local.py, agent/llm/engine.py): every session keeps its
conversation read in its own sequence of one KV cache, a new caller's first words come
before the rest of anyone else's reply, the rest of concurrent replies is decoded
together, and reading ahead waits for every reply.

A reply from a cached prompt can differ from one read from scratch in a near-tie token
(llama.cpp sums a prompt read in one batch and one read in pieces in another order), so
each case compares a session's reply with the one it gets when no other session ran.
"""

from __future__ import annotations

import threading
import time

import pytest

from agent.llm.echo import content_words
from agent.llm.engine import FIRST_PHRASE_TOKENS

SYSTEM = {"role": "system", "content": "You are a friendly voice assistant. Answer briefly."}
LONG = {
    "role": "system",
    "content": "You are a helpful assistant. Answer in a detailed paragraph of several sentences.",
}


def conversation(topic: str, turns: int) -> list[dict]:
    messages = [SYSTEM]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"Tell me fact number {i} about {topic}."},
            {"role": "assistant", "content": f"Here is fact {i}: {topic} are interesting."},
        ]
    return messages + [{"role": "user", "content": f"What do {topic} eat?"}]


def reply(llm, messages, session, max_tokens=16) -> str:
    pieces = llm.stream_chat(
        messages, max_tokens=max_tokens, temperature=0.0, seed=0, session=session
    )
    return "".join(pieces)


class Recorder:
    """Replies streamed on their own threads; ``events`` is the order tokens came in."""

    def __init__(self, llm):
        self.llm = llm
        self.events: list[str] = []
        self.finish: dict[str, str] = {}
        self.streams: dict = {}
        self._threads: list[threading.Thread] = []

    def start(self, session: str, messages: list[dict], max_tokens: int = 80):
        stream = self.llm.stream_chat(
            messages, max_tokens=max_tokens, temperature=0.0, seed=0, session=session
        )
        self.streams[session] = stream

        def run():
            for _piece in stream:
                self.events.append(session)
            self.finish[session] = stream.finish_reason

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait_for(self, session: str, tokens: int, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while self.events.count(session) < tokens:
            assert time.monotonic() < deadline, f"{session}: {self.events.count(session)} tokens"
            time.sleep(0.01)

    def join(self):
        for thread in self._threads:
            thread.join(120)
            assert not thread.is_alive()


@pytest.fixture
def llm(stack):
    llm = stack.llm
    yield llm
    for session in ("a", "b", "c", "d", "r", "t", "u"):
        llm.forget(session)


def test_a_session_gets_its_own_conversation_back_after_another_ran(llm):
    cats, ships = conversation("cats", 3), conversation("ships", 2)
    reply(llm, cats, "a")
    undisturbed = reply(llm, cats, "a")  # from a's own cache
    held = llm.cached_tokens("a")

    assert reply(llm, ships, "b")
    assert llm.cached_tokens("a") == held  # b's conversation went to its own sequence
    assert llm.cached_tokens("b")[: len(held)] != held
    assert reply(llm, cats, "a") == undisturbed


def test_a_prefilled_opening_is_kept_for_its_session(llm):
    history = conversation("owls", 2)[:-1]
    question = history + [{"role": "user", "content": "Where do owls sleep?"}]
    llm.prefill(history, session="c")
    opening = llm.cached_tokens("c")
    undisturbed = reply(llm, question, "c")

    llm.prefill(history, session="c")
    llm.prefill(conversation("frogs", 1)[:-1], session="d")  # another session in between
    assert llm.cached_tokens("c") == opening
    assert reply(llm, question, "c") == undisturbed
    # The prompt began with what the prefill had read: all of it but the empty user
    # message's end ("<|im_end|>", "\n").
    shared = 0
    for ours, prefilled in zip(llm.cached_tokens("c"), opening):
        if ours != prefilled:
            break
        shared += 1
    assert len(opening) > 40 and shared == len(opening) - 2


def test_a_new_session_starts_from_the_opening_another_has_read(llm):
    llm.prefill(conversation("cats", 2)[:-1], session="a")
    llm.prefill([SYSTEM], session="b")
    # b's sequence starts from the system prompt a had read (copied within the cache).
    system = llm.tokens([SYSTEM], reply=False)
    assert llm.cached_tokens("b")[: len(system) - 2] == system[:-2]


def test_forgetting_a_session_drops_its_conversation(llm):
    reply(llm, conversation("cats", 1), "a")
    assert llm.cached_tokens("a")
    llm.forget("a")
    assert llm.cached_tokens("a") == []


def test_a_new_callers_first_words_come_before_the_rest_of_a_long_reply(llm):
    calls = Recorder(llm)
    calls.start("a", [LONG, {"role": "user", "content": "Tell me about the city of Lisbon."}])
    calls.wait_for("a", FIRST_PHRASE_TOKENS + 2)
    calls.start("b", [LONG, {"role": "user", "content": "How do bees make honey?"}])
    calls.join()

    events = calls.events
    assert set(calls.finish) == {"a", "b"}
    assert events.count("b") > FIRST_PHRASE_TOKENS + 5  # a reply longer than its phrase
    b_first_phrase = [i for i, s in enumerate(events) if s == "b"][FIRST_PHRASE_TOKENS - 1]
    a_after = [i for i, s in enumerate(events) if s == "a" and i > events.index("b")]
    # a waited while b's first phrase was written: none of a's tokens came in between...
    assert not [i for i in a_after if i < b_first_phrase]
    # ...and plenty of a's reply was still to come (it did not have to finish first).
    assert len(a_after) > 40
    # Then the two replies went on together (a token of each per step), not one after
    # the other.
    a_last = max(i for i, s in enumerate(events) if s == "a")
    b_last = max(i for i, s in enumerate(events) if s == "b")
    together = events[b_first_phrase + 1 : min(a_last, b_last)]
    assert together.count("a") >= 3 and abs(together.count("a") - together.count("b")) <= 2


def test_a_cut_reply_frees_the_model_and_its_session_answers_again(llm):
    calls = Recorder(llm)
    calls.start("a", [LONG, {"role": "user", "content": "Tell me about the city of Lisbon."}])
    calls.wait_for("a", 5)
    calls.streams["a"].cancel()
    calls.join()
    assert calls.finish["a"] == "stop" and calls.events.count("a") < 40
    assert reply(llm, conversation("cats", 1), "a")


def test_reading_ahead_waits_for_every_reply(llm):
    calls = Recorder(llm)
    calls.start("a", [LONG, {"role": "user", "content": "Tell me about the city of Lisbon."}])
    calls.wait_for("a", 2)
    read = llm.read_ahead(conversation("frogs", 3)[:-1], session="c")
    assert read.wait() == "read"
    written_by_then = calls.events.count("a")
    calls.join()
    # The read-ahead was done only once the reply had been written whole.
    assert written_by_then == calls.events.count("a") > 20
    assert len(llm.cached_tokens("c")) > 60


def test_a_reply_read_ahead_whole_starts_with_nothing_left_to_read(llm):
    """What the early transcript buys: the prompt of a reply to the user's guessed words,
    read while the turn's end is decided, leaves the reply only its last token to read
    again (its logits give the first word)."""
    messages = conversation("owls", 2)
    assert llm.read_ahead(messages, session="d", reply=True).wait() == "read"
    prompt = llm.tokens(messages)
    assert llm.cached_tokens("d") == prompt
    generation = llm.engine.generate("d", prompt, max_tokens=3)
    generation.wait()
    assert generation.reused_tokens == len(prompt) - 1
    # Guessed wrong (the user said something else): what the two share is still kept.
    other = conversation("owls", 2)[:-1] + [{"role": "user", "content": "Do owls sleep?"}]
    generation = llm.engine.generate("d", llm.tokens(other), max_tokens=3)
    generation.wait()
    shared = llm.tokens(conversation("owls", 2)[:-1], reply=False)  # up to the new question
    assert len(shared) <= generation.reused_tokens < len(prompt) - 1


def test_a_conversation_trimmed_of_its_oldest_exchanges_is_not_read_again(llm):
    """trim_history drops a long conversation's oldest exchanges in a block: what followed
    them is still in the cache, moved back over the gap, so only the new words are read;
    and the reply says what a fresh read's says."""
    whole = conversation("otters", 6)
    trimmed = [whole[0], *whole[1 + 2 * 3 :]]  # the three oldest exchanges dropped
    prompt = llm.tokens(trimmed)
    assert llm.read_ahead(whole, session="t", reply=True).wait() == "read"
    generation = llm.engine.generate("t", prompt, max_tokens=16)
    shifted = b"".join(llm.engine.piece(t) for t in generation).decode("utf-8", "replace")
    assert generation.reused_tokens == len(prompt) - 1
    assert llm.cached_tokens("t")[: len(prompt)] == prompt
    llm.forget("t")  # so that "u" reads the trimmed conversation itself
    fresh = reply(llm, trimmed, "u")
    # The moved values saw the dropped exchanges, so the words may differ from a fresh
    # read's ("Here is fact 6: otters eat fish." / "... otters feed on fish"); what they
    # say may not.
    assert set(content_words(shifted)) & set(content_words(fresh)), (shifted, fresh)


def test_cells_another_session_shares_are_never_moved(llm):
    """A session that copied another's conversation (the same words) shares its cells;
    trimming one of them reads its prompt again rather than move what the other reads."""
    whole = conversation("otters", 6)
    trimmed = [whole[0], *whole[1 + 2 * 3 :]]
    assert llm.read_ahead(whole, session="t", reply=True).wait() == "read"
    before = reply(llm, whole, "u")  # "u" starts from "t"'s cells
    generation = llm.engine.generate("t", llm.tokens(trimmed), max_tokens=4)
    generation.wait()
    assert generation.reused_tokens < len(llm.tokens(trimmed)) - 1
    assert reply(llm, whole, "u") == before


def test_reading_ahead_never_ends_a_reply(llm):
    """A guess at the turn's words that arrives once the turn's reply has begun (a slow
    early transcript) is dropped; the reply is written whole."""
    calls = Recorder(llm)
    calls.start("a", [LONG, {"role": "user", "content": "Tell me about the city of Lisbon."}])
    calls.wait_for("a", 2)
    late = llm.read_ahead(conversation("frogs", 1), session="a", reply=True)
    assert late.wait() == "cancelled"
    calls.join()
    assert calls.finish["a"] == "length" and calls.events.count("a") == 80


def test_a_refused_piece_is_never_written_and_the_reply_goes_on_past_it(llm):
    """``refuse`` rules a piece out where it would come (another token is sampled
    there), and an end refused makes the reply go on."""
    messages = [SYSTEM, {"role": "user", "content": "Say hello to me."}]
    plain = list(llm.stream_chat(messages, max_tokens=12, temperature=0.0, seed=0, session="r"))
    first = plain[0]
    asked: list[tuple[str, str | None]] = []

    def not_that_opening(text: str, piece: str | None) -> bool:
        asked.append((text, piece))
        return text == "" and piece == first

    other = list(
        llm.stream_chat(
            messages, max_tokens=12, temperature=0.0, seed=0, session="r", refuse=not_that_opening
        )
    )
    assert other[0] != first and other[0].strip()
    assert asked[0] == ("", first) and asked[1] == ("", other[0])
    # Asked token by token, with the text written so far.
    assert asked[2] == (other[0], other[1])

    short = list(llm.stream_chat(messages, max_tokens=40, temperature=0.0, seed=0, session="r"))
    ended = "".join(short)
    longer = llm.stream_chat(
        messages,
        max_tokens=len(short) + 8,
        temperature=0.0,
        seed=0,
        session="r",
        refuse=lambda text, piece: piece is None and text == ended,
    )
    went_on = "".join(longer)
    assert went_on.startswith(ended) and len(went_on) > len(ended)


def test_a_reply_turns_away_from_saying_again_what_was_said_before(llm):
    """With ``dry``, a reply that would go on saying an earlier reply word for word takes
    another word as the run grows; what it opens with is free. Off, it says it again."""
    messages = [
        SYSTEM,
        {"role": "user", "content": "Please enter your password followed by the pound key."},
    ]
    said = "".join(llm.stream_chat(messages, max_tokens=24, temperature=0.0, seed=0, session="r"))
    again = "".join(
        llm.stream_chat(
            messages, max_tokens=24, temperature=0.0, seed=0, session="r", said_before=[said]
        )
    )
    assert again == said  # without the DRY sampler: the same words
    turned = "".join(
        llm.stream_chat(
            messages,
            max_tokens=24,
            temperature=0.0,
            seed=0,
            session="r",
            said_before=["An unrelated line.", said],
            dry=0.8,
        )
    )
    assert turned.strip() and turned != said
    # The first two tokens of a run are free: it may open as the earlier reply did.
    opening = llm.engine.model.tokenize(said.encode(), add_bos=False, special=False)[:2]
    assert llm.engine.model.tokenize(turned.encode(), add_bos=False, special=False)[:2] == opening


def test_more_sessions_than_sequences_are_all_answered(stack):
    from agent.llm.local import LocalLLM

    llm = LocalLLM(stack.llm.model_path, context_tokens=1024, threads=2, sessions=1)
    try:
        answers = [reply(llm, conversation(topic, 1), topic) for topic in ("cats", "dogs", "owls")]
        assert all(answers)
        # Two sequences: the session idle longest gave its own to the third.
        assert llm.cached_tokens("cats") == []
        assert llm.cached_tokens("dogs") and llm.cached_tokens("owls")
        assert reply(llm, conversation("cats", 1), "cats")
    finally:
        llm.close()


def test_a_full_cache_drops_the_conversation_idle_longest_and_the_reply_goes_on(stack):
    from agent.llm.local import LocalLLM

    # Two sequences sharing 512 cells: two long conversations and a reply do not fit.
    llm = LocalLLM(stack.llm.model_path, context_tokens=256, threads=2, sessions=1)
    try:
        long_a = [
            {"role": "system", "content": "You are a helpful assistant. " * 3},
            {"role": "user", "content": "Tell me about cats. " * 40},
        ]
        long_b = [long_a[0], {"role": "user", "content": "Tell me about ships. " * 40}]
        assert 220 < len(llm.tokens(long_b)) < 256
        llm.prefill(long_a, session="a")
        assert len(llm.cached_tokens("a")) > 220
        text = reply(llm, long_b, "b", max_tokens=120)
        assert text  # answered, not an error
        assert llm.cached_tokens("a") == []  # a's conversation made room
        assert len(llm.cached_tokens("b")) > 300  # more than fitted beside a
    finally:
        llm.close()
