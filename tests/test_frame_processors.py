"""Frame-level tests of our processors with Pipecat's run_test: frames in, frames out.

Audio frames are queued by a processor while system frames (VAD, errors) jump the queue,
so a SleepFrame lets queued audio through before each system frame, as time does live.
"""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    LLMContextUserTurnFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMRunFrame,
    OutputTransportMessageFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from pipelines.turns.half_duplex import (
    HalfDuplexGate,
    MarkProtocol,
    PlayoutMarks,
    ReplyPlayedWatcher,
)
from pipelines.turns.record import NoWordsFrame, ReplyPlayedFrame, UserTurn, UserTurnFrame
from pipelines.turns.user_turn import UserTurnProcessor

RATE = 16000


def audio(secs: float, hz: float = 0.0, level: float = 0.3) -> list[InputAudioRawFrame]:
    """20 ms input frames: a tone at ``hz`` (silence when 0) lasting ``secs``."""
    t = np.arange(int(secs * RATE)) / RATE
    samples = (np.sin(2 * np.pi * hz * t) * level * 32767 if hz else 0 * t).astype(np.int16)
    step = RATE // 50
    return [
        InputAudioRawFrame(audio=samples[i : i + step].tobytes(), sample_rate=RATE, num_channels=1)
        for i in range(0, len(samples), step)
    ]


def pause(secs: float = 0.05) -> SleepFrame:
    return SleepFrame(sleep=secs)


class OutputStandIn(FrameProcessor):
    """Sends the frames an output transport sends both ways (the bot started speaking)
    and an aggregator broadcasts (an interruption) upstream as well: run_test pushes
    frames one way only."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, (BotStartedSpeakingFrame, InterruptionFrame)):
            if direction == FrameDirection.DOWNSTREAM:
                await self.push_frame(type(frame)(), FrameDirection.UPSTREAM)
        await self.push_frame(frame, direction)


async def test_gate_drops_the_users_audio_from_the_replys_first_sound_until_it_reopens():
    gate = HalfDuplexGate(echo_tail_secs=0.0, max_reply_wait_secs=1.0)
    frames = [
        *audio(0.1, 200),
        pause(),
        UserStoppedSpeakingFrame(),
        pause(),
        *audio(0.2, 200),  # the bot is thinking: the user may go on, and is heard
        pause(),
        BotStartedSpeakingFrame(),
        pause(),
        *audio(0.2, 200),  # spoken while the reply plays: never passes
        pause(1.2),  # no end of the reply came: the gate listens again after a while
        *audio(0.1, 200),
    ]
    down, _ = await run_test(Pipeline([gate, OutputStandIn()]), frames_to_send=frames)
    kinds = [type(f) for f in down]
    assert kinds == (
        [InputAudioRawFrame] * 5
        + [UserStoppedSpeakingFrame]
        + [InputAudioRawFrame] * 10
        + [BotStartedSpeakingFrame]
        + [InputAudioRawFrame] * 5
    )
    assert abs(gate.dropped_audio_secs - 0.2) < 1e-6
    assert gate.listening


async def test_the_gate_listens_again_when_the_reply_played_comes_back_up():
    gate = HalfDuplexGate(echo_tail_secs=0.1, max_reply_wait_secs=60)
    watcher = ReplyPlayedWatcher()  # stands after the output transport
    frames = [
        UserStoppedSpeakingFrame(),
        pause(),
        UserTurnFrame(turn=UserTurn(id=7, text="Hi.")),
        LLMFullResponseStartFrame(),
        pause(),
        BotStartedSpeakingFrame(),
        pause(),
        *audio(0.1, 200),  # dropped: the reply is playing
        pause(),
        LLMFullResponseEndFrame(),  # the reply's audio has all been written out
        pause(0.02),
        *audio(0.04, 200),  # dropped: the echo tail
        pause(0.2),
        *audio(0.1, 200),  # heard
    ]
    down, up = await run_test(Pipeline([gate, OutputStandIn(), watcher]), frames_to_send=frames)
    assert sum(isinstance(f, InputAudioRawFrame) for f in down) == 5
    assert abs(gate.dropped_audio_secs - 0.14) < 1e-6 and gate.listening
    # The report names the turn and ends at the gate.
    assert not any(isinstance(f, ReplyPlayedFrame) for f in up)


async def test_a_reply_dropped_before_it_played_is_not_reported_played():
    watcher = ReplyPlayedWatcher()
    frames = [
        UserTurnFrame(turn=UserTurn(id=1, text="My dog ran away.")),
        LLMFullResponseStartFrame(),
        pause(),
        InterruptionFrame(),  # the user went on before a sound of the reply played
        pause(),
        LLMFullResponseEndFrame(),  # the stopped LLM still closes its response
        pause(),
        UserTurnFrame(turn=UserTurn(id=1, text="My dog ran away. He chewed my shoes.")),
        LLMFullResponseStartFrame(),
        pause(),
        BotStartedSpeakingFrame(),
        pause(),
        LLMFullResponseEndFrame(),
        pause(),
        UserTurnFrame(turn=UserTurn(id=2, text="Tell me a story.")),
        LLMFullResponseStartFrame(),
        pause(),
        BotStartedSpeakingFrame(),
        pause(),
        InterruptionFrame(),  # a key pressed: the reply played as far as it went
        pause(),
        LLMFullResponseEndFrame(),
    ]
    _, up = await run_test(watcher, frames_to_send=frames)
    played = [f.turn_id for f in up if isinstance(f, ReplyPlayedFrame)]
    assert played == [1, 2]


async def test_a_phone_call_listens_again_when_the_far_end_reports_the_reply_played():
    gate = HalfDuplexGate(echo_tail_secs=0.0, max_reply_wait_secs=60)
    marks = PlayoutMarks(
        protocol=MarkProtocol(
            mark_message=lambda name: {"ask": name},
            echoed_mark=lambda message: message.get("played"),
        ),
    )
    frames = [
        UserStoppedSpeakingFrame(),
        pause(),
        UserTurnFrame(turn=UserTurn(id=3, text="Hello.")),
        LLMFullResponseStartFrame(),
        pause(),
        BotStartedSpeakingFrame(),  # (sent by the output transport, after the marks)
        pause(),
        LLMFullResponseEndFrame(),  # the reply's audio has been written, not yet heard
        pause(),
        *audio(0.1, 200),  # dropped: the caller is still hearing the reply
        pause(),
        InputTransportMessageFrame(message={"played": "someone-else"}),
        pause(),
        *audio(0.1, 200),  # still dropped
        pause(),
        InputTransportMessageFrame(message={"played": "turn-3"}),
        pause(0.1),
        *audio(0.1, 200),  # heard
    ]
    pipeline = Pipeline([gate, marks, OutputStandIn()])
    down, _ = await run_test(pipeline, frames_to_send=frames)
    asked = [f.message for f in down if isinstance(f, OutputTransportMessageFrame)]
    assert asked == [{"ask": "turn-3"}]  # the mark is named after the turn it answers
    kinds = [type(f) for f in down]
    # The mark is asked for right after the reply's last audio, before the response ends.
    assert kinds.index(OutputTransportMessageFrame) < kinds.index(LLMFullResponseEndFrame)
    assert sum(k is InputAudioRawFrame for k in kinds) == 5
    assert abs(gate.dropped_audio_secs - 0.2) < 1e-6
    # The echoes are consumed.
    assert not any(isinstance(f, InputTransportMessageFrame) for f in down)


async def test_a_phone_reply_dropped_before_it_played_asks_for_no_mark():
    marks = PlayoutMarks(
        protocol=MarkProtocol(
            mark_message=lambda name: {"ask": name},
            echoed_mark=lambda message: message.get("played"),
        ),
    )
    frames = [
        UserTurnFrame(turn=UserTurn(id=4, text="My dog ran away.")),
        LLMFullResponseStartFrame(),
        pause(),
        InterruptionFrame(),  # taken back before a sound of it was sent
        pause(),
        LLMFullResponseEndFrame(),  # the stopped LLM's end of its dropped reply
        pause(),
        UserTurnFrame(turn=UserTurn(id=4, text="My dog ran away. He chewed my shoes.")),
        LLMFullResponseStartFrame(),
        pause(),
        LLMFullResponseEndFrame(),
    ]
    down, _ = await run_test(marks, frames_to_send=frames)
    asked = [f.message for f in down if isinstance(f, OutputTransportMessageFrame)]
    assert asked == [{"ask": "turn-4"}]  # one mark: the reply to the whole turn


def _turn_frames(text: str, speech_secs: float = 1.0, hz: float = 180) -> list:
    return [
        *audio(1.0),  # silence before the turn: only the pre-roll of it is kept
        pause(),
        VADUserStartedSpeakingFrame(start_secs=0.2),
        *audio(speech_secs, hz),
        pause(),
        VADUserStoppedSpeakingFrame(stop_secs=0.2),
        *audio(0.2),
        pause(),
        UserStoppedSpeakingFrame(),
        LLMContextUserTurnFrame(text=text, timestamp=""),
        pause(0.3),  # the tone is analysed on a thread
    ]


def _sent_turn(down: list) -> UserTurn:
    (frame,) = [f for f in down if isinstance(f, UserTurnFrame)]
    return frame.turn


async def test_user_turn_holds_the_spoken_audio_its_text_and_its_tone():
    processor = UserTurnProcessor(pre_roll_secs=0.3, vad_start_secs=0.2)
    reported: list[dict] = []

    @processor.event_handler("on_tone")
    async def on_tone(_processor, tone):
        reported.append(tone)

    frames = _turn_frames(" Hello there, how are you? ")
    down, up = await run_test(processor, frames_to_send=frames)
    # Every frame goes on, untouched, but the caller's audio (nothing after it needs that);
    # the turn's record follows its text.
    passed = [f for f in down if not isinstance(f, UserTurnFrame)]
    assert passed == [f for f in frames if not isinstance(f, (SleepFrame, InputAudioRawFrame))]
    assert isinstance(down[-1], UserTurnFrame)
    turn = _sent_turn(down)
    assert turn.id == 1 and turn.text == "Hello there, how are you?"
    assert turn.audio.text == turn.text
    # Pre-roll (0.3 s) + the VAD's start delay (0.2 s) + the speech; the silence after the
    # VAD stop is not the user's.
    assert abs(turn.audio.duration_secs - 1.5) < 0.021, turn.audio.duration_secs
    samples = turn.audio.samples
    assert np.abs(samples[int(0.5 * RATE) :]).mean() > 1000
    assert np.abs(samples[: int(0.45 * RATE)]).max() == 0
    assert turn.vad_stop is not None and turn.turn_end >= turn.vad_stop
    # The tone was read from that audio: a 180 Hz voice, reported and in the record.
    (tone,) = reported
    assert abs(tone["features"]["f0_median_hz"] - 180) < 5, tone
    assert (await turn.tone_result(0)).log == tone
    assert not up  # a turn with words: the reply will say when it has played


async def test_a_turn_with_no_words_is_a_record_and_lets_the_user_speak_again():
    processor = UserTurnProcessor(pre_roll_secs=0.3, vad_start_secs=0.2)
    frames = [f for f in _turn_frames("") if not isinstance(f, LLMContextUserTurnFrame)]
    down, up = await run_test(processor, frames_to_send=[*frames, NoWordsFrame(), pause()])
    turn = _sent_turn(down)
    assert turn.text == "" and turn.audio is None and turn.tone is None
    assert [(type(f), f.turn_id, f.spoken) for f in up] == [(ReplyPlayedFrame, 1, False)]


def _go_on(text: str, speech_secs: float = 0.6) -> list:
    """The user starts speaking again (the aggregator's turn start, after its
    interruption) and says ``text``."""
    frames = _turn_frames(text, speech_secs=speech_secs)
    return [UserStartedSpeakingFrame(), *frames[2:]]


async def test_a_user_who_goes_on_before_the_reply_plays_continues_the_same_turn():
    processor = UserTurnProcessor(pre_roll_secs=0.3, vad_start_secs=0.2)
    frames = [*_turn_frames("My dog ran away."), *_go_on("He chewed my shoes.")]
    down, up = await run_test(processor, frames_to_send=frames)
    first, whole = [f.turn for f in down if isinstance(f, UserTurnFrame)]
    assert (first.id, whole.id) == (1, 1) and (first.parts, whole.parts) == (1, 2)
    assert whole.text == "My dog ran away. He chewed my shoes."
    # Both parts' audio, each from its pre-roll to its end of speech.
    assert abs(whole.audio.duration_secs - (1.5 + 1.1)) < 0.041, whole.audio.duration_secs
    assert whole.audio.text == whole.text
    assert whole.tone is not first.tone and (await whole.tone_result(1.0)) is not None
    assert not up


async def test_once_the_reply_plays_the_next_speech_is_a_new_turn():
    processor = UserTurnProcessor(pre_roll_secs=0.3, vad_start_secs=0.2)
    frames = [
        *_turn_frames("My dog ran away."),
        BotStartedSpeakingFrame(),  # bounced up: the reply is audible
        pause(),
        *_go_on("He chewed my shoes."),
    ]
    down, _ = await run_test(Pipeline([processor, OutputStandIn()]), frames_to_send=frames)
    turns = [f.turn for f in down if isinstance(f, UserTurnFrame)]
    assert [(t.id, t.text, t.parts) for t in turns] == [
        (1, "My dog ran away.", 1),
        (2, "He chewed my shoes.", 1),
    ]


async def test_a_turn_taken_back_by_a_sound_without_words_is_answered_again():
    processor = UserTurnProcessor(pre_roll_secs=0.3, vad_start_secs=0.2)
    noise = [f for f in _go_on("") if not isinstance(f, LLMContextUserTurnFrame)]
    frames = [*_turn_frames("My dog ran away."), *noise, NoWordsFrame(), pause()]
    down, up = await run_test(processor, frames_to_send=frames)
    first, again = [f.turn for f in down if isinstance(f, UserTurnFrame)]
    assert (again.id, again.text, again.parts) == (1, "My dog ran away.", 2)
    assert again.audio is first.audio or len(again.audio.samples) == len(first.audio.samples)
    # Not "nothing to say" (the user's words are still unanswered): the aggregator is
    # asked to run the LLM on its context again.
    assert [type(f) for f in up] == [LLMRunFrame]


async def test_a_loud_turn_moves_the_reply_style_louder():
    processor = UserTurnProcessor(pre_roll_secs=0.3, vad_start_secs=0.2)
    frames = [*_turn_frames("Tell me now!", hz=220)]
    frames = [*audio(0.1)] + [  # the same turn, spoken at nearly full scale
        f
        if not isinstance(f, InputAudioRawFrame) or not np.frombuffer(f.audio, np.int16).any()
        else InputAudioRawFrame(
            audio=(np.frombuffer(f.audio, np.int16) * 3).tobytes(), sample_rate=RATE, num_channels=1
        )
        for f in frames
    ]
    down, _ = await run_test(processor, frames_to_send=frames)
    assert (await _sent_turn(down).tone_result(1.0)).style.loudness_db > 0


async def test_the_reply_style_waits_for_the_tone_analysis_in_flight():
    import asyncio

    from pipelines.turns.record import ToneResult
    from tts.base import SpeakingStyle

    louder = ToneResult(style=SpeakingStyle(loudness_db=3.0), log={})

    async def analysis():
        await asyncio.sleep(0.1)
        return louder

    turn = UserTurn(id=1, text="Hi.", tone=asyncio.create_task(analysis()))
    assert await turn.tone_result(0.5) == louder
    # A stuck analysis delays the voice by the wait given at most, and gives nothing.
    stuck = UserTurn(id=2, text="Hi.", tone=asyncio.create_task(asyncio.sleep(10)))
    started = asyncio.get_running_loop().time()
    assert await stuck.tone_result(0.1) is None
    assert asyncio.get_running_loop().time() - started < 1.0
    stuck.tone.cancel()


async def test_a_reply_opens_with_its_first_sound_and_later_sentences_keep_their_pauses(stack):
    from pipecat.frames.frames import (
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TTSAudioRawFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.processors.aggregators.llm_text_processor import LLMTextProcessor

    from pipelines.services.tts import EngineTTSService
    from pipelines.turns.first_clause import FirstClauseAggregator

    tts = EngineTTSService(engine=stack.speech, session_id="t")
    reply = Pipeline([LLMTextProcessor(text_aggregator=FirstClauseAggregator(min_words=3)), tts])
    frames = [
        LLMFullResponseStartFrame(),
        LLMTextFrame("Mary rolled the barrel. "),
        LLMTextFrame("Then she rolled it back."),
        LLMFullResponseEndFrame(),
        pause(2.0),
    ]
    down, _ = await run_test(reply, frames_to_send=frames)
    first_audio = next(f for f in down if isinstance(f, TTSAudioRawFrame))

    def sound_starts_ms(samples: np.ndarray, rate: int) -> float:
        return np.flatnonzero(np.abs(samples.astype(np.int32)) > 100)[0] * 1000 / rate

    # Piper opens each sentence with 35-60 ms of silence: the reply's first sentence is
    # cut to 10 ms before its first sound, the next keeps its own (a pause between them).
    assert (
        sound_starts_ms(np.frombuffer(first_audio.audio, np.int16), first_audio.sample_rate) <= 15
    )
    first, second = [u.audio for u in tts.dialogue]
    assert first.text == "Mary rolled the barrel." and second.text == "Then she rolled it back."
    assert sound_starts_ms(first.samples, first.sample_rate) <= 15
    assert sound_starts_ms(second.samples, second.sample_rate) >= 30


def test_urgent_work_holds_background_work_back_until_it_ends():
    import threading

    from agent.cpu_share import CpuShare

    cpu = CpuShare(max_wait_secs=30)
    went_on = threading.Event()

    def background():
        cpu.wait_for_urgent()
        went_on.set()

    with cpu.urgent():
        worker = threading.Thread(target=background)
        worker.start()
        assert not went_on.wait(0.3)
        assert cpu.busy
    assert went_on.wait(10)
    worker.join()
    assert not cpu.busy


async def test_the_vad_cuts_a_stretch_of_speech_with_no_pause_at_its_limit(stack):
    """Real Silero on ten seconds of speech with its pauses taken out: one segment, unless
    ``max_speech_secs`` cuts it."""
    from pipecat.audio.vad.vad_analyzer import VADState

    from pipelines.build import vad_params
    from pipelines.services.analyzers import SharedSileroVADAnalyzer
    from tests.conftest import speak

    text = "I went to the market this morning and bought apples, bread and cheese for the week."
    voice = np.concatenate([speak(stack, text), speak(stack, text)])
    frames = voice[: len(voice) // 320 * 320].reshape(-1, 320)  # 20 ms
    voiced = frames[np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1)) > 300]
    speech = np.tile(voiced.reshape(-1), 3)[: 16000 * 10]

    async def stops(max_speech_secs):
        vad = SharedSileroVADAnalyzer(
            session=stack.silero,
            params=vad_params(stack.config),
            max_speech_secs=max_speech_secs,
        )
        vad.set_sample_rate(16000)
        states, at = [], []
        for i in range(0, len(speech), 320):
            states.append(await vad.analyze_audio(speech[i : i + 320].tobytes()))
            at.append((i + 320) / 16000)
        spoke = [t for t, s in zip(at, states) if s == VADState.SPEAKING]
        return [
            t for t, s, p in zip(at[1:], states[1:], states) if s == VADState.QUIET and p != s
        ], spoke

    uncut, spoke = await stops(None)
    assert spoke and not [t for t in uncut if t < 9.5], uncut  # one stretch, as given
    cut, _ = await stops(4.0)
    assert cut and 4.0 <= cut[0] <= 5.0, cut


async def test_the_conversation_is_read_ahead_once_the_reply_has_been_voiced(stack, monkeypatch):
    """The LLM reads the next turn's prompt when the TTS says the reply's speech is made
    (a frame), not on a timer: never beside the synthesis of the reply it just wrote. A
    reply of several sentences takes the voice longer than the old 0.3 s timer."""
    import time

    from pipecat.frames.frames import LLMContextFrame
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_text_processor import LLMTextProcessor

    from pipelines.services.llm import backend, llm_settings
    from pipelines.services.tts import EngineTTSService
    from pipelines.turns.first_clause import FirstClauseAggregator

    read: list[tuple[float, list[dict]]] = []
    real_read_ahead, real_synthesize = stack.llm.read_ahead, stack.speech.synthesize

    def recorded(messages, *, session=None, reply=False):
        read.append((time.monotonic(), messages))
        return real_read_ahead(messages, session=session, reply=reply)

    synthesised: list[tuple[float, float]] = []  # each sentence's synthesis: start, end

    def timed_synthesis(text, context):
        started = time.monotonic()
        result = yield from real_synthesize(text, context)
        synthesised.append((started, time.monotonic()))
        return result

    monkeypatch.setattr(stack.llm, "read_ahead", recorded)
    monkeypatch.setattr(stack.speech, "synthesize", timed_synthesis)
    config = stack.config
    llm = backend("llama-cpp").service(stack.llm, config, "ahead", llm_settings(config, stack.llm))

    reply = Pipeline(
        [
            llm,
            LLMTextProcessor(text_aggregator=FirstClauseAggregator(min_words=3)),
            EngineTTSService(engine=stack.speech, session_id="ahead"),
        ]
    )
    question = "Tell me about the city of Paris."
    context = LLMContext()
    context.add_message({"role": "user", "content": question})
    _, up = await run_test(reply, frames_to_send=[LLMContextFrame(context=context), pause(4.0)])
    # At the start, the system prompt; after the reply, the conversation with it.
    assert len(read) == 2, [m for _, m in read]
    at, messages = read[1]
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"].strip()
    assert messages[-2] == {"role": "user", "content": question}
    assert len(synthesised) >= 2  # sentences, one after another
    assert at >= max(end for _, end in synthesised)  # once the last had been synthesised
    assert not any(type(f).__name__ == "ReplyVoicedFrame" for f in up)


async def test_a_local_reply_that_fails_ends_with_the_apology_and_the_session_goes_on(
    stack, monkeypatch
):
    """The in-process LLM stage: its reply's words as text frames between a start and an
    end; when the engine fails mid-reply, the apology closes the same response, an error
    goes upstream, and the next context is answered."""
    from pipecat.frames.frames import (
        ErrorFrame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
    )
    from pipecat.processors.aggregators.llm_context import LLMContext

    from pipelines.services.llm import backend, llm_settings

    real = stack.llm.stream_chat
    calls = []

    def first_fails(messages, **options):
        calls.append(messages)
        stream = real(messages, **options)
        if len(calls) > 1:
            return stream

        def broken():
            yield next(iter(stream))
            stream.cancel()
            raise RuntimeError("the model went away")

        return broken()

    monkeypatch.setattr(stack.llm, "stream_chat", first_fails)
    config = stack.config
    llm = backend("llama-cpp").service(stack.llm, config, "fails", llm_settings(config, stack.llm))
    context = LLMContext()
    context.add_message({"role": "user", "content": "What is the capital of France?"})
    down, up = await run_test(
        llm,
        frames_to_send=[
            LLMContextFrame(context=context),
            pause(1.0),
            LLMContextFrame(context=context),
            pause(2.0),
        ],
    )
    kinds = [type(f) for f in down]
    assert kinds.count(LLMFullResponseStartFrame) == kinds.count(LLMFullResponseEndFrame) == 2
    first_end = kinds.index(LLMFullResponseEndFrame)
    first = [f.text for f in down[:first_end] if isinstance(f, LLMTextFrame)]
    assert len(first) == 2 and first[-1].strip() == config.llm.apology
    second = "".join(f.text for f in down[first_end:] if isinstance(f, LLMTextFrame))
    assert second.strip() and config.llm.apology not in second
    assert any(isinstance(f, ErrorFrame) for f in up)


def _with_llm(config, **changes):
    """``config`` with its ``llm`` section changed."""
    return config.model_copy(update={"llm": config.llm.model_copy(update=changes)})


async def _written(engine, config, session: str, messages: list[dict], wait: float) -> list[str]:
    """The text frames the in-process LLM service writes for ``messages`` with ``engine``
    (the shared model, or a stand-in), the session forgotten after."""
    from pipecat.frames.frames import LLMContextFrame, LLMTextFrame
    from pipecat.processors.aggregators.llm_context import LLMContext

    from pipelines.services.llm import backend, llm_settings

    llm = backend("llama-cpp").service(engine, config, session, llm_settings(config, engine))
    down, _ = await run_test(
        llm, frames_to_send=[LLMContextFrame(context=LLMContext(messages)), pause(wait)]
    )
    engine.forget(session)
    return [f.text for f in down if isinstance(f, LLMTextFrame)]


REPEATED_QUESTIONS = [
    "Say hello to me.",
    "What is the capital of France?",
    "Tell me a joke.",
    "What colour is the sky?",
    "Say good morning.",
]


async def test_a_reply_said_before_word_for_word_is_written_anew(stack):
    """The same question twice in a call: the model (greedy-ish, seeded) would answer it
    with the very same words; the second answer is written again, opening another way,
    and nothing of the repeat reaches the voice. (The DRY sampler, which turns most
    replies away from a repeat before it is written, is off: the watch is the test.)"""
    from agent.llm.echo import clean

    async def reply(messages: list[dict], session: str, rewrite: bool = True) -> list[str]:
        # The first reply is read whole, as it was said: cut to its first sentence, the
        # model writes that sentence alone and says nothing word for word again.
        config = _with_llm(
            stack.config, rewrite_repeats=rewrite, dry_multiplier=0, history_replies="whole"
        )
        return await _written(stack.llm, config, session, messages, 2.0)

    # A question the model, left to itself, answers the second time with the very same
    # words (which one does varies with the CPU's kernels: llama.cpp rounds differently
    # with AVX-512).
    for n, asked in enumerate(REPEATED_QUESTIONS):
        question = {"role": "user", "content": asked}
        first = await reply([question], f"repeat-{n}-1")
        again = [question, {"role": "assistant", "content": "".join(first).strip()}, question]
        unguarded = await reply(again, f"repeat-{n}-2", rewrite=False)
        if clean("".join(unguarded)) == clean("".join(first)):
            break
    else:
        pytest.fail(f"the model said none of {REPEATED_QUESTIONS} again word for word")
    second = await reply(again, f"repeat-{n}-3")
    assert second and clean("".join(second)) != clean("".join(first))
    assert second[0] != first[0]  # the rewrite may not open as the repeat did


async def test_a_reply_that_only_says_the_users_words_back_is_written_anew(stack):
    """Told a plain statement, the test model says it back word for word; a reply that
    is the user's own words is written again."""
    from agent.llm.echo import clean

    said = "The cat sat on the mat."

    async def reply(session: str, rewrite: bool = True) -> str:
        config = _with_llm(stack.config, rewrite_repeats=rewrite, dry_multiplier=0)
        messages = [{"role": "user", "content": said}]
        return "".join(await _written(stack.llm, config, session, messages, 2.0)).strip()

    unguarded = await reply("echo-1", rewrite=False)
    guarded = await reply("echo-2")
    assert clean(unguarded) == clean(said), unguarded
    assert guarded and clean(guarded) != clean(unguarded)


class _ScriptedLLM:
    """Writes one reply, piece by piece, whatever it is asked: no real model can be made
    to say a given sentence second on cue, and this test is about what the service does
    with the text."""

    name = "scripted"

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def stream_chat(self, messages, **_):
        return _Script(self.pieces)

    def read_ahead(self, *_, **__):
        pass

    def forget(self, *_, **__):
        pass


class _Script(list):
    def cancel(self):
        pass


class _ScriptedReplies(_ScriptedLLM):
    """Writes the next of ``replies`` each time it is asked, the last one from then on."""

    def __init__(self, replies: list[str]):
        self.replies = [[w + " " for w in reply.split()] for reply in replies]
        self.asked = 0

    def stream_chat(self, messages, **_):
        self.asked += 1
        return _Script(self.replies[min(self.asked, len(self.replies)) - 1])


@pytest.mark.parametrize(
    "heard, replies, spoken",
    [
        # A statement said back in other words is written anew; none of it is spoken.
        ("Bobby ripped the ledger.", ["Oh no, it was Bobby who ripped the ledger.", "Why?"], 1),
        ("Mary rolled the barrel.", ["Yes, Mary rolled the barrel.", "Oh no! Why?"], 1),
        # Once: a second echo is spoken rather than written a third time.
        ("Please try again.", ["I'll try again.", "No, try it again.", "Okay."], 1),
        # A reaction that shares a word goes out as written.
        ("Bobby ripped the ledger.", ["Oh no, was the ledger important?", "Why?"], 0),
        # An answer shares the question's words, and is no echo.
        ("Who ripped the ledger?", ["Bobby ripped the ledger.", "Why?"], 0),
    ],
)
async def test_a_statement_said_back_in_other_words_is_written_anew(stack, heard, replies, spoken):
    script = _ScriptedReplies(replies)
    config = _with_llm(stack.config, rewrite_repeats=True, dry_multiplier=0)
    messages = [{"role": "user", "content": heard}]
    said = "".join(await _written(script, config, "scripted", messages, 0.5)).strip()
    assert said == replies[spoken]
    assert script.asked == spoken + 1


async def test_a_reply_ends_before_a_later_sentence_it_said_before(stack):
    """Sentences after the first are spoken whole anyway, so one said before word for
    word is held until it ends and, if it is the same, the reply ends before it."""
    said = "Let me know if you need anything else."
    reply = "Paris is the capital. Let me know if you need anything else. It is big."
    pieces = [w + " " for w in reply.split()]
    script = _ScriptedLLM(pieces)
    messages = [
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": f"Hello! {said}"},
        {"role": "user", "content": "What is the capital of France?"},
    ]

    async def spoken(rewrite: bool) -> str:
        config = _with_llm(stack.config, rewrite_repeats=rewrite, dry_multiplier=0)
        return "".join(await _written(script, config, "scripted", messages, 0.5)).strip()

    assert await spoken(rewrite=False) == reply
    assert await spoken(rewrite=True) == "Paris is the capital."
