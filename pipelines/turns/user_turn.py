"""One user turn, read in one place: the audio the user spoke, its words, its tone.

Sits right after the user aggregator, which runs the VAD and decides when the turn ends,
and passes every frame on untouched but the caller's audio: nothing after it needs that,
so the 50 audio frames a second stop here instead of hopping through the LLM, the TTS,
the output and the assistant aggregator. It sees, in order: the input audio, the VAD's start
and stop of speech, the end of the turn (UserStoppedSpeakingFrame), the turn's text as
written to the LLM context (LLMContextUserTurnFrame), then the context that runs the LLM.

A turn's audio runs from a pre-roll before the first VAD start (the VAD fires only after
``start_secs`` of speech) to the last VAD stop. When the text arrives the turn is made
into a UserTurn (pipelines/turns/record.py) and sent on in a UserTurnFrame, and its tone
is analysed on a thread while the LLM already runs: the reply's style only has to be ready
when the first sentence is spoken (the TTS waits for it, briefly), so tone following costs
the LLM nothing. Nothing about the tone is written into the LLM's context: small models
narrate such notes ("The user is asking ...") instead of answering.

A turn can be taken back. Until the reply's first audio plays, a user who starts to speak
again has not finished (half-duplex, pipelines/turns/half_duplex.py): Pipecat's user
aggregator drops the reply in progress and opens a new turn, and this processor makes
that turn the continuation of the one taken back: the same id, the two parts' words and
audio joined, so the voice, the tone and the timeline see one turn. (The LLM context
holds the parts as consecutive user messages, which the prompt joins, agent/llm/prompt.py.)
If the continuation has no words (a cough), the first part is answered again.

The speaker's usual tone, against which each turn is read, is kept here: it is this
processor's to own, as the record of each turn is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextUserTurnFrame,
    LLMRunFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from agent.tone.analysis import analyze_tone
from agent.tone.follow import ToneFollower, as_log
from pipelines.turns.record import (
    NoWordsFrame,
    ReplyPlayedFrame,
    ToneResult,
    UserTurn,
    UserTurnFrame,
)
from tts.base import SpokenAudio

# A user turn longer than this keeps only its first part; nobody speaks one turn for minutes.
MAX_TURN_SECS = 120.0


class UserTurnProcessor(FrameProcessor):
    """Makes each user turn's record (audio, words, tone, instants) and sends it on.

    ``follow_tone``: the reply's style moves toward how the user sounds (the reading is
    made and reported either way). Events: ``on_turn(processor, turn: UserTurn)``, a turn
    with words is sent (again, whole, when taken back); ``on_tone(processor, log: dict)``:
    a turn's tone has been read (for clients that show them)."""

    def __init__(
        self, *, pre_roll_secs: float, vad_start_secs: float, follow_tone: bool = True, **kwargs
    ):
        super().__init__(**kwargs)
        self._lead_secs = pre_roll_secs + vad_start_secs
        self._follower = ToneFollower(enabled=follow_tone)
        self._sample_rate = 16000
        self._recent: deque[np.ndarray] = deque()  # outside a turn: the latest lead-in
        self._recent_samples = 0
        self._audio: list[np.ndarray] | None = None  # inside a turn: its audio so far
        self._audio_samples = 0
        self._speech_end = 0  # samples into the turn where the VAD last heard speech end
        self._vad_stop: float | None = None
        self._ended: tuple[np.ndarray | None, float] | None = None  # audio, end: awaiting text
        self._turns = 0
        # The latest turn with words whose reply has not begun to play: the user may still
        # take it back. And the turn being continued after such a take-back.
        self._unanswered: UserTurn | None = None
        self._taken_back: UserTurn | None = None
        self._register_event_handler("on_turn")
        self._register_event_handler("on_tone")

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.UPSTREAM:
            if isinstance(frame, (BotStartedSpeakingFrame, ReplyPlayedFrame)):
                self._unanswered = None  # the reply is audible: the turn is the bot's
        elif direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, InputAudioRawFrame):
                self._add_audio(frame)
                return  # the end of the line for the caller's audio
            elif isinstance(frame, VADUserStartedSpeakingFrame):
                self._speech_started()
            elif isinstance(frame, UserStartedSpeakingFrame) and self._unanswered is not None:
                # The aggregator has dropped the reply (its interruption came first).
                self._taken_back, self._unanswered = self._unanswered, None
                logger.debug(f"{self}: turn {self._taken_back.id} taken back, the user goes on")
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                self._speech_end = self._audio_samples
                self._vad_stop = time.monotonic()
            elif isinstance(frame, UserStoppedSpeakingFrame):
                self._turn_ended()
            elif isinstance(frame, LLMContextUserTurnFrame):
                await self.push_frame(frame, direction)
                await self._send_turn(frame.text.strip())
                return
            elif isinstance(frame, NoWordsFrame):
                # Nothing will be said: the user may speak again at once.
                await self._send_turn("")
                return
        await self.push_frame(frame, direction)

    def _add_audio(self, frame: InputAudioRawFrame):
        samples = np.frombuffer(frame.audio, dtype=np.int16)
        if frame.num_channels > 1:
            samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        self._sample_rate = frame.sample_rate
        if self._audio is not None:
            if self._audio_samples < MAX_TURN_SECS * self._sample_rate:
                self._audio.append(samples)
                self._audio_samples += len(samples)
            return
        self._recent.append(samples)
        self._recent_samples += len(samples)
        keep = int(self._lead_secs * self._sample_rate)
        while self._recent and self._recent_samples - len(self._recent[0]) >= keep:
            self._recent_samples -= len(self._recent.popleft())

    def _speech_started(self):
        if self._audio is not None:
            return  # the user resumed within the same turn
        lead = np.concatenate(self._recent) if self._recent else np.zeros(0, np.int16)
        keep = int(self._lead_secs * self._sample_rate)
        self._audio = [lead[max(0, len(lead) - keep) :] if keep else lead[:0]]
        self._audio_samples = len(self._audio[0])
        self._speech_end = 0
        self._recent.clear()
        self._recent_samples = 0

    def _turn_ended(self):
        audio = None
        if self._audio is not None:
            audio = np.concatenate(self._audio)[: self._speech_end or self._audio_samples]
        self._ended = (audio, time.monotonic())
        self._audio = None
        self._audio_samples = 0

    async def _send_turn(self, text: str):
        """The ended turn's record, downstream; with no words, also "nothing to say"
        upstream (the gate listens again). A turn taken back is sent again, continued."""
        audio, turn_end = self._ended or (None, time.monotonic())
        self._ended = None
        vad_stop, self._vad_stop = self._vad_stop, None
        taken_back, self._taken_back = self._taken_back, None
        if taken_back is not None:
            turn = self._continued(taken_back, text, audio, vad_stop, turn_end)
        else:
            self._turns += 1
            turn = UserTurn(id=self._turns, text=text, vad_stop=vad_stop, turn_end=turn_end)
            if text and audio is not None and len(audio):
                turn.audio = SpokenAudio(audio, self._sample_rate, text)
        if text and turn.audio is not None:
            turn.tone = self.create_task(self._read_tone(turn.audio), name="tone")
            logger.debug(f"{self}: turn {turn.id}, {turn.audio.duration_secs:.2f} s: {turn.text!r}")
        self._unanswered = turn if turn.text else None
        await self.push_frame(UserTurnFrame(turn=turn))
        if turn.text:
            await self._call_event_handler("on_turn", turn)
        if taken_back is not None and not text:
            # The aggregator wrote nothing new and runs nothing: ask it to answer the
            # context again, whose last words are the turn taken back.
            await self.push_frame(LLMRunFrame(), FrameDirection.UPSTREAM)
        elif not text:
            await self.push_frame(
                ReplyPlayedFrame(turn_id=turn.id, spoken=False), FrameDirection.UPSTREAM
            )

    def _continued(self, earlier: UserTurn, text: str, audio, vad_stop, turn_end) -> UserTurn:
        """``earlier`` (taken back) and what the user went on to say, as one turn."""
        parts = earlier.parts + 1
        vad_stop = vad_stop or earlier.vad_stop
        if not text:
            # Nothing more was said: the same words, audio and tone reading.
            return dataclasses.replace(earlier, vad_stop=vad_stop, turn_end=turn_end, parts=parts)
        joined = f"{earlier.text} {text}"
        turn = UserTurn(earlier.id, joined, vad_stop=vad_stop, turn_end=turn_end, parts=parts)
        spoken = [a for a in (earlier.audio and earlier.audio.samples, audio) if a is not None]
        if spoken and sum(len(a) for a in spoken):
            turn.audio = SpokenAudio(np.concatenate(spoken), self._sample_rate, joined)
        return turn

    async def _read_tone(self, audio: SpokenAudio) -> ToneResult | None:
        start = time.perf_counter()
        try:
            features = await asyncio.to_thread(
                analyze_tone, audio.samples, audio.sample_rate, audio.text
            )
        except ValueError as e:  # e.g. nothing audible: follow nothing this turn
            logger.debug(f"{self}: no tone for this turn: {e}")
            return None
        analysis_ms = (time.perf_counter() - start) * 1000
        reading, style = self._follower.follow(features)
        logger.debug(f"{self}: tone {reading} -> {style} ({analysis_ms:.0f} ms)")
        log = as_log(features, reading, style, reading.describe(), analysis_ms)
        await self._call_event_handler("on_tone", log)
        return ToneResult(style=style, log=log)
