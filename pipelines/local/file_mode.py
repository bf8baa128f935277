"""File mode: whole spoken turns from WAV files through the live pipeline, offline.

Each input file is played into the pipeline as the user's turn, followed by silence
until the bot's reply has been played out; then the next file follows. The bot's audio
is written to one WAV (replies in order, separated by a short pause) and a JSON log
records, per turn, the transcript, the reply, where the reply sits in the output WAV and
the stage latencies. Both are rewritten (whole, by rename) after every turn, so a run that
is interrupted keeps the turns it had answered.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from loguru import logger
from pipecat.frames.frames import EndFrame
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

from agent.audio import load_input_wav, speech_end_offset, write_wav
from pipelines.build import Session, build_session
from pipelines.local.file_transport import FileTransport
from pipelines.stack import ModelStack

GAP_BETWEEN_REPLIES_SECS = 0.5


@dataclass
class FileTurn:
    """One input turn.

    ``during_reply`` is more speech played into the line while the bot is busy with this
    turn: from the moment the turn has ended ("thinking") or the bot has started to speak
    ("speaking"). A half-duplex bot must not hear it.
    """

    path: Path
    during_reply: np.ndarray | None = None
    during_reply_when: Literal["thinking", "speaking"] = "thinking"


@dataclass
class FileRunResult:
    turns: list[dict]
    conversions: list[str]
    output_path: Path | None
    output_sample_rate: int
    reply_audio: list[np.ndarray] = field(default_factory=list)
    dropped_input_secs: float = 0.0
    session: Session | None = None

    def as_log(self) -> dict:
        return {
            "turns": self.turns,
            "conversions": self.conversions,
            "output_wav": str(self.output_path) if self.output_path else None,
            "output_sample_rate": self.output_sample_rate,
            "input_ignored_while_bot_replied_secs": round(self.dropped_input_secs, 3),
        }


async def run_files(
    stack: ModelStack,
    turns: list[FileTurn],
    *,
    output_path: Path | None = None,
    log_path: Path | None = None,
    reply_timeout_secs: float = 90.0,
    pause_between_turns_secs: float = 1.0,
    on_turn: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FileRunResult:
    """Play ``turns`` through a session; the output WAV and the log (when given) are
    rewritten after each turn. ``on_turn(index, log_entry)``: called as each is done.
    ``should_stop()``: asked before each turn; True ends the run there (Ctrl-C)."""
    config = stack.config
    in_rate = config.audio_in_sample_rate
    out_rate = config.audio_out_sample_rate

    # Every input is checked before anything runs, so a bad file costs nothing.
    inputs, conversions = [], []
    for turn in turns:
        samples, notes = load_input_wav(turn.path, in_rate)
        inputs.append(samples)
        conversions += notes
    for note in conversions:
        logger.warning(f"input converted: {note}")

    transport = FileTransport(
        TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=in_rate,
            audio_out_sample_rate=out_rate,
        )
    )
    session = build_session(stack, transport, session_id="file")
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(session.worker)
    run_task = asyncio.create_task(runner.run())
    mic, speaker = transport.input(), transport.output()
    await asyncio.wait_for(mic.ready.wait(), timeout=30)

    result = FileRunResult(
        turns=[],
        conversions=conversions,
        output_path=output_path,
        output_sample_rate=out_rate,
        session=session,
    )
    offset, start = 0.0, 0
    try:
        await mic.play_silence(0.5)
        for index, (turn, samples) in enumerate(zip(turns, inputs)):
            if should_stop is not None and should_stop():
                break
            before = len(session.timeline.turns)
            end = speech_end_offset(samples, in_rate)
            await mic.play(samples, on_offset=(end, session.timeline.mark_speech_end))
            record = await _keep_line_open_until_reply(
                mic, session, before, turn, reply_timeout_secs
            )
            chunks = [c for _, c in speaker.chunks[start:]]
            start = len(speaker.chunks)
            audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
            entry = _log_entry(turn, record, audio, offset, out_rate)
            offset += len(audio) / out_rate + GAP_BETWEEN_REPLIES_SECS
            result.turns.append(entry)
            result.reply_audio.append(audio)
            result.dropped_input_secs = session.gate.dropped_audio_secs
            # Each answered turn is on disk as soon as it is done: an interrupted run
            # keeps what it had.
            _save(result, log_path)
            if on_turn is not None:
                on_turn(index, entry)
            await mic.play_silence(pause_between_turns_secs)
    finally:
        await session.worker.queue_frame(EndFrame())
        await asyncio.wait_for(run_task, timeout=30)
    return result


def _log_entry(turn: FileTurn, record, audio: np.ndarray, offset: float, rate: int) -> dict:
    entry = {
        "input": str(turn.path),
        "transcript": record.transcript if record else "",
        "reply": record.reply if record else "",
        "reply_audio": {
            "start_secs": round(offset, 3),
            "duration_secs": round(len(audio) / rate, 3),
        },
        "latency_secs": record.stages() if record else {},
        "tone": record.tone if record else None,
    }
    if record is None:
        entry["error"] = "no user turn was detected in this input"
    return entry


def _save(result: FileRunResult, log_path: Path | None):
    """The replies so far as the output WAV and the log, each replaced whole."""
    if result.output_path:
        write_replies_wav(result.output_path, result.reply_audio, result.output_sample_rate)
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        partial = log_path.with_name(f".{log_path.name}.partial")
        partial.write_text(json.dumps(result.as_log(), indent=2))
        os.replace(partial, log_path)


async def _keep_line_open_until_reply(mic, session, turns_before, turn: FileTurn, timeout: float):
    """Feed silence (and any barge-in audio) until the reply to this turn has played."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    barge_in = turn.during_reply
    while loop.time() < deadline:
        timeline = session.timeline
        record = timeline.turns[-1] if len(timeline.turns) > turns_before else None
        if record is not None and record.done.is_set():
            return record
        busy_since = None
        if record is not None:
            busy_since = (
                record.turn_end if turn.during_reply_when == "thinking" else record.bot_started
            )
        if barge_in is not None and busy_since is not None:
            await mic.play(barge_in)
            barge_in = None
        else:
            await mic.play_silence(0.02)
    logger.error(f"no reply to {turn.path} within {timeout:.0f}s")
    return session.timeline.turns[-1] if len(session.timeline.turns) > turns_before else None


def write_replies_wav(path: Path, replies: list[np.ndarray], sample_rate: int) -> None:
    gap = np.zeros(int(GAP_BETWEEN_REPLIES_SECS * sample_rate), np.int16)
    parts = []
    for reply in replies:
        parts += [reply, gap]
    write_wav(path, np.concatenate(parts) if parts else np.zeros(0, np.int16), sample_rate)
