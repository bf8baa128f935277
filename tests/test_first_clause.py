"""A reply's first clause is spoken on its own; everything else goes by whole sentences."""

from pipecat.services.tts_service import TextAggregationMode

from pipelines.first_clause import FirstClauseAggregator


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
