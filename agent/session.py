"""Per-session conversation state that outlives single frames: what the user said and how.

Each finished user turn is kept as the audio the user actually spoke (from a short
pre-roll before the VAD heard speech until the VAD heard it end) together with its
transcript. The speech engine reads the latest one to condition its reply on the user's
voice; nothing captured while the bot was replying is ever recorded, because the
half-duplex gate stops that audio before it reaches the recorder.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field

from agent.tone.follow import ToneFollower
from tts.base import SpeechContext, SpokenAudio, Utterance

# Enough history for any engine's context window, bounded so a long call does not grow.
MAX_KEPT_TURNS = 8
# The dialogue an engine may hear, in utterances. More than MisoTTS's 2048 positions hold
# (~2.5 minutes of speech), so its own budget decides what it drops, in large steps, and
# not this window sliding by one utterance per turn, which would make it read the whole
# conversation again at every turn.
MAX_KEPT_UTTERANCES = 64


@dataclass
class SessionState:
    """One conversation's captured user turns and the bot's spoken replies."""

    session_id: str
    user_turns: deque[SpokenAudio] = field(default_factory=lambda: deque(maxlen=MAX_KEPT_TURNS))
    bot_replies: deque[SpokenAudio] = field(default_factory=lambda: deque(maxlen=MAX_KEPT_TURNS))
    # Both of the above in the order they were said, for engines that hear the dialogue.
    conversation: deque[Utterance] = field(
        default_factory=lambda: deque(maxlen=MAX_KEPT_UTTERANCES)
    )
    # How the user sounds against their own baseline, and the reply style that follows.
    tone: ToneFollower = field(default_factory=ToneFollower)
    # The analysis of the latest user turn's tone, while it runs (the reply's style waits
    # for it).
    _style_task: asyncio.Task | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_user_turn(self, turn: SpokenAudio) -> None:
        with self._lock:
            self.user_turns.append(turn)
            self.conversation.append(Utterance("user", turn))

    def add_bot_reply(self, reply: SpokenAudio) -> None:
        with self._lock:
            self.bot_replies.append(reply)
            self.conversation.append(Utterance("bot", reply))

    def style_pending(self, task: asyncio.Task) -> None:
        """The style for the next reply is being worked out by ``task``."""
        self._style_task = task

    @property
    def last_user_turn(self) -> SpokenAudio | None:
        with self._lock:
            return self.user_turns[-1] if self.user_turns else None

    async def reply_context(self, max_wait_secs: float = 0.5) -> SpeechContext:
        """The speech context once the latest turn's tone has been read (or after
        ``max_wait_secs``: a slow analysis delays the voice no longer than that)."""
        task = self._style_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=max_wait_secs)
        return self.speech_context()

    def speech_context(self) -> SpeechContext:
        """The context a speech engine gets for the reply being spoken now."""
        with self._lock:
            return SpeechContext(
                conversation=tuple(self.conversation),
                session_id=self.session_id,
                style=self.tone.style,
            )
