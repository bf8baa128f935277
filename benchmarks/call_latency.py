"""Voice-to-voice latency and answer quality where the user is: at the far end of a call.

    python -m benchmarks.call_latency [--set human|piper|espeak] [--callers 1] [--config default]
        [--transport webrtc|phone] [--source asterisk] [--limit N]

Starts the agent's server (``run_agent.py``) in its own process, calls it over real WebRTC
on loopback with one or more scripted callers (pipelines/callers/webrtc.py) and plays each
clip of the set as a user turn. Timed at the caller: from the end of the clip's speech
leaving the caller's microphone to the first audible reply sample arriving back. The
server's own per-turn stages (sent over the data channel) are reported beside it.

``--transport phone`` calls in through the phone entry instead (``POST /`` and the Twilio
Media Streams websocket, pipelines/callers/phone.py playing Twilio's part: 8 kHz μ-law
in real time, the bot's audio played on a real-time clock). A phone line carries no page
messages, so only the far-end figures are reported for it.

Sets (made by ``python -m pipelines.callers.human_speech`` and ``--answer-set``):
  human   real recordings: questions, statements, commands, very short and paused turns;
  piper / espeak  the answer-quality questions spoken by two different synthetic voices;
  everyday  one long call: half of answer_set.EVERYDAY (``--half tune|report``) asked by
          four voices unlike Piper (``python -m pipelines.callers.everyday_speech``), with
          the human statements between every two questions, so the history grows as in life.

Reported: the server's CPU over the run (cores), far-end voice-to-voice p50/p95 (all, and per category), server stages p50/p95,
finished turns that waited > 1.5 s for turn end, cut-ins on paused turns (the reply began
before the user had finished), question WER, and the words: answers with the accepted
keywords, replies about "the user" or notes, echoes of statements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from agent.audio import load_input_wav, speech_end_offset
from benchmarks.report import write_report
from pipelines.callers.agent_process import agent_server
from pipelines.callers.answer_set import (
    COMMANDS,
    EVERYDAY,
    QUESTIONS,
    STATEMENTS,
    is_correct,
    is_echo,
    is_meta,
    is_repeat,
)
from pipelines.callers.phone import PhoneCall
from pipelines.callers.scoring import corpus_wer, percentile
from pipelines.callers.webrtc import WebRTCCaller

ROOT = Path(__file__).resolve().parent.parent
SET_DIR = ROOT / "out" / "human_speech"
EVERYDAY_DIR = ROOT / "out" / "everyday_speech"
SLOW_TURN_END_SECS = 1.5
RATE = 16000


def load_everyday(half: str) -> list[dict]:
    """Half of the everyday questions, with a human statement after every two."""
    manifest = EVERYDAY_DIR / "manifest.json"
    if not manifest.exists():
        sys.exit(f"{manifest} not found: run python -m pipelines.callers.everyday_speech first")
    asked = [
        {**item, "category": "question", "path": str(EVERYDAY_DIR / item["path"])}
        for item in json.loads(manifest.read_text())
        if half == "all" or item["half"] == half
    ]
    statements = [c for c in load_set("human", None) if c["category"] == "statement"]
    clips = []
    for i, clip in enumerate(asked):
        clips.append(clip)
        if i % 2 == 1 and statements:
            clips.append(statements.pop(0))
    return clips


def load_set(name: str, limit: int | None, source: str | None = None) -> list[dict]:
    """The clips of a set: dicts with path, category, text and (answer sets) the item;
    ``source``: only the clips whose source starts with it (e.g. "asterisk")."""
    if name == "human":
        manifest = SET_DIR / "manifest.json"
    else:
        manifest = SET_DIR / "manifest_answer_set.json"
    if not manifest.exists():
        sys.exit(f"{manifest} not found: run python -m pipelines.callers.human_speech first")
    items = json.loads(manifest.read_text())
    items = items["items"] if isinstance(items, dict) else items
    clips = []
    if name == "human":
        for item in items:
            clips.append({**item, "text": item["transcript"]})
    else:
        for item in items:
            # "piper:en_US-joe-medium.onnx", "espeak-ng:en-us": the voice, then its model.
            if item["voice"].startswith(name):
                clips.append({**item, "category": answer_item(item["text"])[0]})
    for clip in clips:
        path = Path(clip["path"])
        clip["path"] = str(path if path.is_absolute() else manifest.parent / path)
    if source:
        clips = [c for c in clips if c.get("source", "").startswith(source)]
    return clips[:limit] if limit else clips


def answer_item(text: str):
    """(category, item) of an answer-set turn by its text."""
    for category, items in (
        ("question", QUESTIONS + EVERYDAY),
        ("statement", STATEMENTS),
        ("command", COMMANDS),
    ):
        for item in items:
            if item.text == text:
                return category, item
    raise KeyError(f"not in pipelines.callers.answer_set: {text!r}")


def _first_loud_after(caller: WebRTCCaller, since: float, level: int) -> float | None:
    for at, chunk in caller.heard_chunks():
        if at >= since and chunk.size and np.abs(chunk).max() > level:
            return at
    return None


async def call_turn(caller: WebRTCCaller, clip: dict, *, level: int, timeout: float) -> dict:
    samples, _ = load_input_wav(clip["path"], RATE)
    speech_end = speech_end_offset(samples, RATE)
    seen = len(caller.messages)
    sent = caller.mic.say(samples, RATE)
    await caller.mic.clip_finished.wait()
    result = {k: clip.get(k) for k in ("id", "category", "text", "path", "voice")}
    try:
        await caller.wait_for_reply(sent.started_at, timeout=timeout, level=level)
    except TimeoutError as e:
        result["error"] = str(e)
    # The server's figures for the turn arrive once its reply has been played out.
    for _ in range(50):
        if any(m.get("type") == "latency" for m in caller.messages[seen:]):
            break
        await asyncio.sleep(0.1)
    messages = caller.messages[seen:]
    speech_end_at = sent.time_of(speech_end)
    first_audio_at = _first_loud_after(caller, sent.started_at, level)
    replying_at = [m["_at"] for m in messages if m.get("state") == "replying"]
    # A turn the user took back (went on before the reply played) is sent again, whole,
    # under its id: the latest text of each turn is what was heard.
    heard_turns = {m.get("turn"): m["text"] for m in messages if m.get("role") == "user"}
    result.update(
        heard=" ".join(heard_turns.values()),
        reply=" ".join(m["text"] for m in messages if m.get("role") == "bot"),
        user_turns=len(heard_turns),
        voice_to_voice=(
            round(first_audio_at - speech_end_at, 3) if first_audio_at is not None else None
        ),
        # The bot stopped listening (its turn began) before the user's speech had ended.
        cut_in=bool(replying_at and replying_at[0] < speech_end_at - 0.05),
        server=next((m for m in messages if m.get("type") == "latency"), None),
        # When, after the end of speech, the caller heard the bot stop listening, and the
        # server's report of the played reply arrived (both over the data channel).
        replying_after=round(replying_at[0] - speech_end_at, 3) if replying_at else None,
        reply_played_after=next(
            (round(m["_at"] - speech_end_at, 3) for m in messages if m.get("type") == "latency"),
            None,
        ),
        last_audio_after=_round_after(
            _last_loud_after(caller, sent.started_at, level), speech_end_at
        ),
    )
    server = result["server"] or {}
    if server.get("_speech_end_at") is not None and server.get("_bot_started_at") is not None:
        # Server and caller share this machine's monotonic clock: the far-end figure is
        # the caller's speech reaching the server's VAD, the server, and the reply's way back.
        result["uplink"] = round(server["_speech_end_at"] - speech_end_at, 3)
        if first_audio_at is not None:
            result["downlink"] = round(first_audio_at - server["_bot_started_at"], 3)
    return result


def _last_loud_after(caller: WebRTCCaller, since: float, level: int) -> float | None:
    loud = [
        at for at, c in caller.heard_chunks() if at >= since and c.size and np.abs(c).max() > level
    ]
    return loud[-1] if loud else None


def _round_after(at: float | None, since: float) -> float | None:
    return round(at - since, 3) if at is not None else None


async def run_caller(url: str, clips: list[dict], args, delay: float) -> list[dict]:
    """One caller's turns, over WebRTC or (``--transport phone``) through the phone entry."""
    await asyncio.sleep(delay)
    phone = args.transport == "phone"
    caller = PhoneCall(url) if phone else WebRTCCaller(url)
    turn = phone_turn if phone else call_turn
    await caller.connect()
    results = []
    try:
        await asyncio.sleep(1.0)
        for clip in clips:
            results.append(await turn(caller, clip, level=args.level, timeout=args.reply_timeout))
            await asyncio.sleep(args.pause)
    finally:
        await (caller.hang_up() if phone else caller.close())
    return results


async def phone_turn(call: PhoneCall, clip: dict, *, level: int, timeout: float) -> dict:
    """One turn by phone: far-end voice-to-voice only (the line carries no page messages)."""
    samples, _ = load_input_wav(clip["path"], RATE)
    speech_end = speech_end_offset(samples, RATE)
    sent_end = await call.say(samples, RATE)
    speech_end_at = sent_end - (len(samples) - speech_end) / RATE
    result = {k: clip.get(k) for k in ("id", "category", "text", "path")}
    try:
        await call.wait_for_reply(sent_end, timeout=timeout)
    except TimeoutError as e:
        result["error"] = str(e)
    first = call.played.first_after(speech_end_at, level=level)
    result["voice_to_voice"] = round(first - speech_end_at, 3) if first is not None else None
    return result


def summarize_phone(turns: list[dict]) -> dict:
    finished = [t for t in turns if not t["category"].startswith("paused")]
    return {
        "turns": len(turns),
        "no_reply": sum(1 for t in turns if t["voice_to_voice"] is None),
        "voice_to_voice_far_end": _stats([t["voice_to_voice"] for t in turns]),
        "voice_to_voice_far_end_finished": _stats([t["voice_to_voice"] for t in finished]),
        "voice_to_voice_far_end_by_category": {
            c: _stats([t["voice_to_voice"] for t in turns if t["category"] == c])
            for c in sorted({t["category"] for t in turns})
        },
    }


def _stats(values) -> dict:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "n": len([v for v in values if v is not None]),
    }


def summarize(turns: list[dict]) -> dict:
    categories = sorted({t["category"] for t in turns})
    finished = [t for t in turns if not t["category"].startswith("paused") and t.get("server")]
    stages = sorted(
        {k for t in turns if t.get("server") for k in t["server"] if not k.startswith("_")}
        - {"type", "turn"}
    )
    statements = [t for t in turns if t["category"] == "statement"]
    replies = [t for t in turns if t["reply"]]
    summary = {
        "turns": len(turns),
        "no_reply": sum(1 for t in turns if not t["reply"]),
        "voice_to_voice_far_end": _stats([t["voice_to_voice"] for t in turns]),
        # Turns spoken as finished (questions, statements, commands, short turns): what the
        # latency goal is about. Paused turns are judged by their cut-in rate instead.
        "voice_to_voice_far_end_finished": _stats([t["voice_to_voice"] for t in finished]),
        "far_end_split": {
            part: _stats([t.get(part) for t in turns]) for part in ("uplink", "downlink")
        },
        "voice_to_voice_far_end_by_category": {
            c: _stats([t["voice_to_voice"] for t in turns if t["category"] == c])
            for c in categories
        },
        "server_stages": {
            s: _stats([t["server"].get(s) for t in turns if t.get("server")]) for s in stages
        },
        "finished_turns_slow_turn_end": _rate(
            [(t["server"].get("turn_end_detection") or 0) > SLOW_TURN_END_SECS for t in finished]
        ),
        # A pause mid-thought, and a pause between two sentences of one turn.
        "paused_cut_ins": {
            c: _rate([t["cut_in"] or t["user_turns"] > 1 for t in turns if t["category"] == c])
            for c in ("paused_mid", "paused_between")
        },
        # Every turn as heard over the call (a paused turn cut into is heard in part),
        # the finished ones, and the questions alone.
        **{
            f"wer_{name}": round(corpus_wer([t["text"] for t in ts], [t["heard"] for t in ts]), 4)
            if ts
            else None
            for name, ts in (
                ("all_turns", turns),
                ("finished", [t for t in turns if not t["category"].startswith("paused")]),
                ("questions", [t for t in turns if t["category"] == "question"]),
            )
        },
        "meta_replies": _rate([is_meta(t["reply"]) for t in replies]),
        "statement_echoes": _rate(
            [is_echo(t["reply"], t["text"]) for t in statements if t["reply"]]
        ),
    }
    # The same reply (or a sentence of one) said again later in the same call.
    summary["replies_repeated"] = _rate(
        [
            is_repeat(t["reply"], [e["reply"] for e in turns[:i] if e["caller"] == t["caller"]])
            for i, t in enumerate(turns)
            if t["reply"]
        ]
    )
    if any("item" in t for t in turns):
        asked = [t for t in turns if t["category"] == "question"]
        for t in asked:
            t["correct"] = is_correct(t["reply"], t["item"])
        summary["answers_correct"] = _rate([t["correct"] for t in asked])
        voices = sorted({t["voice"] for t in asked if t.get("voice")})
        summary["answers_correct_by_voice"] = {
            v: _rate([t["correct"] for t in asked if t.get("voice") == v]) for v in voices
        }
        summary["misses"] = [
            {k: t.get(k) for k in ("text", "heard", "reply", "voice")}
            for t in asked
            if not t["correct"]
        ]
    return summary


def _rate(flags: list[bool]) -> dict:
    return {"rate": round(sum(flags) / len(flags), 3) if flags else None, "of": len(flags)}


async def run(args) -> dict:
    if args.set == "everyday":
        clips = load_everyday(args.half)[: args.limit]
    else:
        clips = load_set(args.set, None, args.source)
        if args.category:
            clips = [c for c in clips if c["category"].startswith(args.category)]
        clips = clips[: args.limit] if args.limit else clips
    log_path = Path(args.out).with_suffix(".server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    extra = ["-v"] if args.server_debug else []
    async with agent_server(args.config, log=log_path, extra_args=extra) as (url, server):
        rng = random.Random(0)
        process = psutil.Process(server.pid)
        cpu_before, wall = process.cpu_times(), time.monotonic()
        per_caller = await asyncio.gather(
            *(
                run_caller(url, clips, args, delay=0 if i == 0 else rng.uniform(0.5, 3.0))
                for i in range(args.callers)
            )
        )
        # The server's CPU over the whole run, in cores (2 = both cores of this machine).
        cpu_after = process.cpu_times()
        used = sum(cpu_after[:2]) - sum(cpu_before[:2])
        server_cpu_cores = round(used / (time.monotonic() - wall), 3)
    turns = []
    for caller, results in enumerate(per_caller):
        for t in results:
            turns.append({**t, "caller": caller})
    for t in turns:
        if args.set != "human" and t["category"] != "statement":
            t["item"] = answer_item(t["text"])[1]
    report = {
        "set": args.set,
        "half": args.half if args.set == "everyday" else None,
        "transport": args.transport,
        "config": args.config,
        "callers": args.callers,
        "source": args.source,
        "server_cpu_cores": server_cpu_cores,
        "summary": summarize_phone(turns) if args.transport == "phone" else summarize(turns),
        "per_turn": [{k: v for k, v in t.items() if k != "item"} for t in turns],
        "server_log": str(log_path),
    }
    return report


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", choices=["human", "piper", "espeak", "everyday"], default="human")
    parser.add_argument(
        "--half",
        choices=["tune", "report", "all"],
        default="tune",
        help="--set everyday: which half (report: only for the figures you publish)",
    )
    parser.add_argument("--config", default="default")
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--transport", choices=["webrtc", "phone"], default="webrtc")
    parser.add_argument("--limit", type=int, help="only the first N clips")
    parser.add_argument("--category", help='only clips whose category starts with it ("paused")')
    parser.add_argument(
        "--source", help='only clips from this source, e.g. "asterisk" (8 kHz telephone speech)'
    )
    parser.add_argument(
        "--server-debug", action="store_true", help="the server's log at DEBUG (run_agent -v)"
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between turns")
    parser.add_argument("--level", type=int, default=300, help="int16 level of audible audio")
    parser.add_argument("--reply-timeout", type=float, default=30.0)
    parser.add_argument("--out", help="default out/benchmarks/call_latency_SET.json")
    args = parser.parse_args()
    suffix = f"_{args.half}" if args.set == "everyday" else ""
    suffix += "_phone" if args.transport == "phone" else ""
    suffix += f"_{args.source}" if args.source else ""
    suffix += f"_{args.category}" if args.category else ""
    suffix += f"_{args.callers}callers" if args.callers > 1 else ""
    args.out = args.out or f"out/benchmarks/call_latency_{args.set}{suffix}.json"
    report = asyncio.run(run(args))
    out = write_report(report, args.out)
    print(json.dumps(report["summary"], indent=2))
    print(f"report: {out}")


if __name__ == "__main__":
    main()
