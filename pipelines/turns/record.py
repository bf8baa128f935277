"""A user turn as one record, and the frames that carry a turn through the pipeline.

The UserTurnProcessor makes one ``UserTurn`` when the user's turn has ended and its words
are known, and sends it downstream in a ``UserTurnFrame``: the TTS (the voice hears the
user's audio and follows its tone), the reply-played reporters (a phone mark names the
turn) and the timeline read it there. When the reply has been heard, or when the turn
had no words and nothing will be said, a ``ReplyPlayedFrame`` naming the turn travels
back upstream; the half-duplex gate listens again on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pipecat.frames.frames import SystemFrame

from tts.base import SpeakingStyle, SpokenAudio


@dataclass(frozen=True)
class ToneResult:
    """How the turn sounded against the speaker's usual, the reply style that follows, and
    the whole reading as logged (agent.tone.follow.as_log)."""

    style: SpeakingStyle
    log: dict


@dataclass
class UserTurn:
    """One user turn. ``id`` counts the session's turns from 1. ``audio``: what the user
    said, from a pre-roll before the VAD heard speech to its end, with the transcript as
    its text (None for a turn with no speech: keys pressed, or no words). ``tone``: the
    tone reading, worked out on a thread while the LLM runs (None when not read). The
    instants are ``time.monotonic()``: the VAD's stop of speech and the end of the turn.
    ``parts``: the stretches of speech it is made of (the VAD's, with words or not); more
    than one when the user went on before the reply was heard and took the turn back (it
    keeps its id and is sent again, whole)."""

    id: int
    text: str
    audio: SpokenAudio | None = None
    vad_stop: float | None = None
    turn_end: float | None = None
    parts: int = 1
    tone: asyncio.Task | None = field(default=None, repr=False)

    async def tone_result(self, max_wait_secs: float) -> ToneResult | None:
        """The tone reading once ready, or None after ``max_wait_secs`` (a slow analysis
        delays the voice no longer than that) or when there is none."""
        if self.tone is None:
            return None
        if not self.tone.done():
            await asyncio.wait({self.tone}, timeout=max_wait_secs)
        if not self.tone.done() or self.tone.cancelled() or self.tone.exception():
            return None
        return self.tone.result()


@dataclass
class UserTurnFrame(SystemFrame):
    """A user turn, downstream from the UserTurnProcessor. A system frame: it passes an LLM
    that is still writing a speculative reply to this turn, so the TTS has the turn before
    that reply's first sentence."""

    turn: UserTurn | None = None


@dataclass
class ReplyPlayedFrame(SystemFrame):
    """Upstream: the reply to turn ``turn_id`` has been played out to the user (``spoken``)
    or there is nothing to say (a turn with no words); the user may speak again."""

    turn_id: int = 0
    spoken: bool = True


@dataclass
class ReplyVoicedFrame(SystemFrame):
    """Upstream from the TTS: all of a reply's text has been made into speech (it is still
    playing). The LLM reads the conversation ahead for the next turn from here on."""


@dataclass
class NoWordsFrame(SystemFrame):
    """Downstream to the UserTurnProcessor: the turn that just ended had no words (Pipecat's
    user aggregator says so only in its ``on_user_turn_stopped`` event)."""


@dataclass
class EarlyTranscriptFrame(SystemFrame):
    """Downstream from the STT: what the user has said in the turn so far, written as the
    user aggregator will write it to the context, once the voice has fallen silent and
    before anyone knows whether the turn has ended. A guess the LLM reads ahead with (the
    turn's own transcript is what is answered)."""

    text: str = ""
