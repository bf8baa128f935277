"""Sentence aggregation for the TTS, except that a reply's first phrase goes out alone.

Pipecat speaks the LLM's text a sentence at a time. The first sentence of a reply is the
one the user waits for in silence, so its first phrase is spoken on its own as soon as it
has a few words and reaches a natural boundary: a clause break (comma, semicolon, colon)
or the start of a new clause or phrase ("and", "because", "which", "with", ...). The voice
starts while the LLM writes the rest. Later sentences stay whole, for natural prosody.

A first sentence that ends with a token goes out with that token too: Pipecat's
aggregator waits for the next character to rule out "Dr." or "3.5", and the LLM takes a
whole token (~0.1 s on 2 cores) to write it, or to say the reply has ended ("Ottawa.").
What it waits for is ruled out here instead: a full stop after a digit, an initial or an
abbreviation (Pipecat's own sentence tokenizer decides) waits as before.

Used as the text aggregator of Pipecat's LLMTextProcessor between the LLM and the TTS.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from pipecat.utils.string import match_endofsentence
from pipecat.utils.text.base_text_aggregator import Aggregation, BaseTextAggregator, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

_CLAUSE_END = re.compile(r"[,;:]\s$")
# Words that open a new clause or phrase: speaking what comes before them alone sounds
# like a phrase, not a cut ("Paris is a city | with ...", "Bees make honey | because ...").
PHRASE_STARTS = frozenset(
    """and but or so because which who whose that when where while if although though
    unless until since after before with without for in on at from about during""".split()
)
_LAST_TWO_WORDS = re.compile(r"(\S+)\s+(\S+)\s$")
_SENTENCE_END = re.compile(r"[.!?]")
# Text ending a sentence beyond doubt: a word of two letters or more and a full stop, or
# a question or exclamation mark. Not "3." (3.5), "U." (U.S.) or "Well..." (it goes on).
_PLAIN_SENTENCE_END = re.compile(r"(?:[^\W\d_]{2}\.|[!?])$")


class FirstClauseAggregator(BaseTextAggregator):
    """Pipecat's sentence aggregator (SimpleTextAggregator, through its public methods),
    with a reply's first phrase cut off on its own."""

    def __init__(self, *, min_words: int, **kwargs):
        super().__init__(**kwargs)
        self._sentences = SimpleTextAggregator(**kwargs)
        self._min_words = min_words
        self._at_reply_start = True

    @property
    def text(self) -> Aggregation:
        return self._sentences.text

    def set_language(self, language: str | None) -> None:
        super().set_language(language)
        self._sentences.set_language(language)

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        for char in text:
            sentence_out = False
            async for sentence in self._sentences.aggregate(char):
                sentence_out = True
                self._at_reply_start = False
                yield sentence
            if not sentence_out and char.isspace():
                phrase = await self._first_phrase(char)
                if phrase:
                    self._at_reply_start = False
                    yield Aggregation(text=phrase, type=TextType.SENTENCE)
        sentence = await self._first_sentence_ended()
        if sentence:
            self._at_reply_start = False
            yield Aggregation(text=sentence, type=TextType.SENTENCE)

    async def _first_sentence_ended(self) -> str | None:
        """The reply's first sentence, taken out of the buffer, if this token ended it
        beyond doubt; else None (the sentence aggregator decides, a character later)."""
        if not self._at_reply_start or self._min_words <= 0:
            return None
        buffered = self._sentences.text.text
        if not _PLAIN_SENTENCE_END.search(buffered):
            return None
        # An abbreviation ("Dr.", "St.", "etc.") is the sentence tokenizer's call: would
        # the sentence end here even before a name ("Dr. Smith" does not)?
        if match_endofsentence(f"{buffered} Smith", language=self.language) != len(buffered):
            return None
        await self._sentences.reset()
        return buffered

    async def _first_phrase(self, space: str) -> str | None:
        """The reply's first phrase once a word has ended and it is complete (taken out of
        the sentence buffer), or None."""
        if not self._at_reply_start or self._min_words <= 0:
            return None
        buffered = self._sentences.text.text + space
        # A sentence end the aggregator is still deciding about ("Dr.", "3.5") is its call.
        if _SENTENCE_END.search(buffered):
            return None
        words = buffered.split()
        if _CLAUSE_END.search(buffered) and len(words) >= self._min_words:
            await self._sentences.reset()
            return buffered.strip()
        # A word just ended: if it opens a phrase, what came before it is the first phrase.
        last = _LAST_TWO_WORDS.search(buffered)
        if last and len(words) - 1 >= self._min_words and last.group(2).lower() in PHRASE_STARTS:
            cut = buffered.rstrip().rfind(last.group(2))
            await self._sentences.reset()
            async for _ in self._sentences.aggregate(buffered[cut:]):
                pass  # a single word and a space: no sentence ends in it
            return buffered[:cut].strip()
        return None

    async def flush(self) -> Aggregation | None:
        self._at_reply_start = True  # the LLM's response ended: the next text is a new reply
        return await self._sentences.flush()

    async def reset(self):
        self._at_reply_start = True
        await self._sentences.reset()

    async def handle_interruption(self):
        self._at_reply_start = True
        await self._sentences.handle_interruption()
