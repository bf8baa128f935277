"""Assembles one session's Pipecat pipeline around any transport.

    transport.input → half-duplex gate → Whisper STT → keypad (DTMF) entries
      → user aggregator (Silero VAD, turn-end detection) → user turn (audio, text, tone)
      → LLM → TTS → transport.output → reply-played watcher → assistant aggregator

The models come from a ModelStack loaded once per process; everything built here is
per session and cheap.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import OutputTransportMessageUrgentFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.aggregators.llm_text_processor import LLMTextProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.empty_user_turn import EmptyUserTurnConfig
from pipecat.turns.user_start import VADUserTurnStartStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from agent.config import AgentConfig
from agent.session import SessionState
from pipelines.services.analyzers import SharedSileroVADAnalyzer
from pipelines.services.llm import backend, llm_settings
from pipelines.services.stt import SharedWhisperSTTService
from pipelines.services.tts import EngineTTSService
from pipelines.stack import ModelStack
from pipelines.turns import turn_end_policy
from pipelines.turns.first_clause import FirstClauseAggregator
from pipelines.turns.half_duplex import (
    HalfDuplexGate,
    MarkProtocol,
    PlayoutMarks,
    ReplyPlayedWatcher,
)
from pipelines.turns.timeline import TurnTimeline
from pipelines.turns.turn_end import KeypadUserTurnStartStrategy
from pipelines.turns.user_turn import UserTurnProcessor

KEYPAD_PREFIX = "I pressed "
KEYPAD_TIMEOUT_SECS = 2.0


@dataclass
class Session:
    """One conversation: its pipeline worker and the pieces tests and runners look at."""

    worker: PipelineWorker
    state: SessionState
    context: LLMContext
    gate: HalfDuplexGate
    timeline: TurnTimeline


def vad_params(config: AgentConfig) -> VADParams:
    vad = config.vad
    return VADParams(
        confidence=vad.confidence,
        start_secs=vad.start_secs,
        stop_secs=vad.stop_secs,
        min_volume=vad.min_volume,
    )


def _turn_strategies(stack: ModelStack) -> UserTurnStrategies:
    config = stack.config
    policy = turn_end_policy(config.turn.end_detection)
    return UserTurnStrategies(
        start=[VADUserTurnStartStrategy(), KeypadUserTurnStartStrategy()],
        stop=policy.stop_strategies(config, stack.turn_end, stack.cpu),
    )


def _llm_service(stack: ModelStack, session_id: str):
    shared = stack.llm
    settings = llm_settings(stack.config, shared)
    return backend(stack.config.llm.backend).service(shared, stack.config, session_id, settings)


def build_session(
    stack: ModelStack,
    transport: BaseTransport,
    *,
    session_id: str | None = None,
    page: bool = True,
    playout_marks: MarkProtocol | None = None,
    on_turn: Callable[[dict], None] | None = None,
) -> Session:
    """One conversation's pipeline on ``transport``. ``page``: the transport carries the
    browser page's messages (state, conversation, latency); a phone call's must not get
    them (its serializer would send them to the provider). ``playout_marks``: the
    transport's far end reports when audio has played (a phone provider's marks); the
    bot listens again on that report rather than when the audio has been sent.
    ``on_turn(stages)``: called with each answered turn's stage latencies (metrics)."""
    config = stack.config
    state = SessionState(session_id=session_id or uuid.uuid4().hex[:12])

    gate = HalfDuplexGate(
        echo_tail_secs=config.turn.echo_tail_secs,
        max_reply_wait_secs=config.turn.max_reply_wait_secs,
    )
    user_turn = UserTurnProcessor(
        session=state, pre_roll_secs=config.turn.pre_roll_secs, vad_start_secs=config.vad.start_secs
    )
    stt = SharedWhisperSTTService(
        model=stack.whisper,
        beam_size=config.asr.beam_size,
        utterance_window=config.asr.utterance_window,
        ttfs_p99_latency=config.asr.ttfs_p99_secs,
        early=config.asr.early_transcription,
        filler_prompt=config.asr.filler_prompt or None,
        settings=SharedWhisperSTTService.Settings(
            language=config.asr.language, no_speech_prob=config.asr.no_speech_prob
        ),
    )
    llm = _llm_service(stack, state.session_id)
    tts = EngineTTSService(engine=stack.speech, session=state, cpu=stack.cpu)
    # What the TTS speaks at once: the reply's first phrase alone, then whole sentences.
    text_to_speech = LLMTextProcessor(
        text_aggregator=FirstClauseAggregator(min_words=config.tts.first_clause_min_words)
    )
    watcher = ReplyPlayedWatcher(gate, reopens=playout_marks is None)
    # Keys a caller presses become a user turn of their own, "I pressed 42#": after "#" or
    # two seconds without a key. The first key cuts a reply short (Pipecat's interruption):
    # on a half-duplex line it is the caller's one way to do that.
    keypad = DTMFAggregator(prefix=KEYPAD_PREFIX, timeout=KEYPAD_TIMEOUT_SECS)
    state.tone.enabled = config.tone.follow

    context = LLMContext()
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SharedSileroVADAnalyzer(
                session=stack.silero,
                params=vad_params(config),
                max_speech_secs=config.turn.max_user_turn_secs,
            ),
            user_turn_strategies=_turn_strategies(stack),
            # A turn with no words goes unanswered. Pipecat's default asks the LLM to
            # recover from an "interrupted" empty turn with a note about "the user", which a
            # small model reads out; this bot is never interrupted (half-duplex).
            empty_user_turn=EmptyUserTurnConfig(interrupted_prompt=None, idle_prompt=None),
        ),
    )

    timeline = TurnTimeline(
        vad_stop_secs=config.vad.stop_secs, llm=llm, tts=tts, reply_watcher=watcher
    )

    async def tell_client(message: dict):
        # Reaches the browser page over the WebRTC data channel; transports without a
        # page drop it.
        if page:
            await worker.queue_frame(OutputTransportMessageUrgentFrame(message=message))

    @gate.event_handler("on_listening_changed")
    async def _on_listening_changed(_gate, listening: bool):
        await tell_client({"type": "state", "state": "listening" if listening else "replying"})

    @aggregators.user().event_handler("on_user_turn_stopped")
    async def _on_user_turn_stopped(_aggregator, _strategy, message):
        if not message.content:
            gate.nothing_to_reply()
            timeline.no_reply()
        else:
            await tell_client({"type": "conversation", "role": "user", "text": message.content})

    @aggregators.assistant().event_handler("on_assistant_turn_stopped")
    async def _on_assistant_turn_stopped(_aggregator, message):
        if message.content:
            await tell_client({"type": "conversation", "role": "bot", "text": message.content})

    async def on_tone(tone: dict):
        timeline.set_tone(tone)
        await tell_client({"type": "tone", **tone})

    user_turn.on_tone = on_tone

    async def on_turn_done(turn):
        # Every transport gets the same per-turn latency line; the page shows the figures.
        logger.info(f"session {state.session_id} {turn.summary()}")
        if on_turn is not None:
            on_turn(turn.stages())
        # The two instants are on the server's monotonic clock: a benchmark caller on the
        # same machine splits its far-end figure into uplink, server and downlink with them.
        await tell_client(
            {
                "type": "latency",
                "turn": turn.index + 1,
                **turn.stages(),
                "_speech_end_at": turn.speech_end,
                "_bot_started_at": turn.bot_started,
            }
        )

    timeline.on_turn_done = on_turn_done

    @tts.event_handler("on_synthesis_started")
    async def _on_synthesis_started(_tts, _text):
        timeline.mark_tts_start()

    marks = [PlayoutMarks(gate, protocol=playout_marks)] if playout_marks else []
    pipeline = Pipeline(
        [
            transport.input(),
            gate,
            stt,
            keypad,
            aggregators.user(),
            user_turn,
            llm,
            text_to_speech,
            tts,
            *marks,
            transport.output(),
            watcher,
            aggregators.assistant(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=config.audio_in_sample_rate,
            audio_out_sample_rate=config.audio_out_sample_rate,
            enable_metrics=True,
        ),
        observers=[timeline],
        idle_timeout_secs=None,
        enable_rtvi=False,
    )
    return Session(worker=worker, state=state, context=context, gate=gate, timeline=timeline)
