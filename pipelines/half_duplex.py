"""Half-duplex turn taking: while the bot is thinking or speaking, the user is not heard.

The gate sits right after the transport's input, before speech recognition, so audio it
drops is never buffered, transcribed or taken for an interruption. It closes when the
user's turn ends (the aggregator's UserStoppedSpeakingFrame travels upstream to it) and
opens again once the reply has been played out: the ReplyPlayedWatcher, placed after the
output transport, sees the end of the LLM response only after the transport has written
all audio queued before it. Pipecat's AlwaysUserMuteStrategy only covers the time the
bot is audibly speaking, not the gap while the LLM and TTS are still working.
"""

from __future__ import annotations

import asyncio

from loguru import logger
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
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
        elif isinstance(frame, ErrorFrame) and self._closed:
            # A failed reply would otherwise leave the user unheard until the time-out.
            self.reply_finished(tail_secs=0.0)
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
    """After the output transport: tells the gate when a reply has been played out."""

    def __init__(self, gate: HalfDuplexGate, **kwargs):
        super().__init__(**kwargs)
        self._gate = gate

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseEndFrame) and direction == FrameDirection.DOWNSTREAM:
            self._gate.reply_finished()
        await self.push_frame(frame, direction)
