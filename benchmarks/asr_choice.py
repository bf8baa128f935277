"""Which Whisper settings hear a caller best, and whether Whisper knows when it misheard.

    python -m benchmarks.asr_choice [--config default fast] [--beams 1 5] [--half tune]
        [--questions]

Transcribes, as the pipeline does (agent/asr/whisper.py: the turn's own window, the filler
prompt), the everyday questions of one half spoken by four voices unlike Piper
(``python -m pipelines.callers.everyday_speech``) and the human set's finished turns
(questions, statements, commands, short turns), once per config and beam size; with
``--questions`` also the answer set's 36 questions (pipelines/callers/answer_set.py, not
the everyday set) spoken by each of the four voices. Reported per setting:
WER, the share of turns heard with a mistake that changes words (WER > 0), time per turn
p50/p95; and, for asking the caller to repeat instead of answering a mishearing, how
Whisper's average log-probability separates the misheard turns from the rest: for each
threshold, the share of misheard turns below it (caught) and of well-heard ones (asked for
nothing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agent.asr.whisper import ShortUtteranceWhisper
from agent.audio import load_input_wav
from agent.config import load_config
from agent.models import resolve_model
from benchmarks.call_latency import EVERYDAY_DIR, load_set
from benchmarks.report import write_report
from pipelines.callers.answer_set import QUESTIONS
from pipelines.callers.everyday_speech import VOICES, speak
from pipelines.callers.scoring import corpus_wer, percentile, wer

RATE = 16000
THRESHOLDS = (-0.2, -0.3, -0.4, -0.5, -0.6, -0.8)


QUESTIONS_DIR = Path("out/asr_questions")


def spoken_questions() -> list[dict]:
    """The answer set's questions in each of the everyday voices, rendered once."""
    items = []
    for voice in VOICES:
        for number, question in enumerate(QUESTIONS):
            path = QUESTIONS_DIR / voice / f"{number:02d}.wav"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                speak(voice, question.text, path)
            items.append({"path": str(path), "text": question.text, "set": f"q-{voice}"})
    return items


def clips(half: str) -> list[dict]:
    everyday = json.loads((EVERYDAY_DIR / "manifest.json").read_text())
    chosen = [
        {**c, "path": str(EVERYDAY_DIR / c["path"]), "set": c["voice"]}
        for c in everyday
        if half == "all" or c["half"] == half
    ]
    human = [
        {**c, "set": "human"}
        for c in load_set("human", None)
        if c["category"] in ("question", "statement", "command", "short")
    ]
    return chosen + human


def run(args) -> dict:
    from faster_whisper import WhisperModel

    items = clips(args.half) + (spoken_questions() if args.questions else [])
    audio = {c["path"]: load_input_wav(c["path"], RATE)[0] for c in items}
    settings = {}
    for name in args.config:
        config = load_config(name)
        model = WhisperModel(
            str(resolve_model(config.asr.model, "asr")),
            device="cpu",
            compute_type=config.asr.compute_type,
            cpu_threads=config.asr.cpu_threads,
        )
        for beams in args.beams:
            settings[f"{name} beam {beams}"] = _transcribed(model, beams, config, items, audio)
    return {"config": args.config, "half": args.half, "turns": len(items), "settings": settings}


def _transcribed(model, beams: int, config, items: list[dict], audio: dict) -> dict:
    """Every clip through the pipeline's Whisper with ``beams``, summarized."""
    whisper = ShortUtteranceWhisper(
        model,
        beam_size=beams,
        min_window_secs=config.asr.min_window_secs,
        filler_prompt=config.asr.filler_prompt or None,
    )
    rows = []
    for clip in items:
        samples = audio[clip["path"]].astype("float32") / 32768
        start = time.perf_counter()
        segments, _ = whisper.transcribe(samples, language=config.asr.language)
        secs = time.perf_counter() - start
        text = " ".join(s.text for s in segments).strip()
        logprob = min((s.avg_logprob for s in segments), default=-9.0)
        rows.append(
            {
                "set": clip["set"],
                "text": clip["text"],
                "heard": text,
                "wer": round(wer(clip["text"], text), 3),
                "avg_logprob": round(logprob, 3),
                "secs": round(secs, 3),
            }
        )
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    by_set = {}
    for name in sorted({r["set"] for r in rows}):
        of = [r for r in rows if r["set"] == name]
        by_set[name] = {
            "wer": round(corpus_wer([r["text"] for r in of], [r["heard"] for r in of]), 4),
            "misheard": round(sum(r["wer"] > 0 for r in of) / len(of), 3),
            "of": len(of),
        }
    misheard = [r for r in rows if r["wer"] > 0]
    heard = [r for r in rows if r["wer"] == 0]
    return {
        "wer": round(corpus_wer([r["text"] for r in rows], [r["heard"] for r in rows]), 4),
        "misheard": round(len(misheard) / len(rows), 3),
        "by_set": by_set,
        "secs_p50": percentile([r["secs"] for r in rows], 50),
        "secs_p95": percentile([r["secs"] for r in rows], 95),
        # Ask to repeat below the threshold: misheard turns caught, well-heard ones asked.
        "ask_to_repeat": [
            {
                "below": t,
                "misheard_caught": _share([r["avg_logprob"] < t for r in misheard]),
                "heard_asked": _share([r["avg_logprob"] < t for r in heard]),
            }
            for t in THRESHOLDS
        ],
        "per_turn": rows,
    }


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", nargs="+", default=["default"])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--questions", action="store_true", help="also the answer set's questions, four voices"
    )
    parser.add_argument("--half", choices=["tune", "report", "all"], default="tune")
    parser.add_argument("--out", default="out/benchmarks/asr_choice.json")
    args = parser.parse_args()
    report = run(args)
    out = write_report(report, args.out)
    for name, s in report["settings"].items():
        print(
            f"{name}: WER {s['wer']} misheard {s['misheard']} "
            f"time p50/p95 {s['secs_p50']}/{s['secs_p95']} s"
        )
        print("  by set:", json.dumps(s["by_set"]))
        print("  ask to repeat:", json.dumps(s["ask_to_repeat"]))
    print(f"report: {out}")


if __name__ == "__main__":
    main()
