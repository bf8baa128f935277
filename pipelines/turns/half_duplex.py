"""Half-duplex turn taking: once the bot's reply is audible, the user is not heard.

The two never speak at once. Until the reply's first audio plays, the user may go on: the
gate passes their audio, the VAD hears them start again, Pipecat's user aggregator
interrupts the reply in progress (nothing of it has been spoken) and the turn continues
with everything they said (pipelines/turns/user_turn.py joins the two parts). Once the
reply's audio plays, the gate drops the user's audio until the reply has been heard,
so nothing of it is buffered, transcribed or taken for an interruption.

The gate sits right after the transport's input, before speech recognition. It closes on
the output transport's BotStartedSpeakingFrame (sent upstream as the first audio leaves
for the user) and opens again when a ReplyPlayedFrame comes back up
(pipelines/turns/record.py): the ReplyPlayedWatcher, placed after the output transport,
sees the end of the LLM response only after the transport has written all audio queued
before it, and sends one naming the turn. An interruption that still reaches it (a key
pressed on the phone cuts a reply short; a user heard just as the reply began) opens it
at once: the user has the turn. Pipecat's AlwaysUserMuteStrategy only mutes the
aggregator while the bot is audibly speaking; the audio would still be transcribed.

Over a phone line the provider buffers the bot's audio before playing it, so "written by
the transport" is not "heard by the caller". There PlayoutMarks asks the provider to
report when the reply has played (a ``mark`` named after the turn, sent after its audio
and echoed back at playback) and sends the ReplyPlayedFrame on that report instead. The
gate still closes as the first audio is sent: the carrier plays it within tens of
milliseconds, and a caller who spoke on after that would hear the bot and themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NamedTuple

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputTransportMessageFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipelines.turns.record import ReplyPlayedFrame, UserTurnFrame


class HalfDuplexGate(FrameProcessor):
    """Drops the user's audio from the reply's first sound until the reply has played."""

    def __init__(self, *, echo_tail_secs: float, max_reply_wait_secs: float, **kwargs):
        super().__init__(**kwargs)
        self._echo_tail_secs = echo_tail_secs
        self._max_reply_wait_secs = max_reply_wait_secs
        self._closed = False
        self._reopen_task: asyncio.Task | None = None
        self.dropped_audio_secs = 0.0
        # on_listening_changed(gate, listening: bool): for clients that show the bot's state.
        self._register_event_handler("on_listening_changed")

    @property
    def listening(self) -> bool:
        return not self._closed

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            if self._closed:
                self.dropped_audio_secs += len(frame.audio) / (
                    2 * frame.sample_rate * frame.num_channels
                )
                return
        elif isinstance(frame, BotStartedSpeakingFrame) and direction == FrameDirection.UPSTREAM:
            if not self._closed:
                self._close()
                await self._call_event_handler("on_listening_changed", False)
        elif isinstance(frame, InterruptionFrame) and direction == FrameDirection.UPSTREAM:
            # The reply was dropped or cut short: the user has the turn.
            if self._closed:
                self._schedule_reopen(0.0)
        elif isinstance(frame, ReplyPlayedFrame):
            # After a spoken reply the echo tail; with nothing said, at once.
            if self._closed:
                self._schedule_reopen(self._echo_tail_secs if frame.spoken else 0.0)
            return  # the end of its way up
        await self.push_frame(frame, direction)

    def _close(self):
        logger.debug(f"{self}: the reply is playing, not listening until it has played")
        self._closed = True
        # If the reply's end is never reported (a lost mark), listen again after a while.
        self._schedule_reopen(self._max_reply_wait_secs)

    def _schedule_reopen(self, delay: float):
        if self._reopen_task and not self._reopen_task.done():
            self._reopen_task.cancel()
        self._reopen_task = self.create_task(self._reopen_after(delay), name="half-duplex-reopen")

    async def _reopen_after(self, delay: float):
        await asyncio.sleep(delay)
        self._closed = False
        logger.debug(f"{self}: listening again")
        await self._call_event_handler("on_listening_changed", True)

    async def cleanup(self):
        if self._reopen_task and not self._reopen_task.done():
            await self.cancel_task(self._reopen_task)
        await super().cleanup()


class _Reply:
    """Follows an LLM response on its way out, to tell when it has ended as a reply: at
    its end, or when an interruption cuts it short once it is audible (a key pressed; it
    played as far as it went). One dropped by an interruption before a sound of it played
    is no reply (the user took the turn back), and the end the stopped LLM still sends for
    it is not taken for one."""

    def __init__(self):
        self._in_progress = False
        self._audible = False

    def ended(self, frame: Frame) -> bool:
        if isinstance(frame, LLMFullResponseStartFrame):
            self._in_progress, self._audible = True, False
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._audible = True
        elif isinstance(frame, (InterruptionFrame, LLMFullResponseEndFrame)):
            was_reply = self._in_progress and (
                self._audible or isinstance(frame, LLMFullResponseEndFrame)
            )
            self._in_progress = False
            return was_reply
        return False


class ReplyPlayedWatcher(FrameProcessor):
    """After the output transport: once a reply has been written out, tells the gate
    upstream (a ReplyPlayedFrame naming the turn), unless ``reports`` is off (PlayoutMarks
    reports from the far end). A reply cut short once audible (a key pressed) has played
    as far as it went; one dropped before a sound of it played is no reply: the user took
    the turn back, and it goes on."""

    def __init__(self, *, reports: bool = True, **kwargs):
        super().__init__(**kwargs)
        self._reports = reports
        self._turn_id = 0
        self._reply = _Reply()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, UserTurnFrame):
            self._turn_id = frame.turn.id
        elif self._reply.ended(frame) and self._reports:
            await self.push_frame(ReplyPlayedFrame(turn_id=self._turn_id), FrameDirection.UPSTREAM)


class MarkProtocol(NamedTuple):
    """How a provider's stream asks for and reports playback: the message that asks
    (given a name), and the name a received message reports as played (None if it is not
    such a report)."""

    mark_message: Callable[[str], dict]
    echoed_mark: Callable[[dict], str | None]


class PlayoutMarks(FrameProcessor):
    """Before the output transport of a phone call: after each reply's audio, a mark
    message in the provider's protocol, named after the turn it answers; when the provider
    reports that mark played, the caller has heard the reply and a ReplyPlayedFrame goes
    upstream to the gate."""

    def __init__(self, *, protocol: MarkProtocol, **kwargs):
        super().__init__(**kwargs)
        self._mark_message = protocol.mark_message
        self._echoed_mark = protocol.echoed_mark
        self._turn_id = 0
        self._waiting_for: int | None = None  # the turn whose reply's mark is out
        self._reply = _Reply()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, UserTurnFrame) and direction == FrameDirection.DOWNSTREAM:
            self._turn_id = frame.turn.id
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._reply.ended(frame)  # it comes up from the output transport
        elif direction == FrameDirection.DOWNSTREAM and self._reply.ended(frame):
            self._waiting_for = self._turn_id
            # Queued behind the reply's audio, so the provider plays that first.
            mark = self._mark_message(_mark_name(self._turn_id))
            await self.push_frame(OutputTransportMessageFrame(message=mark))
        elif isinstance(frame, InputTransportMessageFrame):
            name = self._echoed_mark(frame.message)
            if self._waiting_for is not None and name == _mark_name(self._waiting_for):
                turn_id, self._waiting_for = self._waiting_for, None
                await self.push_frame(ReplyPlayedFrame(turn_id=turn_id), FrameDirection.UPSTREAM)
            if name is not None:
                return  # ours: nothing further down needs it
        await self.push_frame(frame, direction)


def _mark_name(turn_id: int) -> str:
    return f"turn-{turn_id}"
