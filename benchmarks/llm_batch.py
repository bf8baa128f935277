"""Replies written at once: what a caller waits for when others' replies are being written.

    python -m benchmarks.llm_batch [--config default] [--callers 1 2 3 4]

K callers ask at once (0.3 s apart, as turns overlap on a busy server), each with its own
conversation whose opening (system prompt, examples) was read when its session started, through the agent's LocalLLM, two ways: the engine as the agent runs it
(every reply's first phrase first, the rest decoded together: agent/llm/engine.py), and
one reply at a time in arrival order (what a single-stream llama.cpp does). Reported per
K: time to each caller's first token and to its first phrase (12 tokens) p50/max, the
time until every reply is written, and tokens per second over all callers.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from agent.config import load_config
from agent.llm.local import LocalLLM
from agent.llm.prompt import with_examples
from pipelines.callers.scoring import percentile

QUESTIONS = [
    "What should I cook for dinner tonight?",
    "Why is the sky blue?",
    "Tell me something about Lisbon.",
    "How do I get better at running?",
    "What is a good book for a long flight?",
    "How do bees make honey?",
]
PHRASE_TOKENS = 12


def ask(llm: LocalLLM, messages: list[dict], session: str, max_tokens: int, out: dict) -> None:
    start = time.perf_counter()
    times = []
    for _piece in llm.stream_chat(
        messages, max_tokens=max_tokens, temperature=0.0, seed=0, session=session
    ):
        times.append(time.perf_counter() - start)
    out[session] = times


LONG_PROMPT = "You are a helpful assistant. Answer in a detailed paragraph of several sentences."


def round_of(llm: LocalLLM, config, callers: int, long: bool) -> dict:
    system = [{"role": "system", "content": LONG_PROMPT if long else config.llm.system_prompt}]
    examples = [] if long else [tuple(e) for e in config.llm.examples]
    out: dict = {}
    threads = []
    for i in range(callers):  # as at a session's start: the shared opening is read
        llm.prefill(with_examples(system, examples), session=f"caller{i}")
    start = time.perf_counter()
    for i in range(callers):
        question = QUESTIONS[i % len(QUESTIONS)]
        messages = with_examples(system + [{"role": "user", "content": question}], examples)
        thread = threading.Thread(
            target=ask, args=(llm, messages, f"caller{i}", config.llm.max_tokens, out)
        )
        thread.start()
        threads.append(thread)
        time.sleep(0.3)
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    for i in range(callers):
        llm.forget(f"caller{i}")
    firsts = [t[0] for t in out.values() if t]
    phrases = [t[min(PHRASE_TOKENS, len(t)) - 1] for t in out.values() if t]
    tokens = sum(len(t) for t in out.values())
    return {
        "first_token_p50_s": percentile(firsts, 50),
        "first_token_max_s": round(max(firsts), 3),
        "first_phrase_p50_s": percentile(phrases, 50),
        "first_phrase_max_s": round(max(phrases), 3),
        "all_written_s": round(wall, 2),
        "tokens_per_reply": round(tokens / callers, 1),
        "tokens_per_s": round(tokens / wall, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="default")
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument(
        "--long", action="store_true", help="ask for long answers (a paragraph, 80 tokens)"
    )
    args = parser.parse_args()
    config = load_config(args.config)
    report: dict = {}
    for name, one_at_a_time in (("engine", False), ("one_at_a_time", True)):
        llm = LocalLLM.from_config(
            config.llm, sessions=max(args.callers), one_at_a_time=one_at_a_time
        )
        llm.warm_up()
        report[name] = {k: round_of(llm, config, k, args.long) for k in args.callers}
        llm.close()
        print(f"{name}: {json.dumps(report[name])}", flush=True)
    report["model"] = llm.name
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
