"""A reply's first clause is spoken on its own; everything else goes by whole sentences."""

from pipecat.services.tts_service import TextAggregationMode

from pipelines.turns.first_clause import FirstClauseAggregator


async def _speak_reply(aggregator, tokens: list[str]) -> list[str]:
    out = []
    for token in tokens:
        async for piece in aggregator.aggregate(token):
            out.append(piece.text)
    rest = await aggregator.flush()  # what the TTS service does at the end of a response
    return out + ([rest.text] if rest else [])


def _aggregator(min_words: int = 4):
    return FirstClauseAggregator(min_words=min_words, aggregation_type=TextAggregationMode.SENTENCE)


async def test_first_clause_goes_out_alone_then_sentences():
    tokens = [
        "Paris",
        " is",
        " the",
        " capital",
        " of",
        " France,",
        " known",
        " for",
        " art.",
        " It",
        " is",
        " big,",
        " and",
        " old.",
    ]
    assert await _speak_reply(_aggregator(), tokens) == [
        "Paris is the capital of France,",
        "known for art.",
        "It is big, and old.",
    ]


async def test_short_first_clause_waits_for_the_sentence():
    assert await _speak_reply(_aggregator(), ["Yes,", " sure.", " Fine,", " then."]) == [
        "Yes, sure.",
        "Fine, then.",
    ]


async def test_every_reply_gets_its_own_first_clause():
    aggregator = _aggregator()
    first = await _speak_reply(aggregator, ["One", " two", " three", " four,", " five."])
    second = await _speak_reply(aggregator, ["Six", " seven", " eight", " nine,", " ten."])
    assert first == ["One two three four,", "five."]
    assert second == ["Six seven eight nine,", "ten."]


async def test_zero_means_whole_sentences():
    tokens = ["One", " two", " three", " four,", " five."]
    assert await _speak_reply(_aggregator(0), tokens) == ["One two three four, five."]


async def test_first_phrase_ends_before_a_word_that_opens_a_new_phrase():
    tokens = ["Bees", " make", " honey", " because", " they", " store", " food.", " Yes", " and",
              " no."]
    assert await _speak_reply(_aggregator(3), tokens) == [
        "Bees make honey",
        "because they store food.",
        "Yes and no.",
    ]


async def test_a_phrase_word_too_early_does_not_cut():
    assert await _speak_reply(_aggregator(3), ["I", " and", " you", " agree."]) == [
        "I and you agree."
    ]


async def test_llm_text_processor_cuts_the_llm_text_for_the_tts():
    """The aggregator in place: Pipecat's LLMTextProcessor between the LLM and the TTS."""
    from pipecat.frames.frames import (
        AggregatedTextFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
    )
    from pipecat.processors.aggregators.llm_text_processor import LLMTextProcessor
    from pipecat.tests.utils import run_test

    processor = LLMTextProcessor(text_aggregator=FirstClauseAggregator(min_words=3))
    reply = ["Paris", " is", " a", " city", " with", " art.", " It", " is", " old."]
    down, _ = await run_test(processor, frames_to_send=[
        LLMFullResponseStartFrame(), *[LLMTextFrame(t) for t in reply], LLMFullResponseEndFrame(),
        LLMFullResponseStartFrame(), *[LLMTextFrame(t) for t in reply], LLMFullResponseEndFrame(),
    ])
    spoken = [f.text for f in down if isinstance(f, AggregatedTextFrame)]
    # Each reply gets its own first phrase.
    assert spoken == ["Paris is a city", "with art.", "It is old."] * 2


async def _released_after(aggregator, tokens: list[str]) -> list[tuple[int, str]]:
    """Each piece sent to the voice, with how many tokens the LLM had written by then
    (len(tokens) + 1: only at the response's end)."""
    out = []
    for i, token in enumerate(tokens, 1):
        async for piece in aggregator.aggregate(token):
            out.append((i, piece.text))
    rest = await aggregator.flush()
    return out + ([(len(tokens) + 1, rest.text)] if rest else [])


async def test_a_first_sentence_goes_out_with_the_token_that_ends_it():
    """The voice does not wait for the LLM's next token ("Ottawa." then the reply's end:
    a whole decoding step) when the sentence has surely ended."""
    assert await _released_after(_aggregator(), ["Ott", "awa", "."]) == [(3, "Ottawa.")]
    assert await _released_after(_aggregator(), ["Really", "?", " Tell", " me", " more."]) == [
        (2, "Really?"),
        (6, "Tell me more."),  # later sentences wait as Pipecat's do
    ]


async def test_a_full_stop_that_may_not_end_the_sentence_waits_for_what_follows():
    """Not cut at "3.", "Dr.", "U." or "...": each sentence goes out whole, at its end."""
    tokens = ["It", " is", " 3", ".", "5", " degrees", "."]
    assert await _released_after(_aggregator(), tokens) == [(7, "It is 3.5 degrees.")]
    tokens = ["Ask", " Dr", ".", " Smith", " today", "."]
    assert await _released_after(_aggregator(), tokens) == [(6, "Ask Dr. Smith today.")]
    tokens = ["The", " U", ".", "S", ".", " is", " big", "."]
    assert await _released_after(_aggregator(), tokens) == [(8, "The U.S. is big.")]
    tokens = ["Well", "...", " maybe", "."]
    assert await _released_after(_aggregator(), tokens) == [(4, "Well... maybe.")]
