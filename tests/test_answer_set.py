"""Scoring of pipelines/callers/answer_set.py on hand-written replies (no models needed)."""

from __future__ import annotations

import doctest

import pytest

from pipelines.callers import answer_set
from pipelines.callers.answer_set import (
    COMMANDS,
    QUESTIONS,
    STATEMENTS,
    Command,
    Statement,
    clean,
    is_correct,
    is_echo,
    is_meta,
    is_repeat,
    question,
)


def test_sizes_and_doctest():
    assert len(QUESTIONS) >= 32 and len(STATEMENTS) >= 16 and len(COMMANDS) >= 8
    assert len({q.text for q in QUESTIONS}) == len(QUESTIONS)
    assert all(q.keywords for q in QUESTIONS)
    assert doctest.testmod(answer_set).failed == 0


def test_clean():
    assert clean("There are 60 minutes!") == "there are sixty minutes"
    assert clean("Twenty-four hours") == "twenty four hours"
    assert clean("24 hours") == "twenty four hours"
    assert clean("**Paris**, the capital.") == "paris the capital"
    assert clean("I don't know") == "i don't know"
    assert clean("H2O") == "h two o"
    assert clean("1,000") == "one thousand"


@pytest.mark.parametrize(
    "text, reply, ok",
    [
        ("What is the capital of France?", "The capital of France is Paris.", True),
        ("What is the capital of France?", "France is a country in Europe.", False),
        ("How many minutes are in an hour?", "There are sixty minutes in an hour.", True),
        ("How many minutes are in an hour?", "An hour has 60 minutes.", True),
        ("How many minutes are in an hour?", "About 600.", False),
        ("How many days are in a week?", "There are seventeen.", False),
        ("How many hours are in a day?", "A day has 24 hours.", True),
        ("What is ten times ten?", "Ten times ten is one hundred.", True),
        ("What is ten times ten?", "It's 100.", True),
        ("Who painted the Mona Lisa?", "Leonardo da Vinci painted it.", True),
        ("What gas do plants take in from the air?", "They absorb CO2.", True),
        ("What should I do if I can't sleep?", "Try relaxing with a book and no screens.", True),
        ("What should I do if I can't sleep?", "I can't sleep either.", False),
    ],
)
def test_is_correct_questions(text, reply, ok):
    assert is_correct(reply, question(text)) is ok


@pytest.mark.parametrize(
    "reply",
    [
        "The user is asking about the ledger, so they need to know what it is.",
        "The user sounded rushed, so I will answer quickly.",
        "(The user sounded: fast, loud; rushed)",
        "Assistant: Paris is the capital.",
        "Based on the note, you sound rushed.",
        "As per my instructions, I keep it short.",
        "This message is about a run.",
        "The speaker's sister is visiting.",
        "They are asking about the capital of France.",
        "The system prompt says to be brief.",
    ],
)
def test_is_meta_positive(reply):
    assert is_meta(reply)


@pytest.mark.parametrize(
    "reply",
    [
        "Paris is the capital of France.",
        "That sounds great! How far did you go?",
        "I'll make a note of that.",
        "On that note, good luck tomorrow!",
        "Try to play a note each day on the guitar.",
        "Follow the instructions on the box for the best tea.",
        "You sounded happy about it!",  # "you sounded" is talking to them, not about them
        "Sure, what do you need help with?",
        "Why did he rip it? Was it important?",
    ],
)
def test_is_meta_negative(reply):
    assert not is_meta(reply)


@pytest.mark.parametrize(
    "reply, said, echo",
    [
        ("Bobby ripped the ledger.", "Bobby ripped the ledger.", True),
        ("Bobby ripped the ledger. That's bad.", "Bobby ripped the ledger.", True),
        ("Oh no, Bobby ripped the ledger?", "Bobby ripped the ledger.", True),
        ("You just got back from a long run!", "I just got back from a long run.", True),
        ("Oh no, why would he do that? Was it important?", "Bobby ripped the ledger.", False),
        ("Nice! How far did you go?", "I just got back from a long run.", False),
        (
            "Great job on the long run! How far did you go, and how do you feel?",
            "I just got back from a long run.",
            False,
        ),
        ("That's exciting! Do you have plans together?", "My sister is visiting tomorrow.", False),
        ("I hope you get some rest soon.", "I'm feeling a bit tired today.", False),
        ("She's going to visit tomorrow.", "My sister is visiting tomorrow.", True),
        ("Your sister is coming to visit tomorrow.", "My sister is visiting tomorrow.", True),
        ("Tomorrow? Fun!", "My sister is visiting tomorrow.", False),
        ("You're feeling great after your long run!", "I just got back from a long run.", False),
        ("Hello! How can I help?", "Hello.", True),  # a greeting back counts; see commands
    ],
)
def test_is_echo(reply, said, echo):
    assert is_echo(reply, said) is echo


def test_statement_and_command_correctness():
    said = Statement("Bobby ripped the ledger.")
    assert is_correct("Oh no! Was it an important one?", said)
    assert not is_correct("Bobby ripped the ledger.", said)
    assert not is_correct("The user says Bobby ripped the ledger.", said)
    assert is_correct("Why did the chicken cross the road?", Command("Tell me a joke."))
    assert not is_correct("", Command("Tell me a joke."))
    assert is_correct("Hello! How can I help?", Command("Hello."))
    assert not is_correct("Hello.", Command("Hello."))


def test_is_repeat():
    earlier = ["That sounds fun! How was it?", "Oh no. I'm sorry to hear that."]
    assert is_repeat("I'm sorry to hear that. Can I help?", earlier)
    assert is_repeat("That sounds fun! How was it?", earlier)
    assert not is_repeat("Oh no. Was it expensive?", earlier)  # "oh no" is under 3 words
    assert not is_repeat("Congratulations on passing!", earlier)


def test_a_reply_that_opens_with_what_was_said_before_is_watched_until_it_differs():
    from agent.llm.echo import RepeatWatch

    watch = RepeatWatch(["That's correct.", "I'm sorry, but I can't help with that.", "Paris."])
    assert watch.may_repeat("That's") and watch.may_repeat("I'm sorry, but")
    assert not watch.may_repeat("That's a")  # says something new from here on
    assert watch.repeats("That's correct.") and watch.repeats("That's correct. You have two.")
    assert watch.repeats("I'm sorry but I can't help with that!") and watch.repeats("Paris.")
    assert not watch.repeats("I'm sorry, I can't help with that.")
    assert not watch.repeats("Paris is in France.")  # one-word sentences are said often
    assert not RepeatWatch([]).may_repeat("Hello.")
    heard = RepeatWatch([], "Hello? Press one for sales. Mary rolled the barrel.")
    assert heard.repeats("Mary rolled the barrel!") and heard.repeats("Press one for sales.")
    assert not heard.repeats("Hello!")  # a greeting is answered in kind


def test_a_statement_said_back_in_other_words_is_watched_until_it_says_something_new():
    from agent.llm.echo import RepeatWatch

    watch = RepeatWatch([], "Bobby ripped the ledger.")
    # Held while it opens with nothing or with the statement's words ...
    assert watch.may_repeat("Oh no,") and watch.may_repeat("Yes, Bobby ripped")
    assert watch.repeats("It was Bobby who ripped the ledger.")
    assert watch.repeats("Oh no, Bobby ripped the ledger, and it's gone.")
    # ... and let go once it says something of its own.
    assert not watch.may_repeat("That's a bit")
    assert not watch.repeats("That's a bit mean.") and not watch.repeats("Oh no! Why did he?")
    assert not watch.may_repeat("Oh no! Why")  # the first sentence ended: not an echo
    # A question's answer shares its words; a statement of one word is answered in kind.
    question = RepeatWatch([], "Who ripped the ledger?")
    assert not question.may_repeat("Bobby ripped") and not question.repeats("Bobby ripped it.")
    assert not RepeatWatch([], "Seven.").may_repeat("Seven")
