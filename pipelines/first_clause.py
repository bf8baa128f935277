"""Sentence aggregation for the TTS, except that a reply's first clause goes out alone.

Pipecat's TTS service speaks the LLM's text a sentence at a time. The first sentence of
a reply is the one the user waits for in silence; when it has a clause break (a comma,
semicolon or colon) after a few words, speaking that clause while the LLM writes the
rest starts the voice earlier. Later sentences stay whole, for natural prosody.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator, _LookaheadState

_CLAUSE_END = re.compile(r"[,;:]\s$")


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
            elif self._first_clause_done():
                clause, self._text = self._text.strip(), ""
                self._at_reply_start = False
                yield Aggregation(text=clause, type=TextType.SENTENCE)

    def _first_clause_done(self) -> bool:
        return (
            self._at_reply_start
            and self._min_words > 0
            and self._lookahead_state == _LookaheadState.IDLE
            and _CLAUSE_END.search(self._text) is not None
            and len(self._text.split()) >= self._min_words
        )

    async def flush(self) -> Aggregation | None:
        self._at_reply_start = True  # the LLM's response ended: the next text is a new reply
        return await super().flush()

    async def reset(self):
        self._at_reply_start = True
        await super().reset()

    async def handle_interruption(self):
        self._at_reply_start = True
        await super().handle_interruption()
