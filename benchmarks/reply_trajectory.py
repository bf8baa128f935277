"""How the LLM's replies run over a whole call, for several seeds, in text alone.

    python -m benchmarks.reply_trajectory [--config default] [--seeds 0 1 2]
        [--call out/benchmarks/call_latency_human.json] [--set key=value ...]

A call's turns, as Whisper heard them (the ``heard`` words a ``benchmarks.call_latency``
report keeps), are said one after another to the configured LLM service, the one the agent
runs (history, example exchanges, the repeat and echo watch, the DRY sampler, rewrites),
with no audio: a call of 62 turns takes 2-3 minutes on 2 cores instead of 11, so several
seeds fit. One seed is one trajectory: the first replies set how long, and how, the rest
run (a wordy call stays wordy), so a prompt change is judged over several.

Reported per seed and pooled: reply length in words (p50 / p95), first-sentence length,
statements said back (``is_echo`` against what was heard) or answered mostly in their own
words (``leans_on``: "Bobby broke the ledger."), replies that turn the person
away (``is_refusal``), replies said again (``is_repeat``), and seconds a reply took to
write (p50 / p95; rewrites included). ``--set llm.history_replies=whole`` and the like
change the config for a run. Writes a JSON report (default out/benchmarks/reply_trajectory.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import yaml
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from agent.config import load_config
from agent.cpu_share import CpuShare
from agent.llm.echo import is_echo, is_repeat, leans_on
from agent.llm.prompt import first_sentences, is_refusal
from benchmarks.report import write_report
from pipelines.callers.scoring import percentile
from pipelines.services.llm import backend, llm_settings


class _Replies(FrameProcessor):
    """The end of the pipeline: collects each reply's text and says when it has ended."""

    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.ended = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            self.text.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame):
            self.ended.set()
        await self.push_frame(frame, direction)


async def one_call(engine, config, seed: int, turns: list[dict]) -> list[dict]:
    """Says ``turns`` to a fresh session of the LLM service, one after another."""
    config.llm.seed = seed
    module = backend(config.llm.backend)
    llm = module.service(engine, config, f"trajectory-{seed}", llm_settings(config, engine))
    replies = _Replies()
    worker = PipelineWorker(Pipeline([llm, replies]), cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    rows: list[dict] = []

    async def say_turns():
        await asyncio.wait_for(started.wait(), timeout=30)
        messages: list[dict] = []
        for turn in turns:
            messages.append({"role": "user", "content": turn["heard"]})
            replies.text, replies.ended = [], asyncio.Event()
            begun = time.perf_counter()
            await worker.queue_frame(LLMContextFrame(context=LLMContext(list(messages))))
            await replies.ended.wait()
            reply = "".join(replies.text).strip()
            messages.append({"role": "assistant", "content": reply})
            rows.append(
                {
                    "seed": seed,
                    "category": turn["category"],
                    "heard": turn["heard"],
                    "reply": reply,
                    "secs": round(time.perf_counter() - begun, 3),
                }
            )
            print(f"{seed} {turn['category'][:9]:9} {turn['heard'][:40]!r:42} → {reply[:70]!r}")
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), say_turns())
    return rows


def summary(rows: list[dict]) -> dict:
    words = [len(r["reply"].split()) for r in rows]
    first = [len(first_sentences(r["reply"], min_words=1).split()) for r in rows]
    statements = [r for r in rows if r["category"] == "statement"]
    secs = [r["secs"] for r in rows]
    return {
        "turns": len(rows),
        "reply_words": {"p50": percentile(words, 50), "p95": percentile(words, 95)},
        "first_sentence_words": {"p50": percentile(first, 50), "p95": percentile(first, 95)},
        "statements_said_back": sum(is_echo(r["reply"], r["heard"]) for r in statements),
        "statements_leaning_on_their_words": sum(
            leans_on(r["reply"], r["heard"]) for r in statements
        ),
        "statements": len(statements),
        "refusals": sum(is_refusal(r["reply"]) for r in rows),
        # Said again within its own call.
        "replies_repeated": sum(
            is_repeat(r["reply"], [e["reply"] for e in rows[:i] if e["seed"] == r["seed"]])
            for i, r in enumerate(rows)
        ),
        "secs": {"p50": percentile(secs, 50), "p95": percentile(secs, 95)},
    }


def _override(config, assignment: str):
    """``section.field=value`` (the value read as YAML) set on ``config``."""
    path, _, value = assignment.partition("=")
    section, _, field = path.partition(".")
    setattr(getattr(config, section), field, yaml.safe_load(value))


async def run(args) -> dict:
    config = load_config(args.config)
    for assignment in args.set:
        _override(config, assignment)
    turns = [t for t in json.loads(Path(args.call).read_text())["per_turn"] if t.get("heard")]
    engine = backend(config.llm.backend).load(config, CpuShare())
    seeds = {}
    for seed in args.seeds:
        rows = await one_call(engine, config, seed, turns)
        seeds[seed] = {"summary": summary(rows), "replies": rows}
        print(json.dumps({"seed": seed, **seeds[seed]["summary"]}))
    pooled = summary([r for s in seeds.values() for r in s["replies"]])
    return {
        "config": args.config,
        "set": args.set,
        "call": args.call,
        "pooled": pooled,
        "seeds": seeds,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument("--call", default="out/benchmarks/call_latency_human.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--out", default="out/benchmarks/reply_trajectory.json")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report["pooled"], indent=2))
    print(f"report: {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
