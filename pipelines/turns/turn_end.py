"""When has the user finished? Smart Turn's verdict, the transcript's words, a bounded wait.

After each pause long enough for the VAD to report a stop, two opinions can be had:
Whisper's transcript of what was said (its words and punctuation), and Smart Turn v3 (a
model of how speech sounds at a turn's end). Smart Turn alone judges many short or flat
human turns unfinished and then waits for its silence time-out; the transcript alone ends
a turn at every full stop Whisper writes, even mid-thought. So, by what the words say:

  * a finished sentence (end punctuation, no trailing word)     → end the turn now;
  * they trail off ("and", "the", "um", "You have.", "...", ",") → after ``fallback_secs``;
  * neither (no punctuation: "I'm talking"): Smart Turn is asked → done: after
    ``finished_wait_secs``, not done: after ``fallback_secs``;

all measured from the end of speech (the VAD stop minus its stop_secs), and any new
speech cancels the wait. Smart Turn only runs when the words leave the question open: on
2 cores its ~0.13 s delayed every answer, and on the human set it changed the outcome of
no pause the words had already judged finished that a short wait would have saved
(``benchmarks/turn_end.py`` compares both, and the two knobs' trade-off between the wait
on finished turns and cutting in on paused ones). ``words_decide=False`` asks Smart Turn
at every pause: both finished → now; one → ``finished_wait_secs``.

With ``speculate``, the LLM starts on the words as soon as they are known, while the wait
runs: Pipecat's speculation gate in the LLM service holds the reply until the turn is
confirmed, and the speculation is withdrawn if the user speaks again. Nothing is spoken
before the turn has ended.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from pipecat.audio.turn.base_turn_analyzer import BaseTurnAnalyzer, EndOfTurnState
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    MetricsFrame,
    SpeechControlParamsFrame,
    StartFrame,
    STTMetadataFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.turns.types import ProcessFrameResult, UserTurnSpeculation
from pipecat.turns.user_start.base_user_turn_start_strategy import BaseUserTurnStartStrategy
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy

# Words a finished English statement does not end on: conjunctions, articles,
# possessives, prepositions that need an object, auxiliaries and verbs left without their
# object, and fillers. Whisper puts a full stop after them anyway ("You have.", "If this is
# correct, press."). Particles that end commands ("come in", "stand by") are not here; a
# question mark overrides the list ("What are you looking at?").
CONTINUATION_WORDS = frozenset(
    """and but or because if than although though while whether
    the a an my your his her their our its every some any no
    to of at for with from into about
    is are was were am be been being have has had do does did will would can could
    shall should may might must press enter say dial
    currently successfully also just very really
    um uh er erm hmm mm ah""".split()
)
_TRAILING = re.compile(r"(\.\.\.|…|,|;|:|-)\s*$")
_SENTENCE_END = re.compile(r"[.?!]\s*$")


def trails_off(text: str) -> bool:
    """The words stop mid-thought: a trailing comma or ellipsis, or a word a sentence does
    not end on."""
    text = text.strip()
    if not text or _TRAILING.search(text):
        return True
    if text.endswith("?"):
        return False
    words = re.findall(r"[a-z']+", text.lower())
    return len(words) > 1 and words[-1] in CONTINUATION_WORDS


def reads_finished(text: str) -> bool:
    """The words make a finished sentence: end punctuation (Whisper writes it after speech
    that sounds finished) and no trailing continuation."""
    return bool(_SENTENCE_END.search(text.strip())) and not trails_off(text)


@dataclass(frozen=True)
class TurnEndPolicy:
    # Smart Turn says done but the words are not punctuated (or, without words_decide,
    # only one of the two says finished).
    finished_wait_secs: float = 0.5
    # Nothing says finished (or the words trail off): the longest a silence may last
    # before the turn ends anyway.
    fallback_secs: float = 2.0
    # Words that read as a finished sentence end the turn without asking Smart Turn.
    words_decide: bool = True
    # A turn that has gone on this long ends at its next pause, whatever the words say.
    max_turn_secs: float | None = None

    def needs_smart_turn(self, text: str) -> bool:
        """Whether Smart Turn's verdict changes the wait for these words."""
        if trails_off(text):
            return False
        return not (self.words_decide and reads_finished(text))

    def wait_after_speech(self, smart_turn_done: bool | None, text: str) -> float:
        """Seconds after the end of speech at which the turn ends, given the words and
        Smart Turn's verdict (None: not asked, see ``needs_smart_turn``)."""
        if trails_off(text):
            return self.fallback_secs
        if self.words_decide and reads_finished(text):
            return 0.0
        votes = int(bool(smart_turn_done)) + int(reads_finished(text))
        return (self.fallback_secs, self.finished_wait_secs, 0.0)[votes]


class TranscriptAwareTurnStopStrategy(BaseUserTurnStopStrategy):
    """A user-turn stop strategy that applies a TurnEndPolicy at each pause.

    The decision waits for that pause's transcript (segmented STT transcripts are final),
    or for the STT service's p99 time to the final transcript after the end of speech (its
    STTMetadataFrame), whichever comes first; then, if the words leave it open, for the
    turn analyzer (Smart Turn), run as in Pipecat's TurnAnalyzerUserTurnStopStrategy.
    """

    def __init__(
        self,
        *,
        turn_analyzer: BaseTurnAnalyzer,
        policy: TurnEndPolicy = TurnEndPolicy(),
        speculate: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._analyzer = turn_analyzer
        self._policy = policy
        self._speculate = speculate
        self._speculated: str | None = None  # the words an LLM speculation is running on
        self._ending = False
        self._transcript_timeout_secs = 1.0  # until the STT service says otherwise
        self._speaking = False
        self._text = ""  # the turn's transcript so far
        self._speech_end: float | None = None  # time.time() of the end of speech
        self._turn_start: float | None = None  # time.time() the turn's speech began
        self._verdict: bool | None = None  # Smart Turn at the latest pause
        self._transcript_in = False  # the latest pause's transcript has arrived
        self._timer: asyncio.Task | None = None  # the turn's end, or the transcript's time-out
        self._judging: asyncio.Task | None = None  # Smart Turn on the latest pause

    async def setup(self, setup: FrameProcessorSetup):
        await super().setup(setup)
        self._analyzer.set_sample_rate(setup.audio_in_sample_rate)

    async def cleanup(self):
        await super().cleanup()
        await self._new_pause()
        await self._analyzer.cleanup()

    async def handle_user_turn_started(self):
        await self._reset()

    async def handle_user_turn_stopped(self):
        if self._speculated is not None and not self._ending:
            # Something else ended the turn (Pipecat's stop watchdog): that answer is not
            # ours to confirm.
            await self._withdraw()
        self._ending = False
        await self._reset()
        self._analyzer.clear()

    async def _reset(self):
        self._text = ""
        self._turn_start = None
        await self._new_pause()

    async def _new_pause(self):
        self._speech_end = None
        self._verdict = None
        self._transcript_in = False
        await self._cancel_timer()
        judging, self._judging = self._judging, None
        if judging is not None and judging is not asyncio.current_task():
            await self.task_manager.cancel_task(judging)

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        await super().process_frame(frame)
        if isinstance(frame, StartFrame):
            await self.broadcast_frame(SpeechControlParamsFrame, turn_params=self._analyzer.params)
        elif isinstance(frame, STTMetadataFrame):
            self._transcript_timeout_secs = frame.ttfs_p99_latency
        elif isinstance(frame, InputAudioRawFrame):
            # Smart Turn keeps the turn's audio; its own silence time-out is not used (the
            # policy's fallback is shorter), so its answer here is ignored.
            self._analyzer.append_audio(frame.audio, self._speaking)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._analyzer.update_vad_start_secs(frame.start_secs)
            self._speaking = True
            if self._turn_start is None:
                self._turn_start = frame.timestamp - frame.start_secs
            await self._withdraw()
            await self._new_pause()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speaking = False
            self._speech_end = frame.timestamp - frame.stop_secs
            await self._decide()
        elif isinstance(frame, TranscriptionFrame):
            self._text = " ".join(f"{self._text} {frame.text}".split())
            if frame.finalized and not self._speaking and self._speech_end is None:
                # Words that were never spoken (a keypad entry, from Pipecat's
                # DTMFAggregator): complete as they come, with no pause to judge.
                await self._cancel_timer()
                self._timer = self.task_manager.create_task(self._end_after(0.0), f"{self}::typed")
            elif not self._speaking:
                self._transcript_in = True
                await self._decide()
        return ProcessFrameResult.CONTINUE

    async def _judge(self):
        try:
            state, metrics = await self._analyzer.analyze_end_of_turn()
        except asyncio.CancelledError:
            return
        self._judging = None
        if metrics:
            await self.push_frame(MetricsFrame(data=[metrics]))
        self._verdict = state == EndOfTurnState.COMPLETE
        await self._decide()

    async def _decide(self):
        """Schedule the turn's end from what is known of the latest pause, or ask for what
        is missing: the words (with a time-out), then Smart Turn if they leave it open."""
        if self._speech_end is None:
            return
        await self._cancel_timer()
        if not self._transcript_in:
            # Wait for the words, but not forever: decide on what is there by then.
            remaining = self._speech_end + self._transcript_timeout_secs - time.time()
            self._timer = self.task_manager.create_task(
                self._words_late(max(0.0, remaining)), f"{self}::words_late"
            )
            return
        max_secs = self._policy.max_turn_secs
        if max_secs and self._turn_start and self._speech_end - self._turn_start >= max_secs:
            # A monologue: cut here and answer what was said.
            self._timer = self.task_manager.create_task(self._end_after(0.0), f"{self}::max")
            return
        if self._verdict is None and self._policy.needs_smart_turn(self._text):
            # The LLM starts on the words while Smart Turn listens.
            await self._speculate_on(self._text)
            if self._judging is None:
                self._judging = self.task_manager.create_task(self._judge(), f"{self}::judge")
            return
        delay = self._policy.wait_after_speech(self._verdict, self._text)
        remaining = self._speech_end + delay - time.time()
        if remaining > 0:
            await self._speculate_on(self._text)
        self._timer = self.task_manager.create_task(
            self._end_after(max(0.0, remaining)), f"{self}::end_after"
        )

    async def _words_late(self, delay: float):
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            return
        self._timer = None
        # The transcript is late; judge the words there are (maybe none yet).
        self._transcript_in = True
        await self._decide()

    async def _end_after(self, delay: float):
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            return
        self._timer = None
        if not self._text:
            return
        self._ending = True
        if self._speculated == self._text:
            await self.trigger_user_turn_finalized(confirms_speculation=True)
        else:
            await self._withdraw()
            await self.trigger_user_turn_stopped()
        self._speculated = None

    async def _speculate_on(self, text: str):
        if not self._speculate or not text or text == self._speculated:
            return
        await self._withdraw()
        self._speculated = text
        await self.trigger_user_turn_inference_triggered(speculation=UserTurnSpeculation(text))

    async def _withdraw(self):
        if self._speculated is not None:
            self._speculated = None
            await self.trigger_user_turn_speculation_cancelled()

    async def _cancel_timer(self):
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            await self.task_manager.cancel_task(timer)


class KeypadUserTurnStartStrategy(BaseUserTurnStartStrategy):
    """Starts a turn on words that were never spoken (a keypad entry: Pipecat's
    DTMFAggregator sends them as a finalized transcription).

    It replaces Pipecat's TranscriptionUserTurnStartStrategy, which starts a turn on any
    transcription: a Whisper transcript that arrives after its turn has ended (a long
    segment on a busy machine) then became a second turn that cut the reply short. Spoken
    turns start with the VAD; such late words stay with the user aggregator and are part
    of the user's next turn.
    """

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, TranscriptionFrame) and frame.finalized:
            await self.trigger_user_turn_started()
            return ProcessFrameResult.STOP
        return ProcessFrameResult.CONTINUE


def load():
    """Smart Turn's ONNX session, shared by every session's analyzer."""
    from pipelines.services.analyzers import load_smart_turn_session

    return load_smart_turn_session()


def stop_strategies(config, shared, cpu) -> list:
    """The words first, Smart Turn when they do not decide (``shared``: its session)."""
    from pipelines.services.analyzers import SharedSmartTurnAnalyzer

    turn = config.turn
    policy = TurnEndPolicy(
        finished_wait_secs=turn.finished_wait_secs,
        fallback_secs=turn.fallback_secs,
        words_decide=turn.words_decide,
        max_turn_secs=turn.max_user_turn_secs,
    )
    analyzer = SharedSmartTurnAnalyzer(session=shared, cpu=cpu)
    return [
        TranscriptAwareTurnStopStrategy(
            turn_analyzer=analyzer, policy=policy, speculate=turn.speculative_llm
        )
    ]
