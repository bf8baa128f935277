"""What reading the prompt costs the first token, and what keeping it read saves.

    python -m benchmarks.llm_prefill [--config default] [--turns 8]

A conversation of ``--turns`` turns through LocalLLM, three ways, each on its own model
thread as in the server: every prompt read from scratch (no cache), llama.cpp's prefix
cache alone (what the agent did before), and the prefix cache plus ``prefill`` of the next
turn's opening after each reply (what the agent does now). Reported: time to the first
token p50/p95 for each, and the cost of setting a session's conversation aside and putting
it back (two sessions taking turns).
"""

from __future__ import annotations

import argparse
import json
import time

from agent.config import load_config
from agent.llm import LocalLLM
from benchmarks.conversation import percentile
from pipelines.services import with_examples

SAID = [
    "What is the capital of France?",
    "I just got back from a long run.",
    "How many days are in a week?",
    "My sister is visiting tomorrow.",
    "What should I cook for dinner tonight?",
    "Tell me a fun fact about octopuses.",
    "Thanks, that was helpful.",
    "What is the tallest mountain in the world?",
]


def first_token_secs(llm: LocalLLM, messages: list[dict], session: str) -> tuple[float, str]:
    start = time.perf_counter()
    first = None
    text = []
    for chunk in llm.stream_chat(messages, max_tokens=30, temperature=0.0, seed=0, session=session):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            first = first or time.perf_counter() - start
            text.append(piece)
    return first or time.perf_counter() - start, "".join(text).strip()


def conversation(llm: LocalLLM, config, turns: int, mode: str, session: str) -> list[float]:
    system = [{"role": "system", "content": config.llm.system_prompt}]
    examples = [tuple(e) for e in config.llm.examples]
    history: list[dict] = []
    times = []
    if mode == "read-ahead":
        llm.prefill(with_examples(system, examples), session=session)
    for said in (SAID * (turns // len(SAID) + 1))[:turns]:
        if mode == "cold":
            llm.forget(session)
            llm._llama.reset()  # nothing cached: the whole prompt is read
        messages = with_examples(system + history + [{"role": "user", "content": said}], examples)
        secs, reply = first_token_secs(llm, messages, session)
        times.append(secs)
        history += [{"role": "user", "content": said}, {"role": "assistant", "content": reply}]
        if mode == "read-ahead":
            llm.prefill(with_examples(system + history, examples), session=session)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="default")
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args()
    config = load_config(args.config)
    llm = LocalLLM.from_config(config.llm)
    llm.warm_up()
    report: dict = {"model": llm.name, "turns": args.turns}
    for mode in ("cold", "prefix-cache", "read-ahead"):
        times = llm.submit(lambda m=mode: conversation(llm, config, args.turns, m, m)).result()
        report[f"first_token_{mode}"] = {"p50": percentile(times, 50), "p95": percentile(times, 95)}

    def swap_secs() -> float:
        # Two sessions with read conversations taking turns: each turn sets one aside and
        # puts the other back before reading anything.
        start = time.perf_counter()
        for session in ("prefix-cache", "read-ahead") * 5:
            llm.prefill([{"role": "user", "content": "Hi"}], session=session)
        return (time.perf_counter() - start) / 10

    report["set_aside_and_put_back_plus_tiny_prefill_secs"] = round(
        llm.submit(swap_secs).result(), 4
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
