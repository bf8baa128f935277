"""The LLM prompt stays bounded, and its prefix stays put so llama.cpp can reuse its cache."""

import pytest

from agent.llm.prompt import joined_user_runs, trim_history


def _conversation(exchanges: int) -> list[dict]:
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(exchanges):
        messages += [
            {"role": "user", "content": f"q{i}"},
            {"role": "assistant", "content": f"a{i}"},
        ]
    return messages + [{"role": "user", "content": "now"}]


def test_short_conversations_are_untouched():
    messages = _conversation(3)
    assert trim_history(messages, 6) == messages


def test_long_conversations_are_bounded_and_end_with_the_question():
    for exchanges in range(7, 40):
        kept = trim_history(_conversation(exchanges), 6)
        assert kept[0]["role"] == "system" and kept[-1]["content"] == "now"
        assert kept[1]["role"] == "user"
        assert 3 < (len(kept) - 2) // 2 <= 6, (exchanges, len(kept))


def test_the_prefix_changes_only_once_per_block():
    firsts = [trim_history(_conversation(n), 6)[1]["content"] for n in range(6, 30)]
    changes = sum(a != b for a, b in zip(firsts, firsts[1:]))
    assert changes <= (30 - 6) // 3 + 1


def test_notes_between_exchanges_stay_in_place_and_go_with_their_exchange():
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(10):
        messages += [
            {"role": "user", "content": f"q{i}"},
            {"role": "system", "content": f"note{i}"},
            {"role": "assistant", "content": f"a{i}"},
        ]
    messages += [{"role": "user", "content": "now"}, {"role": "system", "content": "note-now"}]
    kept = trim_history(messages, 6)
    assert kept[0]["content"] == "be brief" and kept[-2:] == messages[-2:]
    assert kept[1]["role"] == "user"
    # Each kept exchange still has its note right after the question.
    for i, m in enumerate(kept[1:-2]):
        if m["role"] == "user":
            assert kept[1:][i + 1]["content"] == "note" + m["content"][1:]
    assert not any(m["content"] == "note0" for m in kept)


def test_example_exchanges_follow_the_system_prompt_and_do_not_count_as_history():
    from agent.llm.prompt import with_examples

    examples = [("What is the capital of Spain?", "Madrid.")]
    messages = with_examples(trim_history(_conversation(9), 4), examples)
    assert messages[0]["role"] == "system"
    assert messages[1:3] == [
        {"role": "user", "content": "What is the capital of Spain?"},
        {"role": "assistant", "content": "Madrid."},
    ]
    # The trimmed conversation follows, unchanged, ending with the new question.
    assert messages[3:] == trim_history(_conversation(9), 4)[1:]
    assert with_examples(_conversation(1), []) == _conversation(1)


def test_exchanges_whose_reply_echoed_the_user_are_left_out():
    from agent.llm.prompt import without_echoes

    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "Bobby ripped the ledger."},
        {"role": "assistant", "content": "Bobby ripped the ledger."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Where is Paris?"},
        {"role": "assistant", "content": "Paris."},  # said before: left out too
        {"role": "user", "content": "Mary rolled the barrel."},
    ]
    assert without_echoes(messages) == [messages[0], *messages[3:5], messages[-1]]


def test_a_turn_taken_back_reads_as_one_message():
    messages = _conversation(1)[:-1] + [
        {"role": "user", "content": "The big dog left."},
        {"role": "user", "content": "to chew on the old ragdoll."},
    ]
    joined = joined_user_runs(messages)
    assert joined[:-1] == messages[:-2]
    assert joined[-1] == {"role": "user", "content": "The big dog left. to chew on the old ragdoll."}
    # Nothing else changes, and the input is left as it was.
    assert joined_user_runs(_conversation(3)) == _conversation(3)
    assert len(messages) == 5


def test_past_replies_are_cut_to_their_first_sentence():
    from agent.llm.prompt import first_sentences, history

    assert first_sentences("You can save it to your inbox. Or a folder like Work.") == (
        "You can save it to your inbox."
    )
    # A first sentence of fewer than three words takes the next one with it.
    assert first_sentences("Hi! How are you? I'm fine.") == "Hi! How are you?"
    assert first_sentences("Dr. Smith is in today. Come by.") == "Dr. Smith is in today."
    assert first_sentences("It is 3.5 km away. Turn left.") == "It is 3.5 km away."
    assert first_sentences("no end mark here") == "no end mark here"
    messages = [
        {"role": "system", "content": "Be brief. Plain words."},
        {"role": "user", "content": "Which folder should I save this to?"},
        {"role": "assistant", "content": "Your inbox is fine. Or make a folder for it."},
        {"role": "user", "content": "Thanks. And after that?"},
    ]
    cut = history(messages, replies="first-sentence")
    assert cut[2] == {"role": "assistant", "content": "Your inbox is fine."}
    # The system prompt and the person's words are left whole, and so is the input.
    assert cut[:2] == messages[:2] and cut[3] == messages[3]
    assert messages[2]["content"].endswith("for it.")
    assert history(messages) == messages


@pytest.mark.parametrize(
    "reply, refusal",
    [
        ("I'm sorry, but I can't assist with that.", True),
        ("I apologize, I can\u2019t help with that.", True),
        ("As an AI, I don't have feelings.", True),
        ("I don't have the ability to browse the internet.", True),
        ('I\'m sorry, but "six" is not a valid command.', True),
        ("I'm sorry to hear that. Was it important?", False),
        ("I can help with that! Which one?", False),
        ("Sorry, I missed that. Could you say it again?", False),
        ("Madrid.", False),
    ],
)
def test_is_refusal(reply, refusal):
    from agent.llm.prompt import is_refusal

    assert is_refusal(reply) is refusal


def test_exchanges_whose_reply_turned_the_person_away_can_be_left_out():
    from agent.llm.prompt import history

    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "Six."},
        {"role": "assistant", "content": 'I\'m sorry, but "six" is not a valid command.'},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Firefox."},
    ]
    assert history(messages, drop_refusals=True) == [messages[0], *messages[3:]]
    assert history(messages) == messages


def test_exchanges_whose_reply_leaned_on_a_statement_are_left_out():
    from agent.llm.echo import leans_on
    from agent.llm.prompt import without_echoes

    assert leans_on("Bobby broke the ledger.", "Bobby ripped the ledger.")
    assert leans_on("All circuits are in use.", "All circuits are busy now.")
    assert not leans_on("Oh no! Why did he do that?", "Bobby ripped the ledger.")
    # An answer shares its question's words; a one-word turn is answered in kind.
    assert not leans_on("The capital of Spain is Madrid.", "What is the capital of Spain?")
    assert not leans_on("Seven, got it.", "Seven.")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "All circuits are busy now."},
        {"role": "assistant", "content": "All circuits are in use."},
        {"role": "user", "content": "What is the capital of Spain?"},
        {"role": "assistant", "content": "Madrid, in the middle of Spain."},
        {"role": "user", "content": "Mary rolled the barrel."},
    ]
    assert without_echoes(messages) == [messages[0], *messages[3:]]
