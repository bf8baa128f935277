"""The prompt a local or server LLM reads: example exchanges, history trimmed in blocks,
past exchanges that only echoed the question left out, and a turn the user took back and
went on with read as one message."""

from __future__ import annotations

import re
from collections.abc import Callable

from pipecat.utils.string import match_endofsentence

from agent.llm.echo import is_echo, is_repeat, leans_on


def _without_exchanges(
    messages: list[dict], unwanted: Callable[[str, str, list[str]], bool]
) -> list[dict]:
    """The messages without the past exchanges (a user message and the reply right after
    it) for which ``unwanted(reply, said, replies)`` holds; ``replies``: the replies kept
    before it."""
    kept: list[dict] = []
    replies: list[str] = []
    for message in messages:
        previous = kept[-1] if kept else None
        content = message.get("content")
        if (
            message.get("role") == "assistant"
            and previous is not None
            and previous.get("role") == "user"
            and isinstance(content, str)
            and isinstance(previous.get("content"), str)
        ):
            if unwanted(content, previous["content"], replies):
                kept.pop()
                continue
            replies.append(content)
        kept.append(message)
    return kept


def without_echoes(messages: list[dict]) -> list[dict]:
    """The messages without past exchanges whose reply only repeated what was said, was
    made mostly of a statement's words (``leans_on``), or said again what an earlier reply
    said: a small model that sees itself do any of these once goes on doing it every turn
    (agent/llm/echo.py). A reply said back in other words ("Bobby broke the ledger.")
    led to a call of them ("All circuits are in use.", "Speak your name now.")."""
    return _without_exchanges(
        messages,
        lambda reply, said, replies: (
            is_echo(reply, said) or leans_on(reply, said) or is_repeat(reply, replies)
        ),
    )


# A reply that turns the person away ("I'm sorry, but I can't assist with that.", "As an
# AI, I don't have ..."): a small model that sees itself do it once does it to every turn
# that is not a plain question (24 of 61 turns of a human call, one seed).
_REFUSAL = re.compile(
    r"\b(?:can ?not|can't|unable to) (?:assist|help|respond|do that)|\bas an ai\b|"
    r"\blanguage model\b|\bdon't have the (?:ability|capability)|"
    r"^(?:i'm sorry|i apologize|sorry),? but\b",
    re.IGNORECASE,
)


def is_refusal(reply: str) -> bool:
    """Whether ``reply`` turns the person away instead of answering or responding."""
    return bool(_REFUSAL.search(reply.replace("\u2019", "'")))


def without_refusals(messages: list[dict]) -> list[dict]:
    """The messages without past exchanges whose reply turned the person away
    (``is_refusal``): the person's words go with it, as an echoed exchange's do."""
    return _without_exchanges(messages, lambda reply, _said, _replies: is_refusal(reply))


def first_sentences(text: str, min_words: int = 3) -> str:
    """``text`` up to the end of its first sentence of ``min_words`` words or more ("Hi!
    How are you?" stays whole); all of it if no such sentence ends."""
    end = 0
    while end < len(text):
        length = match_endofsentence(text[end:])
        if not length:
            return text
        sentence = text[end : end + length]
        end += length
        if len(sentence.split()) >= min_words:
            return text[:end].strip()
    return text.strip()


def replies_cut(messages: list[dict]) -> list[dict]:
    """The messages with each past reply cut to its first sentence (``first_sentences``).

    How long the model's earlier replies ran is how long it goes on writing them: one
    call whose first answer ran to two sentences went on at twice the length, and a long
    first sentence is a long wait for the first sound. The person heard the whole reply;
    the model sees its gist."""
    return [
        {**m, "content": first_sentences(m["content"])}
        if m.get("role") == "assistant" and isinstance(m.get("content"), str)
        else m
        for m in messages
    ]


def joined_user_runs(messages: list[dict]) -> list[dict]:
    """The messages with each run of user messages that no reply came between made one.

    A user who goes on speaking before the reply is heard takes the turn back: the
    context then holds the two parts as consecutive user messages ("The big dog left.",
    "to chew on the old ragdoll."), and a small model answers the last part alone or
    each part in turn; joined, it answers what was said."""
    joined: list[dict] = []
    for message in messages:
        previous = joined[-1] if joined else None
        if (
            previous is not None
            and message.get("role") == previous.get("role") == "user"
            and isinstance(message.get("content"), str)
            and isinstance(previous.get("content"), str)
        ):
            joined[-1] = {**previous, "content": f"{previous['content']} {message['content']}"}
            continue
        joined.append(message)
    return joined


def history(messages: list[dict], *, replies: str = "whole", drop_refusals: bool = False):
    """The conversation as the model reads it: a turn taken back as one message, past
    exchanges that echoed, repeated (or, with ``drop_refusals``, turned the person away)
    left out, and with ``replies="first-sentence"`` past replies cut to their first
    sentence."""
    messages = without_echoes(joined_user_runs(messages))
    if drop_refusals:
        messages = without_refusals(messages)
    if replies == "first-sentence":
        messages = replies_cut(messages)
    return messages


def _leading_system_messages(messages: list[dict]) -> int:
    """How many system messages open the prompt."""
    lead = 0
    while lead < len(messages) and messages[lead].get("role") == "system":
        lead += 1
    return lead


def with_examples(messages: list[dict], examples: list[tuple[str, str]]) -> list[dict]:
    """The messages with example exchanges (user, assistant) right after the leading
    system messages: a small model learns how to answer a person from two examples far
    better than from instructions. They are a fixed prefix, so llama.cpp's prompt cache
    keeps them."""
    lead = _leading_system_messages(messages)
    shots = [
        message
        for user, assistant in examples
        for message in (
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        )
    ]
    return messages[:lead] + shots + messages[lead:]


def trim_history(messages: list[dict], max_turns: int) -> list[dict]:
    """Keep the leading system messages and at most ``max_turns`` recent exchanges plus the
    new question (with any notes, e.g. tone hints, in their places between them).

    Old exchanges are dropped in blocks of half the limit, not one per turn: llama.cpp
    reuses its cache for an unchanged prompt prefix, and dropping one exchange every turn
    would change the prefix, and re-read the whole history, on every turn.
    """
    lead = _leading_system_messages(messages)
    system, rest = messages[:lead], messages[lead:]
    user_at = [i for i, m in enumerate(rest) if m.get("role") == "user"]
    exchanges = len(user_at) - 1  # complete exchanges before the new question
    if exchanges <= max_turns:
        return system + rest
    block = max(1, max_turns // 2)
    drop = -(-(exchanges - max_turns) // block) * block
    return system + rest[user_at[drop] :]
