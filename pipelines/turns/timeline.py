"""Per-turn timestamps and stage latencies, collected by a Pipecat observer.

A turn runs from the user's speech to the end of the bot's reply. The voice-to-voice
latency is the time from the end of the user's speech to the first bot audio sample
reaching the output transport; it splits into turn-end detection, LLM time to the first
sentence and TTS time to the first audio (speech recognition runs alongside turn-end
detection and is reported on its own).

The user's side of a turn comes in its record (a UserTurnFrame: the words, the VAD's stop
and the turn's end, the tone); the rest is read from the frames the stages push: the
last transcript before the turn ends, the LLM's first text, the TTS's first audio, the
transport's BotStartedSpeakingFrame and the ReplyPlayedFrame that ends the turn. Each is
taken the first time it is pushed (by its source), so nothing needs to be matched twice.
A turn the user took back (they went on before the reply was heard) comes again, whole,
under the same id: its record starts over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed

from pipelines.turns.record import ReplyPlayedFrame, UserTurn, UserTurnFrame


@dataclass
class TurnRecord:
    """A user turn (its record) and the instants of the reply to it."""

    user: UserTurn
    speech_end: float | None = None  # known exactly in file mode, else estimated from the VAD
    transcript_at: float | None = None
    first_llm_text: float | None = None
    tts_start: float | None = None
    first_tts_audio: float | None = None
    bot_started: float | None = None
    reply_played: float | None = None
    reply: str = ""
    tone: dict | None = None  # how the user sounded and the style that followed
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def index(self) -> int:
        return self.user.id - 1

    @property
    def transcript(self) -> str:
        return self.user.text

    @property
    def vad_stop(self) -> float | None:
        return self.user.vad_stop

    @property
    def turn_end(self) -> float | None:
        return self.user.turn_end

    def stages(self) -> dict[str, float | None]:
        def span(a, b):
            return round(b - a, 4) if a is not None and b is not None else None

        return {
            "voice_to_voice": span(self.speech_end, self.bot_started),
            "turn_end_detection": span(self.speech_end, self.turn_end),
            "asr": span(self.vad_stop, self.transcript_at),
            "llm_first_token": span(self.turn_end, self.first_llm_text),
            "llm_first_sentence": span(self.turn_end, self.tts_start),
            "tts_first_audio": span(self.tts_start, self.first_tts_audio),
            "reply_total": span(self.speech_end, self.reply_played),
        }

    def summary(self) -> str:
        """One line for the log: voice-to-voice and the stages it is made of."""

        def ms(value):
            return "?" if value is None else f"{value * 1000:.0f}"

        s = self.stages()
        return (
            f"turn {self.index + 1}: voice-to-voice {ms(s['voice_to_voice'])} ms = "
            f"turn end {ms(s['turn_end_detection'])} + LLM first sentence "
            f"{ms(s['llm_first_sentence'])} (first token {ms(s['llm_first_token'])}) + TTS "
            f"first audio {ms(s['tts_first_audio'])} + output; ASR {ms(s['asr'])} ms after "
            f"the VAD stop; heard {self.transcript!r}"
        )


class TurnTimeline(BaseObserver):
    """Watches frames between processors and fills one TurnRecord per user turn.
    ``llm``: the LLM service, whose text frames are the reply's words."""

    def __init__(self, *, vad_stop_secs: float, llm, **kwargs):
        super().__init__(**kwargs)
        self._vad_stop_secs = vad_stop_secs
        self._llm = llm
        self.turns: list[TurnRecord] = []
        self._transcript_at: float | None = None
        self._known_speech_end: float | None = None
        # Called with each turn once its reply has been played out.
        self.on_turn_done: Callable[[TurnRecord], Awaitable[None]] | None = None

    @property
    def current(self) -> TurnRecord | None:
        return self.turns[-1] if self.turns else None

    def mark_speech_end(self, when: float | None = None):
        """The input knows exactly when the user's speech ended (file mode)."""
        self._known_speech_end = when if when is not None else time.monotonic()

    def mark_tts_start(self):
        turn = self.current
        if turn is not None and turn.tts_start is None:
            turn.tts_start = time.monotonic()

    async def on_push_frame(self, data: FramePushed):
        frame = data.frame
        now = time.monotonic()
        if isinstance(frame, TranscriptionFrame):
            self._transcript_at = now  # the last words before the turn ends are awaited
            return
        if isinstance(frame, UserTurnFrame):
            if self.current is None or self.current.user is not frame.turn:
                self._open(frame.turn)
            return
        turn = self.current
        if turn is None or turn.done.is_set():
            return
        if isinstance(frame, LLMTextFrame) and data.source is self._llm:
            turn.first_llm_text = turn.first_llm_text or now
            turn.reply += frame.text
        elif isinstance(frame, TTSAudioRawFrame):
            turn.first_tts_audio = turn.first_tts_audio or now
        elif isinstance(frame, BotStartedSpeakingFrame):
            turn.bot_started = turn.bot_started or now
        elif isinstance(frame, ReplyPlayedFrame) and frame.turn_id == turn.user.id:
            await self._close(turn, now, frame.spoken)

    def _open(self, user: UserTurn):
        if self.current is not None and self.current.user.id == user.id:
            # The turn was taken back and goes on: its reply so far was dropped unheard.
            self.turns.pop()
        speech_end = self._known_speech_end
        if speech_end is None and user.vad_stop is not None:
            speech_end = user.vad_stop - self._vad_stop_secs
        self.turns.append(
            TurnRecord(user=user, speech_end=speech_end, transcript_at=self._transcript_at)
        )
        self._transcript_at = self._known_speech_end = None

    async def _close(self, turn: TurnRecord, now: float, spoken: bool):
        turn.reply = turn.reply.strip()
        tone = await turn.user.tone_result(max_wait_secs=0)  # read long before the reply played
        turn.tone = tone.log if tone else None
        if spoken:  # else a turn with no words: nothing was said
            turn.reply_played = now
        turn.done.set()
        if spoken and self.on_turn_done is not None:
            await self.on_turn_done(turn)
