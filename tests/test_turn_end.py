"""Turn-end detection: the policy's reading of words, and the stop strategy inside Pipecat's
user aggregator (frame level, with Smart Turn's verdict scripted)."""

from __future__ import annotations

import pytest
from pipecat.audio.turn.base_turn_analyzer import BaseTurnAnalyzer, BaseTurnParams, EndOfTurnState
from pipecat.frames.frames import (
    EagerEndOfTurnCancelFrame,
    LLMContextFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from pipelines.turns.turn_end import (
    TranscriptAwareTurnStopStrategy,
    TurnEndPolicy,
    reads_finished,
    trails_off,
)


@pytest.mark.parametrize(
    "text",
    [
        "How do we define it?",
        "Go forward ten meters.",
        "Yes.",
        "Thank you.",
        "Please stand by.",
        "What are you looking at?",
        "I really like this.",
    ],
)
def test_finished_words(text):
    assert reads_finished(text) and not trails_off(text)


@pytest.mark.parametrize(
    "text",
    [
        "I went to the store and",
        "I was thinking, um",
        "Well...",
        "My favourite colour is the",
        "So I said,",
        "",
    ],
)
def test_words_that_trail_off(text):
    assert trails_off(text) and not reads_finished(text)


def test_policy_combines_smart_turn_and_words():
    policy = TurnEndPolicy(finished_wait_secs=0.3, fallback_secs=1.2)
    # A finished sentence ends the turn whatever Smart Turn would say: it is not asked.
    assert not policy.needs_smart_turn("How are you?")
    assert policy.wait_after_speech(None, "How are you?") == 0.0
    assert not policy.needs_smart_turn("I went to the store and")
    assert policy.needs_smart_turn("so yeah")
    # Words that trail off outweigh Smart Turn's "done"; no punctuation is not "finished".
    assert policy.wait_after_speech(True, "I went to the store and") == 1.2
    assert policy.wait_after_speech(True, "so yeah") == 0.3
    assert policy.wait_after_speech(False, "so yeah") == 1.2
    # Asking Smart Turn at every pause: both must say finished for an immediate end.
    voting = TurnEndPolicy(finished_wait_secs=0.3, fallback_secs=1.2, words_decide=False)
    assert voting.needs_smart_turn("How are you?")
    assert voting.wait_after_speech(True, "How are you?") == 0.0
    assert voting.wait_after_speech(False, "How are you?") == 0.3


class ScriptedTurnAnalyzer(BaseTurnAnalyzer):
    """Stands in for Smart Turn: says "done" or "not done" as told."""

    def __init__(self, done: bool):
        super().__init__()
        self._done = done
        self.asked = 0

    @property
    def speech_triggered(self) -> bool:
        return True

    @property
    def params(self) -> BaseTurnParams:
        return BaseTurnParams()

    def append_audio(self, buffer: bytes, is_speech: bool) -> EndOfTurnState:
        return EndOfTurnState.INCOMPLETE

    async def analyze_end_of_turn(self):
        self.asked += 1
        return (EndOfTurnState.COMPLETE if self._done else EndOfTurnState.INCOMPLETE), None

    def clear(self):
        pass


async def _run(
    done: bool,
    text: str,
    *,
    resume_after: float,
    speculate: bool = False,
    words_decide: bool = True,
    analyzer: ScriptedTurnAnalyzer | None = None,
):
    strategy = TranscriptAwareTurnStopStrategy(
        turn_analyzer=analyzer or ScriptedTurnAnalyzer(done),
        # A long fallback: the VAD stop frame's timestamp is taken when the frames are
        # made, before the test pipeline starts, which may take a while on a busy machine.
        policy=TurnEndPolicy(finished_wait_secs=0.3, fallback_secs=3.0, words_decide=words_decide),
        speculate=speculate,
    )
    pair = LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(stop=[strategy])
        ),
    )
    frames = [
        VADUserStartedSpeakingFrame(start_secs=0.2),
        SleepFrame(sleep=0.05),
        VADUserStoppedSpeakingFrame(stop_secs=0.2),
        TranscriptionFrame(text=text, user_id="", timestamp="", finalized=True),
        SleepFrame(sleep=resume_after),
        VADUserStartedSpeakingFrame(start_secs=0.2),  # the user speaks again
        SleepFrame(sleep=0.1),
    ]
    down, _ = await run_test(pair.user(), frames_to_send=frames)
    return [type(f) for f in down], down


def _ended_before_resuming(kinds) -> bool:
    resumed = [i for i, k in enumerate(kinds) if k is VADUserStartedSpeakingFrame][1]
    return UserStoppedSpeakingFrame in kinds[:resumed]


async def test_finished_words_end_the_turn_at_once_without_asking_smart_turn():
    analyzer = ScriptedTurnAnalyzer(False)
    kinds, _ = await _run(False, "How do we define it?", resume_after=0.15, analyzer=analyzer)
    assert _ended_before_resuming(kinds)
    assert analyzer.asked == 0


async def test_unpunctuated_words_end_the_turn_when_smart_turn_says_done():
    analyzer = ScriptedTurnAnalyzer(True)
    kinds, _ = await _run(True, "so that is it", resume_after=0.5, analyzer=analyzer)
    assert _ended_before_resuming(kinds)
    assert analyzer.asked == 1


async def test_unpunctuated_words_wait_when_smart_turn_doubts():
    kinds, _ = await _run(False, "so that is it", resume_after=0.6)
    assert not _ended_before_resuming(kinds)


async def test_voting_policy_asks_smart_turn_about_finished_words():
    kinds, _ = await _run(True, "How do we define it?", resume_after=0.15, words_decide=False)
    assert _ended_before_resuming(kinds)
    # Smart Turn doubts: the finished words end the turn after the short wait.
    analyzer = ScriptedTurnAnalyzer(False)
    kinds, _ = await _run(
        False,
        "He was not an ill disposed young man.",
        resume_after=0.5,
        words_decide=False,
        analyzer=analyzer,
    )
    assert _ended_before_resuming(kinds) and analyzer.asked == 1


async def test_a_pause_after_trailing_words_is_not_a_turn_end():
    kinds, _ = await _run(True, "I went to the store and um", resume_after=0.6)
    assert not _ended_before_resuming(kinds)
    assert UserStoppedSpeakingFrame not in kinds


async def test_the_llm_starts_on_the_words_during_the_wait_and_is_withdrawn_when_they_go_on():
    kinds, down = await _run(False, "I went to the store and", resume_after=0.4, speculate=True)
    contexts = [f for f in down if isinstance(f, LLMContextFrame)]
    assert contexts[0].speculation
    assert contexts[0].context.get_messages()[-1]["content"] == "I went to the store and"
    # Withdrawn when the user went on (the LLM drops what it held), and the turn goes on.
    assert kinds.index(EagerEndOfTurnCancelFrame) > kinds.index(LLMContextFrame)
    assert UserStoppedSpeakingFrame not in kinds


async def test_a_confirmed_speculation_is_not_run_twice():
    # Unpunctuated words: the LLM starts on them while Smart Turn listens.
    kinds, down = await _run(True, "so that is it", resume_after=0.5, speculate=True)
    contexts = [f for f in down if isinstance(f, LLMContextFrame)]
    assert len(contexts) == 1 and contexts[0].speculation  # the answer already running
    assert _ended_before_resuming(kinds) and EagerEndOfTurnCancelFrame not in kinds


async def test_a_keypad_entry_is_a_turn_that_ends_at_once():
    """Keys (Pipecat's DTMFAggregator, as in build_session) make a turn with no speech and
    no pause: it ends at the "#", not at the aggregator's 5 s stop watchdog."""
    from pipecat.audio.dtmf.types import KeypadEntry
    from pipecat.frames.frames import InputDTMFFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator

    from pipelines.build import KEYPAD_PREFIX

    pair = _as_built()
    keys = [InputDTMFFrame(KeypadEntry(k)) for k in "42#"]
    down, _ = await run_test(
        Pipeline([DTMFAggregator(prefix=KEYPAD_PREFIX), pair.user()]),
        frames_to_send=[*keys, SleepFrame(sleep=0.5)],
    )
    kinds = [type(f) for f in down]
    assert UserStoppedSpeakingFrame in kinds
    (context,) = [f for f in down if isinstance(f, LLMContextFrame)]
    assert context.context.get_messages()[-1]["content"] == "I pressed 42#"


def _as_built() -> LLMContextAggregatorPair:
    """The user aggregator with the turn strategies build_session gives it."""
    from pipecat.turns.user_start import VADUserTurnStartStrategy

    from pipelines.turns.turn_end import KeypadUserTurnStartStrategy

    strategy = TranscriptAwareTurnStopStrategy(
        turn_analyzer=ScriptedTurnAnalyzer(False),
        policy=TurnEndPolicy(finished_wait_secs=0.3, fallback_secs=3.0),
    )
    return LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(
                start=[VADUserTurnStartStrategy(), KeypadUserTurnStartStrategy()], stop=[strategy]
            )
        ),
    )


async def test_a_transcript_arriving_after_its_turn_never_starts_a_turn_of_its_own():
    """A late Whisper transcript, while the bot replies, used to start a second turn (and
    interrupt the reply); its words now wait for the user's next turn."""
    from pipecat.frames.frames import InterruptionFrame, UserStartedSpeakingFrame

    pair = _as_built()
    late = TranscriptionFrame(text="and one more thing", user_id="", timestamp="")
    down, _ = await run_test(pair.user(), frames_to_send=[late, SleepFrame(sleep=0.3)])
    kinds = [type(f) for f in down]
    assert UserStartedSpeakingFrame not in kinds and InterruptionFrame not in kinds, kinds
    # The next spoken turn carries them.
    pair = _as_built()
    frames = [
        late,
        SleepFrame(sleep=0.1),
        VADUserStartedSpeakingFrame(start_secs=0.2),
        SleepFrame(sleep=0.05),
        VADUserStoppedSpeakingFrame(stop_secs=0.2),
        TranscriptionFrame(text="What time is it?", user_id="", timestamp=""),
        SleepFrame(sleep=0.3),
    ]
    down, _ = await run_test(pair.user(), frames_to_send=frames)
    (context,) = [f for f in down if isinstance(f, LLMContextFrame)]
    assert context.context.get_messages()[-1]["content"] == "and one more thing What time is it?"


async def test_a_turn_past_its_length_ends_at_its_next_pause_whatever_the_words():
    strategy = TranscriptAwareTurnStopStrategy(
        turn_analyzer=ScriptedTurnAnalyzer(False),
        policy=TurnEndPolicy(finished_wait_secs=0.3, fallback_secs=3.0, max_turn_secs=0.5),
    )
    pair = LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(stop=[strategy])
        ),
    )
    import time

    now = time.time()  # frames are stamped when made: the speech ran from -1.0 s to now
    frames = [
        VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=now - 0.8),
        SleepFrame(sleep=0.1),
        VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=now + 0.2),
        # Trailing words would wait the 3 s fallback; the turn is over its length.
        TranscriptionFrame(text="and then I went to the", user_id="", timestamp=""),
        SleepFrame(sleep=0.4),
    ]
    down, _ = await run_test(pair.user(), frames_to_send=frames)
    assert UserStoppedSpeakingFrame in [type(f) for f in down]
