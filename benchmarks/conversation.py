"""Voice-to-voice latency and word error rates of whole spoken turns, in file mode.

    python -m benchmarks.conversation [--config default] [--turns 10] [--voice piper|espeak]

Questions are spoken by the bundled Piper voice (or espeak-ng, a different voice, when
installed) and played through the real pipeline in real time. Reported:
  * question WER: Whisper's transcript of each question vs the question text;
  * reply round-trip WER: Whisper on the bot's reply audio vs the reply text;
  * latency p50/p95 of each stage, from the end of the user's speech.
Writes a JSON report (default out/benchmarks/conversation.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from agent.audio import write_wav
from agent.config import load_config
from benchmarks.report import write_report
from pipelines.callers.answer_set import CONVERSATION_QUESTIONS as QUESTIONS
from pipelines.callers.answer_set import OPEN_QUESTIONS
from pipelines.callers.scoring import corpus_wer, percentile, transcribe
from pipelines.local.file_mode import FileTurn, run_files
from pipelines.stack import load_stack


def speak_questions(
    stack, voice: str, folder: Path, count: int, questions: list[str]
) -> list[tuple[Path, str]]:
    items = []
    for i in range(count):
        text = questions[i % len(questions)]
        path = folder / f"q{i:02d}.wav"
        if voice == "espeak":
            subprocess.run(
                ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), text], check=True
            )
        else:
            write_wav(path, stack.speech.synthesize_all(text, 16000), 16000)
        items.append((path, text))
    return items


async def run(args) -> dict:
    started = time.perf_counter()
    config = load_config(args.config)
    if args.first_clause_min_words is not None:
        config.tts.first_clause_min_words = args.first_clause_min_words
    stack = load_stack(config)
    load_secs = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        asked = OPEN_QUESTIONS if args.questions == "open" else QUESTIONS
        questions = speak_questions(stack, args.voice, Path(tmp), args.turns, asked)
        result = await run_files(stack, [FileTurn(p) for p, _ in questions])

    heard = [transcribe(stack.whisper, a, result.output_sample_rate) for a in result.reply_audio]
    turns = result.turns
    stages = sorted({k for t in turns for k in t["latency_secs"]})
    report = {
        "config": args.config,
        "voice": args.voice,
        "questions": args.questions,
        "first_clause_min_words": config.tts.first_clause_min_words,
        "turns": len(turns),
        "model_load_secs": round(load_secs, 2),
        "question_wer": round(
            corpus_wer([t for _, t in questions], [t["transcript"] for t in turns]), 4
        ),
        "reply_round_trip_wer": round(corpus_wer([t["reply"] for t in turns], heard), 4),
        "latency_secs": {
            stage: {
                "p50": percentile([t["latency_secs"].get(stage) for t in turns], 50),
                "p95": percentile([t["latency_secs"].get(stage) for t in turns], 95),
            }
            for stage in stages
        },
        "per_turn": [
            {**t, "question": q, "reply_heard_as": h}
            for t, (_, q), h in zip(turns, questions, heard)
        ],
    }
    return report


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--voice", choices=["piper", "espeak"], default="piper")
    parser.add_argument(
        "--questions",
        choices=["short", "open"],
        default="short",
        help="short: factual one-liners; open: questions with longer answers",
    )
    parser.add_argument(
        "--first-clause-min-words",
        type=int,
        help="override tts.first_clause_min_words (0: whole sentences only)",
    )
    parser.add_argument("--out", default="out/benchmarks/conversation.json")
    args = parser.parse_args()
    if args.voice == "espeak" and not shutil.which("espeak-ng"):
        parser.error("--voice espeak needs espeak-ng (apt-get install espeak-ng)")
    report = asyncio.run(run(args))
    out = write_report(report, args.out)
    summary = {
        k: report[k]
        for k in (
            "config",
            "voice",
            "questions",
            "first_clause_min_words",
            "turns",
            "question_wer",
            "reply_round_trip_wer",
            "latency_secs",
        )
    }
    print(json.dumps(summary, indent=2))
    print(f"report: {out}")


if __name__ == "__main__":
    main()
