"""Assembles one session's Pipecat pipeline around any transport.

    transport.input → [peer silence watch] → half-duplex gate → Whisper STT → keypad entries
      → user aggregator (Silero VAD, turn end) → user turn (the turn's record)
      → LLM → first phrase, then sentences → TTS → [phone marks] → transport.output
      → reply-played watcher → assistant aggregator

A user turn is one record (pipelines/turns/record.py) sent downstream in a frame; "the
reply has played" comes back upstream to the gate as a frame. The models come from a
ModelStack loaded once per process; everything built here is per session and cheap.
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
from pipelines.serve.peer_silence import PeerSilenceWatch
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
from pipelines.turns.record import NoWordsFrame
from pipelines.turns.timeline import TurnRecord, TurnTimeline
from pipelines.turns.turn_end import KeypadUserTurnStartStrategy
from pipelines.turns.user_turn import UserTurnProcessor
from tts.base import SpokenAudio, Utterance

KEYPAD_PREFIX = "I pressed "
KEYPAD_TIMEOUT_SECS = 2.0


@dataclass
class Session:
    """One conversation: its pipeline worker and the pieces tests and runners look at."""

    session_id: str
    worker: PipelineWorker
    context: LLMContext
    gate: HalfDuplexGate
    timeline: TurnTimeline
    tts: EngineTTSService
    # Fires "on_peer_silent" when the far end stops sending audio (server calls only).
    peer_watch: PeerSilenceWatch | None = None

    @property
    def user_turns(self) -> list[SpokenAudio]:
        """What the user said in each turn with words, as captured."""
        return [t.user.audio for t in self.timeline.turns if t.user.audio is not None]

    @property
    def bot_replies(self) -> list[SpokenAudio]:
        """The bot's sentences as spoken (as many as the voice keeps)."""
        return [u.audio for u in self.tts.dialogue if u.speaker == "bot"]

    @property
    def dialogue(self) -> list[Utterance]:
        return list(self.tts.dialogue)


def vad_params(config: AgentConfig) -> VADParams:
    vad = config.vad
    return VADParams(
        confidence=vad.confidence,
        start_secs=vad.start_secs,
        stop_secs=vad.stop_secs,
        min_volume=vad.min_volume,
    )


def build_session(
    stack: ModelStack,
    transport: BaseTransport,
    *,
    session_id: str | None = None,
    page: bool = True,
    playout_marks: MarkProtocol | None = None,
    on_turn: Callable[[TurnRecord], None] | None = None,
    peer_silence_secs: float | None = None,
) -> Session:
    """One conversation's pipeline on ``transport``. ``page``: the transport carries the
    browser page's messages (state, conversation, latency); a phone call's must not get
    them (its serializer would send them to the provider). ``playout_marks``: the
    transport's far end reports when audio has played (a phone provider's marks); the
    bot listens again on that report rather than when the audio has been sent.
    ``on_turn(turn)``: called with each answered turn's record, once its reply has played
    (metrics, the session log).
    ``peer_silence_secs``: watch for a far end that stops sending audio (a server's calls,
    whose peers stream all the time; pipelines/serve/peer_silence.py)."""
    config = stack.config
    session_id = session_id or uuid.uuid4().hex[:12]
    context = LLMContext()
    aggregators = _aggregators(stack, context)
    gate = HalfDuplexGate(
        echo_tail_secs=config.turn.echo_tail_secs,
        max_reply_wait_secs=config.turn.max_reply_wait_secs,
    )
    user_turn = UserTurnProcessor(
        pre_roll_secs=config.turn.pre_roll_secs,
        vad_start_secs=config.vad.start_secs,
        follow_tone=config.tone.follow,
    )
    llm = backend(config.llm.backend).service(
        stack.llm, config, session_id, llm_settings(config, stack.llm)
    )
    tts = EngineTTSService(engine=stack.speech, session_id=session_id, cpu=stack.cpu)
    peer_watch = PeerSilenceWatch(peer_silence_secs) if peer_silence_secs else None
    pipeline = Pipeline(
        [
            transport.input(),
            *([peer_watch] if peer_watch else []),
            gate,
            _stt(stack),
            # Keys a caller presses become a user turn of their own, "I pressed 42#": after
            # "#" or two seconds without a key. The first key cuts a reply short (Pipecat's
            # interruption): on a half-duplex line it is the caller's one way to do that.
            DTMFAggregator(prefix=KEYPAD_PREFIX, timeout=KEYPAD_TIMEOUT_SECS),
            aggregators.user(),
            user_turn,
            llm,
            # What the TTS speaks at once: the reply's first phrase alone, then sentences.
            LLMTextProcessor(
                text_aggregator=FirstClauseAggregator(min_words=config.tts.first_clause_min_words)
            ),
            tts,
            *([PlayoutMarks(protocol=playout_marks)] if playout_marks else []),
            transport.output(),
            ReplyPlayedWatcher(reports=playout_marks is None),
            aggregators.assistant(),
        ]
    )
    timeline = TurnTimeline(vad_stop_secs=config.vad.stop_secs, llm=llm)
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
    session = Session(session_id, worker, context, gate, timeline, tts, peer_watch)
    _connect_events(session, aggregators, user_turn, page=page, on_turn=on_turn)
    return session


def _aggregators(stack: ModelStack, context: LLMContext) -> LLMContextAggregatorPair:
    """The user aggregator (Silero VAD, the turn-end policy) and the assistant's."""
    config = stack.config
    policy = turn_end_policy(config.turn.end_detection)
    return LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SharedSileroVADAnalyzer(
                session=stack.silero,
                params=vad_params(config),
                max_speech_secs=config.turn.max_user_turn_secs,
            ),
            user_turn_strategies=UserTurnStrategies(
                start=[VADUserTurnStartStrategy(), KeypadUserTurnStartStrategy()],
                stop=policy.stop_strategies(config, stack.turn_end, stack.cpu),
            ),
            # A turn with no words goes unanswered. Pipecat's default asks the LLM to
            # recover from an "interrupted" empty turn with a note about "the user", which a
            # small model reads out; this bot is never interrupted (half-duplex).
            empty_user_turn=EmptyUserTurnConfig(interrupted_prompt=None, idle_prompt=None),
        ),
    )


def _stt(stack: ModelStack) -> SharedWhisperSTTService:
    asr = stack.config.asr
    return SharedWhisperSTTService(
        model=stack.whisper,
        beam_size=asr.beam_size,
        utterance_window=asr.utterance_window,
        min_window_secs=asr.min_window_secs,
        ttfs_p99_latency=asr.ttfs_p99_secs,
        early=asr.early_transcription,
        filler_prompt=asr.filler_prompt or None,
        settings=SharedWhisperSTTService.Settings(
            language=asr.language, no_speech_prob=asr.no_speech_prob
        ),
    )


def _connect_events(session: Session, aggregators, user_turn, *, page: bool, on_turn):
    """Pipecat's events, turned into what the session's clients see: the browser page's
    messages (state, conversation, tone, latency), the per-turn log line and metrics; and
    the aggregator's word that a turn had no words, into a frame for the turn's record."""
    worker, timeline = session.worker, session.timeline

    async def tell_client(message: dict):
        # Reaches the browser page over the WebRTC data channel; a phone call has none.
        if page:
            await worker.queue_frame(OutputTransportMessageUrgentFrame(message=message))

    @session.gate.event_handler("on_listening_changed")
    async def _on_listening_changed(_gate, listening: bool):
        await tell_client({"type": "state", "state": "listening" if listening else "replying"})

    @aggregators.user().event_handler("on_user_turn_stopped")
    async def _on_user_turn_stopped(_aggregator, _strategy, message):
        if not message.content:
            await user_turn.queue_frame(NoWordsFrame())

    @user_turn.event_handler("on_turn")
    async def _on_turn(_processor, turn):
        # A turn taken back comes again, whole, under its id: the page shows it in place.
        await tell_client(
            {"type": "conversation", "role": "user", "text": turn.text, "turn": turn.id}
        )

    @aggregators.assistant().event_handler("on_assistant_turn_stopped")
    async def _on_assistant_turn_stopped(_aggregator, message):
        if message.content:
            await tell_client({"type": "conversation", "role": "bot", "text": message.content})

    @user_turn.event_handler("on_tone")
    async def _on_tone(_processor, tone: dict):
        await tell_client({"type": "tone", **tone})

    @session.tts.event_handler("on_synthesis_started")
    async def _on_synthesis_started(_tts, _text):
        timeline.mark_tts_start()

    async def on_turn_done(turn):
        # Every transport gets the same per-turn latency line; the page shows the figures.
        logger.info(f"session {session.session_id} {turn.summary()}")
        if on_turn is not None:
            on_turn(turn)
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
