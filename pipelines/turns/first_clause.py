"""Sentence aggregation for the TTS, except that a reply's first phrase goes out alone.

Pipecat speaks the LLM's text a sentence at a time. The first sentence of a reply is the
one the user waits for in silence, so its first phrase is spoken on its own as soon as it
has a few words and reaches a natural boundary: a clause break (comma, semicolon, colon)
or the start of a new clause or phrase ("and", "because", "which", "with", ...). The voice
starts while the LLM writes the rest. Later sentences stay whole, for natural prosody.

Used as the text aggregator of Pipecat's LLMTextProcessor between the LLM and the TTS.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator, _LookaheadState

_CLAUSE_END = re.compile(r"[,;:]\s$")
# Words that open a new clause or phrase: speaking what comes before them alone sounds
# like a phrase, not a cut ("Paris is a city | with ...", "Bees make honey | because ...").
PHRASE_STARTS = frozenset(
    """and but or so because which who whose that when where while if although though
    unless until since after before with without for in on at from about during""".split()
)
_LAST_TWO_WORDS = re.compile(r"(\S+)\s+(\S+)\s$")


class FirstClauseAggregator(SimpleTextAggregator):
    def __init__(self, *, min_words: int, **kwargs):
        super().__init__(**kwargs)
        self._min_words = min_words
        self._at_reply_start = True

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        for char in text:
            self._text += char
            result = await self._check_sentence_with_lookahead(char)
            if result:
                self._at_reply_start = False
                yield result
                continue
            phrase = self._first_phrase()
            if phrase:
                self._at_reply_start = False
                yield Aggregation(text=phrase, type=TextType.SENTENCE)

    def _first_phrase(self) -> str | None:
        """The reply's first phrase once it is complete (removed from the buffer), or None."""
        if not (
            self._at_reply_start
            and self._min_words > 0
            and self._lookahead_state == _LookaheadState.IDLE
        ):
            return None
        words = self._text.split()
        if _CLAUSE_END.search(self._text) and len(words) >= self._min_words:
            phrase, self._text = self._text.strip(), ""
            return phrase
        # A word just ended: if it opens a phrase, what came before it is the first phrase.
        last = _LAST_TWO_WORDS.search(self._text)
        if last and len(words) - 1 >= self._min_words and last.group(2).lower() in PHRASE_STARTS:
            cut = self._text.rstrip().rfind(last.group(2))
            phrase, self._text = self._text[:cut].strip(), self._text[cut:]
            return phrase
        return None

    async def flush(self) -> Aggregation | None:
        self._at_reply_start = True  # the LLM's response ended: the next text is a new reply
        return await super().flush()

    async def reset(self):
        self._at_reply_start = True
        await super().reset()

    async def handle_interruption(self):
        self._at_reply_start = True
        await super().handle_interruption()
