"""Turn-end detection on human speech: how long finished turns wait, how often paused ones
are cut into, for each setting of the policy in pipelines/turns/turn_end.py.

    python -m benchmarks.turn_end [--config default] [--out out/benchmarks/turn_end.json]

Each clip of the human set (``python -m pipelines.callers.human_speech``) goes through the
pipeline's own parts, 20 ms at a time: Silero VAD with the config's parameters, Smart
Turn v3 at every VAD stop, and Whisper on each speech segment exactly as Pipecat's
segmented STT cuts it (1 s before the VAD start to the VAD stop, plus 0.5 s of silence).
What each pause yields (Smart Turn's verdict, the words so far, when the transcript was
ready) is recorded once; every policy is then applied to the same record:

  * a finished turn waits from its end of speech to the turn end (never less than the
    time the transcript took);
  * a pause inside a turn is a cut-in when the turn would end before the VAD hears the
    user again (``rule: turn-end``, half-duplex as it was before issue 21), or, with the
    take-back, when the reply's first sound would play before then: the turn's end plus
    ``--reply-lead`` (the LLM's first phrase and its first audio after the turn end; the
    server stages' p50 on this machine) (``rule: take-back``).

Besides the sweep of (finished_wait_secs, fallback_secs), the report has Pipecat's own
Smart Turn strategy (done → at the transcript, else its 3 s silence time-out) and plain
silence time-outs, and the measured time from end of speech to final transcript (p50 /
p95 / p99: the ``asr.ttfs_p99_secs`` figure). The curve is drawn to a PNG beside the JSON
when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.asr.whisper import ShortUtteranceWhisper
from agent.audio import load_input_wav
from agent.config import load_config
from benchmarks.report import write_report
from pipelines.build import vad_params
from pipelines.callers.scoring import percentile
from pipelines.services.analyzers import (
    SharedSileroVADAnalyzer,
    SharedSmartTurnAnalyzer,
    load_silero_session,
    load_smart_turn_session,
)
from pipelines.turns.turn_end import TurnEndPolicy

RATE = 16000
FRAME = RATE // 50
STT_LEAD_SECS = 1.0  # what Pipecat's segmented STT keeps before the VAD start
STT_TRAILING_SECS = 0.5  # the silence it appends to each segment
TAIL_SECS = 3.5  # silence played after each clip
SMART_TURN_ALONE_SILENCE_SECS = 3.0
SLOW_SECS = 1.5


@dataclass
class Pause:
    speech_end: float  # seconds into the clip
    smart_turn_done: bool
    text: str  # the turn's words up to this pause
    transcript_ready: float  # seconds into the clip
    resumed_at: float | None  # the next VAD start (None: the user did not speak again)
    # Smart Turn's own time on this machine (older reports lack it: its p50 alone on 2 cores)
    smart_turn_secs: float = 0.13


@dataclass
class ClipRecord:
    id: str
    category: str
    transcript: str
    pauses: list[Pause] = field(default_factory=list)


async def record_clip(clip: dict, stack) -> ClipRecord:
    """Feed one clip through VAD, Smart Turn and Whisper; what each pause yields."""
    config, whisper, silero, smart_turn = stack
    samples, _ = load_input_wav(clip["path"], RATE)
    samples = np.concatenate(
        [np.zeros(int(0.5 * RATE), np.int16), samples, np.zeros(int(TAIL_SECS * RATE), np.int16)]
    )
    params = vad_params(config)
    vad = SharedSileroVADAnalyzer(session=silero, params=params)
    vad.set_sample_rate(RATE)
    analyzer = SharedSmartTurnAnalyzer(session=smart_turn)
    analyzer.set_sample_rate(RATE)
    analyzer.update_vad_start_secs(params.start_secs)
    from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
    from pipecat.audio.vad.vad_analyzer import VADState

    record = ClipRecord(clip["id"], clip["category"], clip["transcript"])
    speaking, seg_start, text = False, 0, ""
    for i in range(0, len(samples) - FRAME + 1, FRAME):
        chunk = samples[i : i + FRAME].tobytes()
        state = await vad.analyze_audio(chunk)
        now = (i + FRAME) / RATE
        analyzer.append_audio(chunk, speaking)
        if state == VADState.SPEAKING and not speaking:
            speaking = True
            seg_start = max(0, i + FRAME - int(STT_LEAD_SECS * RATE))
            if record.pauses and record.pauses[-1].resumed_at is None:
                record.pauses[-1].resumed_at = now
        elif state == VADState.QUIET and speaking:
            speaking = False
            judged = time.perf_counter()
            verdict, _ = await analyzer.analyze_end_of_turn()
            smart_turn_secs = time.perf_counter() - judged
            segment = np.concatenate(
                [samples[seg_start : i + FRAME], np.zeros(int(STT_TRAILING_SECS * RATE), np.int16)]
            )
            started = time.perf_counter()
            words = transcribe_segment(whisper, segment, config.asr.no_speech_prob)
            asr_secs = time.perf_counter() - started
            text = f"{text} {words}".strip()
            record.pauses.append(
                Pause(
                    speech_end=round(now - params.stop_secs, 3),
                    smart_turn_done=verdict == EndOfTurnState.COMPLETE,
                    text=text,
                    transcript_ready=round(now + asr_secs, 3),
                    resumed_at=None,
                    smart_turn_secs=round(smart_turn_secs, 3),
                )
            )
    return record


def transcribe_segment(whisper: ShortUtteranceWhisper, segment: np.ndarray, no_speech: float):
    """Words as Pipecat's Whisper service makes them (segments under the no-speech bar)."""
    pieces, _ = whisper.transcribe(segment.astype(np.float32) / 32768, language="en")
    return " ".join(p.text.strip() for p in pieces if p.no_speech_prob < no_speech).strip()


def turn_end_after(pause: Pause, wait: float, words_at: float) -> float:
    """When a turn ends at this pause, in seconds after its end of speech, if the words
    are ready ``words_at`` seconds into the clip."""
    return max(pause.speech_end + wait, words_at) - pause.speech_end


def words_ready(pause: Pause, asr: str, stop_secs: float) -> float:
    """measured: after Whisper ran on the segment at the VAD stop (on this machine);
    at-vad-stop: the words are there when the VAD reports the stop (early transcription
    at its best)."""
    return pause.transcript_ready if asr == "measured" else pause.speech_end + stop_secs


def outcome(
    records: list[ClipRecord],
    wait_for,
    asr: str = "measured",
    stop_secs: float = 0.2,
    asks_smart_turn=lambda pause: True,
    reply_lead: float = 0.0,
) -> dict:
    """Apply a policy (pause -> wait after speech end) to every clip. Where the policy
    asks Smart Turn, the turn cannot end before it has answered (it runs once the words
    are in, as in pipelines/turns/turn_end.py)."""

    def decided_at(pause: Pause) -> float:
        ready = words_ready(pause, asr, stop_secs)
        return ready + (pause.smart_turn_secs if asks_smart_turn(pause) else 0.0)

    finished_waits, cut_ins = [], []
    paused: dict[str, list[bool]] = {"paused_mid": [], "paused_between": []}
    for rec in records:
        ended_early = False
        for pause in rec.pauses[:-1]:  # every pause but the last is inside the turn
            end = pause.speech_end + turn_end_after(pause, wait_for(pause), decided_at(pause))
            if pause.resumed_at is not None and end + reply_lead < pause.resumed_at:
                ended_early = True
                break
        if rec.category in paused:
            paused[rec.category].append(ended_early)
        else:
            cut_ins.append(ended_early)
            if rec.pauses and not ended_early:
                last = rec.pauses[-1]
                finished_waits.append(turn_end_after(last, wait_for(last), decided_at(last)))
    return {
        "finished_wait_p50": percentile(finished_waits, 50),
        "finished_wait_p95": percentile(finished_waits, 95),
        "finished_slow_rate": _mean([w > SLOW_SECS for w in finished_waits]),
        "paused_cut_in_rate": _mean(paused["paused_mid"]),
        "between_sentences_cut_in_rate": _mean(paused["paused_between"]),
        "finished_cut_in_rate": _mean(cut_ins),
        "paused": len(paused["paused_mid"]),
        "between_sentences": len(paused["paused_between"]),
        "finished": len(finished_waits),
    }


def _mean(flags: list[bool]) -> float | None:
    return round(float(np.mean(flags)), 3) if flags else None


def sweep(records: list[ClipRecord], asr: str, reply_lead: float = 0.0) -> list[dict]:
    rows = []
    for words_decide, name in ((True, "words, then smart-turn"), (False, "smart-turn+words")):
        for fallback in (0.8, 1.2, 1.5, 2.0, 2.5, 3.0):
            for finished in (0.0, 0.2, 0.3, 0.5, 0.8, 1.0):
                policy = TurnEndPolicy(
                    finished_wait_secs=min(finished, fallback),
                    fallback_secs=fallback,
                    words_decide=words_decide,
                )
                rows.append(
                    {
                        "policy": name,
                        "finished_wait_secs": policy.finished_wait_secs,
                        "fallback_secs": fallback,
                        **outcome(
                            records,
                            lambda p, q=policy: q.wait_after_speech(p.smart_turn_done, p.text),
                            asr,
                            asks_smart_turn=lambda p, q=policy: q.needs_smart_turn(p.text),
                            reply_lead=reply_lead,
                        ),
                    }
                )
    rows.append(
        {
            "policy": "smart-turn alone (pipecat)",
            **outcome(
                records,
                lambda p: 0.0 if p.smart_turn_done else SMART_TURN_ALONE_SILENCE_SECS,
                asr,
                reply_lead=reply_lead,
            ),
        }
    )
    for silence in (0.4, 0.6, 0.8, 1.0, 1.2, 1.5):
        rows.append(
            {
                "policy": f"silence {silence}s",
                "fallback_secs": silence,
                **outcome(
                    records,
                    lambda p, s=silence: s,
                    asr,
                    asks_smart_turn=lambda p: False,
                    reply_lead=reply_lead,
                ),
            }
        )
    rule = "take-back" if reply_lead else "turn-end"
    return [{**row, "asr": asr, "rule": rule} for row in rows]


def plot(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, marker in (
        ("words, then smart-turn", "D"),
        ("smart-turn+words", "o"),
        ("smart-turn alone", "s"),
        ("silence", "^"),
    ):
        for rule, asr, color in (
            ("turn-end", "measured", "tab:blue"),
            ("turn-end", "at-vad-stop", "tab:orange"),
            ("take-back", "measured", "tab:green"),
        ):
            pts = [
                r
                for r in rows
                if r["policy"].startswith(name) and r["asr"] == asr and r["rule"] == rule
            ]
            ax.scatter(
                [r["finished_wait_p95"] for r in pts],
                [r["paused_cut_in_rate"] for r in pts],
                marker=marker,
                color=color,
                label=f"{name}, words {asr}, {rule}",
            )
    ax.set_xlabel("finished turns: turn-end wait p95 (s after end of speech)")
    ax.set_ylabel("paused turns: cut-in rate")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


async def run(args) -> dict:
    from faster_whisper import WhisperModel

    from agent.models import resolve_model
    from benchmarks.call_latency import load_set

    config = load_config(args.config)
    if args.replay:
        # The pauses of an earlier run, judged again (e.g. after changing the policy's words).
        earlier = json.loads(Path(args.replay).read_text())
        records = [
            ClipRecord(c["id"], c["category"], c["transcript"], [Pause(**p) for p in c["pauses"]])
            for c in earlier["clips_detail"]
        ]
        return report(args, config, records)
    model = WhisperModel(
        str(resolve_model(config.asr.model, "asr")),
        device="cpu",
        compute_type=config.asr.compute_type,
        cpu_threads=config.asr.cpu_threads,
    )
    whisper = ShortUtteranceWhisper(
        model,
        beam_size=config.asr.beam_size,
        min_window_secs=config.asr.min_window_secs,
        filler_prompt=config.asr.filler_prompt or None,
    )
    stack = (config, whisper, load_silero_session(), load_smart_turn_session())
    clips = load_set("human", args.limit)
    records = [await record_clip(c, stack) for c in clips]
    return report(args, config, records)


def report(args, config, records: list[ClipRecord]) -> dict:
    ttfs = [p.transcript_ready - p.speech_end for r in records for p in r.pauses]
    rows = (
        sweep(records, "measured")
        + sweep(records, "at-vad-stop")
        + sweep(records, "measured", args.reply_lead)
    )
    return {
        "config": args.config,
        "clips": len(records),
        "reply_lead_secs": args.reply_lead,
        "time_to_final_transcript_secs": {
            "p50": percentile(ttfs, 50),
            "p95": percentile(ttfs, 95),
            "p99": percentile(ttfs, 99),
        },
        "chosen": {
            "finished_wait_secs": config.turn.finished_wait_secs,
            "fallback_secs": config.turn.fallback_secs,
            "words_decide": config.turn.words_decide,
        },
        "rows": rows,
        "clips_detail": [
            {
                "id": r.id,
                "category": r.category,
                "transcript": r.transcript,
                "pauses": [p.__dict__ for p in r.pauses],
            }
            for r in records
        ],
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--replay", help="judge the pauses recorded in this earlier report")
    parser.add_argument(
        "--reply-lead",
        type=float,
        default=0.55,
        help="seconds from the turn's end to the reply's first sound (the take-back rows)",
    )
    parser.add_argument("--out", default="out/benchmarks/turn_end.json")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    out = write_report(report, args.out)
    picture = plot(report["rows"], out.with_suffix(".png"))
    chosen = report["chosen"]
    for row in report["rows"]:
        mark = (
            " <- default"
            if (
                row.get("finished_wait_secs") == chosen["finished_wait_secs"]
                and row.get("fallback_secs") == chosen["fallback_secs"]
                and row["policy"] == "words, then smart-turn"
            )
            else ""
        )
        print(
            f"{row['rule']:9s} {row['asr']:11s} {row['policy']:26s} finished_wait={row.get('finished_wait_secs')!s:5s} "
            f"fallback={row.get('fallback_secs')!s:5s} wait p50/p95 "
            f"{row['finished_wait_p50']}/{row['finished_wait_p95']} slow "
            f"{row['finished_slow_rate']} paused cut-in {row['paused_cut_in_rate']} "
            f"finished cut-in {row['finished_cut_in_rate']}{mark}"
        )
    print(json.dumps(report["time_to_final_transcript_secs"]))
    print(f"report: {out}" + (f", curve: {picture}" if picture else ""))


if __name__ == "__main__":
    main()
