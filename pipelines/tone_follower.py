"""Reads how the user sounded before the LLM answers, and passes it on.

Sits between the user aggregator and the LLM. When a user turn ends, the aggregator pushes
UserStoppedSpeakingFrame and then the context for the LLM; this processor holds that
context until the turn's captured audio (from the turn recorder, which sees the same end of
turn on its side of the pipeline) has been analysed, then
- moves the session's speaking style (used by the voice) toward the user's tone;
- adds a short note on how the user sounded after the user's message (a system message,
  kept in the history like the turns), so the wording fits;
- reports the turn's tone (for the file-mode log and the browser page).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from loguru import logger
from pipecat.frames.frames import Frame, LLMContextFrame, UserStoppedSpeakingFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from agent.session import SessionState
from agent.tone import analyze_tone
from agent.tone_follow import as_log

# The recorder usually has the audio before the context gets here; never hold the LLM
# longer than this for it.
MAX_WAIT_SECS = 0.5
HINT_PREFIX = "(The user sounded: "


class ToneFollowerProcessor(FrameProcessor):
    def __init__(
        self,
        *,
        session: SessionState,
        hint_to_llm: bool = True,
        on_tone: Callable[[dict], Awaitable[None]] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._session = session
        self._hint_to_llm = hint_to_llm
        self.on_tone = on_tone
        self._turns_ended = 0
        self._turns_followed = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, UserStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            self._turns_ended += 1
        elif (
            isinstance(frame, LLMContextFrame)
            and direction == FrameDirection.DOWNSTREAM
            and self._turns_ended > self._turns_followed
        ):
            self._turns_followed = self._turns_ended
            await self._follow(self._turns_ended, frame.context)
        await self.push_frame(frame, direction)

    async def _follow(self, turn: int, context) -> None:
        waited = time.perf_counter()
        audio = await self._turn_audio(turn)
        wait_ms = (time.perf_counter() - waited) * 1000
        messages = context.get_messages()
        last = messages[-1] if messages else None
        if audio is None or not last or last.get("role") != "user":
            return
        transcript = last.get("content") if isinstance(last.get("content"), str) else None
        start = time.perf_counter()
        try:
            features = await asyncio.to_thread(
                analyze_tone, audio.samples, audio.sample_rate, transcript
            )
        except ValueError as e:  # e.g. nothing audible: follow nothing this turn
            logger.debug(f"{self}: no tone for turn {turn}: {e}")
            return
        analysis_ms = (time.perf_counter() - start) * 1000
        reading, style = self._session.tone.follow(features)
        hint = reading.describe()
        if hint and self._hint_to_llm:
            context.add_message({"role": "system", "content": f"{HINT_PREFIX}{hint})"})
        logger.debug(f"{self}: turn {turn} tone {reading} -> {style}; hint {hint!r} "
                     f"(waited {wait_ms:.0f} ms for the audio, analysis {analysis_ms:.0f} ms)")
        if self.on_tone is not None:
            await self.on_tone(as_log(features, reading, style,
                                       hint if self._hint_to_llm else None, analysis_ms))

    async def _turn_audio(self, turn: int):
        deadline = time.monotonic() + MAX_WAIT_SECS
        while True:
            ended, audio = self._session.ended_turn(turn)
            if ended or time.monotonic() > deadline:
                return audio
            await asyncio.sleep(0.005)
