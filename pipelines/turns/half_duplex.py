"""Half-duplex turn taking: while the bot is thinking or speaking, the user is not heard.

The gate sits right after the transport's input, before speech recognition, so audio it
drops is never buffered, transcribed or taken for an interruption. It closes when the
user's turn ends (the aggregator's UserStoppedSpeakingFrame travels upstream to it) and
opens again once the reply has been played out: the ReplyPlayedWatcher, placed after the
output transport, sees the end of the LLM response only after the transport has written
all audio queued before it. Pipecat's AlwaysUserMuteStrategy only covers the time the
bot is audibly speaking, not the gap while the LLM and TTS are still working.

Over a phone line the provider buffers the bot's audio before playing it, so "written by
the transport" is not "heard by the caller". There PlayoutMarks asks the provider to
report when the reply has played (a ``mark`` after its audio, echoed back at playback)
and the gate opens on that report instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NamedTuple

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    LLMFullResponseEndFrame,
    OutputTransportMessageFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class HalfDuplexGate(FrameProcessor):
    """Drops the user's audio from the end of a user turn until the reply has played."""

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
        elif isinstance(frame, UserStoppedSpeakingFrame):
            was_listening = not self._closed
            self._close()
            if was_listening:
                await self._call_event_handler("on_listening_changed", False)
        await self.push_frame(frame, direction)

    def _close(self):
        if not self._closed:
            logger.debug(f"{self}: user turn ended, not listening until the reply has played")
        self._closed = True
        # If no reply ever plays (an LLM that hangs), listen again after a while.
        self._schedule_reopen(self._max_reply_wait_secs)

    def reply_finished(self, tail_secs: float | None = None):
        """Open again once ``tail_secs`` (the echo tail by default) have passed."""
        if self._closed:
            self._schedule_reopen(self._echo_tail_secs if tail_secs is None else tail_secs)

    def nothing_to_reply(self):
        """The turn produced no text, so no reply will come: listen again now."""
        self.reply_finished(tail_secs=0.0)

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


class ReplyPlayedWatcher(FrameProcessor):
    """After the output transport: tells the gate when a reply has been played out (unless
    ``reopens`` is off: PlayoutMarks does it from the far end's report)."""

    def __init__(self, gate: HalfDuplexGate, *, reopens: bool = True, **kwargs):
        super().__init__(**kwargs)
        self._gate = gate
        self._reopens = reopens

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if (
            self._reopens
            and isinstance(frame, LLMFullResponseEndFrame)
            and direction == FrameDirection.DOWNSTREAM
        ):
            self._gate.reply_finished()
        await self.push_frame(frame, direction)


class MarkProtocol(NamedTuple):
    """How a provider's stream asks for and reports playback: the message that asks
    (given a name), and the name a received message reports as played (None if it is not
    such a report)."""

    mark_message: Callable[[str], dict]
    echoed_mark: Callable[[dict], str | None]


class PlayoutMarks(FrameProcessor):
    """Before the output transport of a phone call: after each reply's audio, a mark
    message in the provider's protocol; when the provider reports that mark played, the
    caller has heard the reply and the gate may open (after the echo tail)."""

    def __init__(self, gate: HalfDuplexGate, *, protocol: MarkProtocol, **kwargs):
        super().__init__(**kwargs)
        self._gate = gate
        self._mark_message = protocol.mark_message
        self._echoed_mark = protocol.echoed_mark
        self._replies = 0
        self._waiting_for: str | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseEndFrame) and direction == FrameDirection.DOWNSTREAM:
            self._replies += 1
            self._waiting_for = f"reply-{self._replies}"
            # Queued behind the reply's audio, so the provider plays that first.
            await self.push_frame(
                OutputTransportMessageFrame(message=self._mark_message(self._waiting_for))
            )
        elif isinstance(frame, InputTransportMessageFrame):
            name = self._echoed_mark(frame.message)
            if name is not None and name == self._waiting_for:
                self._waiting_for = None
                self._gate.reply_finished()
            if name is not None:
                return  # ours: nothing further down needs it
        await self.push_frame(frame, direction)
