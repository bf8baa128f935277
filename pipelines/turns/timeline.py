"""Per-turn timestamps and stage latencies, collected by a Pipecat observer.

A turn runs from the user's speech to the end of the bot's reply. The voice-to-voice
latency is the time from the end of the user's speech to the first bot audio sample
reaching the output transport; it splits into turn-end detection, LLM time to the first
sentence and TTS time to the first audio (speech recognition runs alongside turn-end
detection and is reported on its own).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    LLMContextUserTurnFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed


@dataclass
class TurnRecord:
    index: int
    started: float
    speech_end: float | None = None  # known exactly in file mode, else estimated from the VAD
    vad_stop: float | None = None
    transcript_at: float | None = None
    turn_end: float | None = None
    first_llm_text: float | None = None
    tts_start: float | None = None
    first_tts_audio: float | None = None
    bot_started: float | None = None
    reply_played: float | None = None
    transcript: str = ""
    reply: str = ""
    tone: dict | None = None  # how the user sounded and the style that followed
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

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
    """Watches frames between processors and fills one TurnRecord per user turn."""

    def __init__(self, *, vad_stop_secs: float, llm, tts, reply_watcher, **kwargs):
        super().__init__(**kwargs)
        self._vad_stop_secs = vad_stop_secs
        self._llm = llm
        self._tts = tts
        self._reply_watcher = reply_watcher
        self.turns: list[TurnRecord] = []
        self._seen: set[int] = set()
        self._known_speech_end: float | None = None
        # Called with each turn once its reply has been played out.
        self.on_turn_done: Callable[[TurnRecord], Awaitable[None]] | None = None

    @property
    def current(self) -> TurnRecord | None:
        return self.turns[-1] if self.turns else None

    def mark_speech_end(self, when: float | None = None):
        """The input knows exactly when the user's speech ended (file mode)."""
        self._known_speech_end = when if when is not None else time.monotonic()
        turn = self.current
        if turn is not None and turn.bot_started is None and turn.speech_end is None:
            turn.speech_end = self._known_speech_end

    def set_tone(self, tone: dict):
        turn = self.current
        if turn is not None:
            turn.tone = tone

    def mark_tts_start(self):
        turn = self.current
        if turn is not None and turn.tts_start is None:
            turn.tts_start = time.monotonic()

    def _open_turn(self, now: float) -> TurnRecord:
        # Only the current turn's frames can come round again, so the set stays small.
        self._seen.clear()
        turn = TurnRecord(index=len(self.turns), started=now)
        self.turns.append(turn)
        self._known_speech_end = None
        return turn

    async def on_push_frame(self, data: FramePushed):
        frame = data.frame
        if frame.id in self._seen:
            return
        now = time.monotonic()
        turn = self.current
        if isinstance(frame, UserStartedSpeakingFrame):
            if turn is None or turn.turn_end is not None:
                self._open_turn(now)
            self._seen.add(frame.id)
            return
        if turn is None:
            return
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self._seen.add(frame.id)
            turn.vad_stop = now
            if self._known_speech_end is None:
                turn.speech_end = now - self._vad_stop_secs
        elif isinstance(frame, TranscriptionFrame):
            self._seen.add(frame.id)
            turn.transcript_at = now  # the last segment's words are the ones the turn waits for
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._seen.add(frame.id)
            turn.turn_end = turn.turn_end or now
            if self._known_speech_end is not None:
                turn.speech_end = self._known_speech_end
        elif isinstance(frame, LLMContextUserTurnFrame):
            self._seen.add(frame.id)
            turn.transcript = frame.text.strip()
        # Frames matched on their source are pushed by it once: no need to remember them.
        elif isinstance(frame, LLMTextFrame) and data.source is self._llm:
            turn.first_llm_text = turn.first_llm_text or now
            turn.reply += frame.text
        elif isinstance(frame, TTSAudioRawFrame) and data.source is self._tts:
            turn.first_tts_audio = turn.first_tts_audio or now
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._seen.add(frame.id)
            turn.bot_started = turn.bot_started or now
        elif isinstance(frame, LLMFullResponseEndFrame) and data.source is self._reply_watcher:
            turn.reply_played = now
            turn.reply = turn.reply.strip()
            turn.done.set()
            if self.on_turn_done is not None:
                await self.on_turn_done(turn)

    def no_reply(self):
        """The user turn ended without text; nothing will be spoken."""
        turn = self.current
        if turn is not None:
            turn.done.set()
