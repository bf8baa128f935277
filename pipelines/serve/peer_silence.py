"""Noticing a call whose far end has gone without saying so.

A browser's peer connection and a phone provider's media stream both send audio all the
time, silence included. When a caller's process dies or its network drops, nothing
closes the call: WebRTC waits for ICE to give up (~35 s here) and a websocket for its
ping timeout, and the call's slot is held all that while. ``PeerSilenceWatch`` sits
right after the transport's input and fires ``on_peer_silent`` once no audio has come
for ``secs`` since the last that did; the server ends the call.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger
from pipecat.frames.frames import CancelFrame, EndFrame, Frame, InputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class PeerSilenceWatch(FrameProcessor):
    """Passes every frame on; ``on_peer_silent(secs)`` once the far end's audio has
    stopped for ``secs``. The watch starts with the first audio: a peer that never
    connects is the offer's connect timeout's to end."""

    def __init__(self, secs: float, **kwargs):
        super().__init__(**kwargs)
        self._secs = secs
        self._last_audio = 0.0
        self._watch: asyncio.Task | None = None
        self._register_event_handler("on_peer_silent")

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._last_audio = time.monotonic()
            if self._watch is None:
                self._watch = self.create_task(self._wait_for_silence(), "peer_silence")
        elif isinstance(frame, (EndFrame, CancelFrame)) and self._watch is not None:
            await self.cancel_task(self._watch)
            self._watch = None
        await self.push_frame(frame, direction)

    async def _wait_for_silence(self):
        while (left := self._last_audio + self._secs - time.monotonic()) > 0:
            await asyncio.sleep(left)
        logger.warning(f"{self}: no audio from the far end for {self._secs:g} s")
        await self._call_event_handler("on_peer_silent", self._secs)
