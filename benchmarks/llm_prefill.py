"""What reading the prompt costs the first token, and what keeping it read saves.

    python -m benchmarks.llm_prefill [--config default] [--turns 8]

A conversation of ``--turns`` turns through LocalLLM, three ways: every prompt read from
scratch (no cache), the session's cached prefix alone (what the agent did before), and
the cached prefix plus ``prefill`` of the next turn's opening after each reply (what the
agent does now). Reported: time to the first token p50/p95 for each.
"""

from __future__ import annotations

import argparse
import json
import time

from agent.config import load_config
from agent.llm.local import LocalLLM
from agent.llm.prompt import with_examples
from pipelines.callers.scoring import percentile

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
    for piece in llm.stream_chat(messages, max_tokens=30, temperature=0.0, seed=0, session=session):
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
            llm.forget(session)  # nothing cached: the whole prompt is read
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
        times = conversation(llm, config, args.turns, mode, mode)
        llm.forget(mode)  # nothing of it is reused by the next mode
        report[f"first_token_{mode}"] = {"p50": percentile(times, 50), "p95": percentile(times, 95)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
