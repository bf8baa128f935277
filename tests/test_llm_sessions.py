"""The shared in-process LLM keeps each session's conversation read (agent/llm.py): a
session's KV cache is set aside and put back when sessions take turns, and ``prefill``
reads the next turn's prompt opening ahead.

A reply from a cached prompt can differ from one read from scratch in a near-tie token
(llama.cpp sums a prompt read in one batch and one read in pieces in another order), so
each case compares a session's reply with the one it gets when no other session ran.
"""

from __future__ import annotations

import pytest

SYSTEM = {"role": "system", "content": "You are a friendly voice assistant. Answer briefly."}


def conversation(topic: str, turns: int) -> list[dict]:
    messages = [SYSTEM]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"Tell me fact number {i} about {topic}."},
            {"role": "assistant", "content": f"Here is fact {i}: {topic} are interesting."},
        ]
    return messages + [{"role": "user", "content": f"What do {topic} eat?"}]


def reply(llm, messages, session) -> str:
    chunks = llm.stream_chat(messages, max_tokens=16, temperature=0.0, seed=0, session=session)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


@pytest.fixture
def llm(stack):
    llm = stack.llm
    yield llm
    for session in ("a", "b", "c", "d"):
        llm.forget(session)


def test_a_session_gets_its_own_conversation_back_after_another_ran(llm):
    cats, ships = conversation("cats", 3), conversation("ships", 2)
    reply(llm, cats, "a")
    undisturbed = reply(llm, cats, "a")  # from a's own cache
    held = llm.cached_tokens()

    assert reply(llm, ships, "b")
    assert llm.cached_tokens()[: len(held)] != held  # b's conversation replaced a's
    assert reply(llm, cats, "a") == undisturbed
    assert llm.cached_tokens()[: len(held) - 1] == held[: len(held) - 1]


def test_a_prefilled_opening_is_kept_for_its_session(llm):
    history = conversation("owls", 2)[:-1]
    question = history + [{"role": "user", "content": "Where do owls sleep?"}]
    llm.prefill(history, session="c")
    opening = llm.cached_tokens()
    undisturbed = reply(llm, question, "c")

    llm.prefill(history, session="c")
    llm.prefill(conversation("frogs", 1)[:-1], session="d")  # another session in between
    assert reply(llm, question, "c") == undisturbed
    # The prompt began with what the prefill had read: all of it but the empty message's
    # end ("<|im_end|>", "\n", "<|im_start|>", "assistant", "\n") and the sampled token.
    shared = 0
    for ours, prefilled in zip(llm.cached_tokens(), opening):
        if ours != prefilled:
            break
        shared += 1
    assert len(opening) > 40 and shared == len(opening) - 6


def test_forgetting_a_session_drops_what_was_set_aside(llm):
    reply(llm, conversation("cats", 1), "a")
    reply(llm, conversation("ships", 1), "b")
    assert llm.sessions_set_aside() == {"a"}
    llm.forget("a")
    assert llm.sessions_set_aside() == set()


def test_reading_ahead_gives_way_to_a_waiting_reply(llm):
    import threading

    order: list[str] = []
    busy = threading.Event()
    release = threading.Event()

    def occupy():
        busy.set()
        release.wait(30)

    llm.submit(occupy)
    assert busy.wait(30)
    read_ahead = llm.submit(lambda: order.append("read ahead"), background=True)
    reply = llm.submit(lambda: order.append("reply"))
    release.set()
    reply.result(30)
    read_ahead.result(30)
    # The read-ahead, queued first, went to the back when its turn came.
    for _ in range(300):
        if order == ["reply", "read ahead"]:
            break
        threading.Event().wait(0.1)
    assert order == ["reply", "read ahead"]
