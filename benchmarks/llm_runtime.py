"""The two llama.cpp builds (agent/llm/llama_build.py) side by side, on the config's model.

    python -m benchmarks.llm_runtime [--config default] [--rounds 2] [--turns 6]

Each build runs in a process of its own (a process loads one), the builds taking turns
for ``--rounds`` rounds so that a machine whose speed drifts affects both alike. In each:
a conversation of 12 exchanges is read ahead, as the agent does while a reply plays; then
for each of ``--turns`` turns the user's words (~40 tokens) are read and a reply begun
(what the first token waits for at a turn's end), the same prompt is asked again with
one token left to read (a turn whose words were read ahead), and 12 tokens are written.
Reported per build: first token after reading the words p50, with one token to read
p50, and ms per written token p50.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from pipelines.callers.scoring import percentile

_ONE_BUILD = """
import json, sys, time
from agent.config import load_config
from agent.llm.local import LocalLLM
from agent.models import resolve_model

config, build, turns = load_config(sys.argv[1]), sys.argv[2], int(sys.argv[3])
llm = LocalLLM(resolve_model(config.llm.model, "llm"), threads=config.llm.threads, build=build)
history = [{"role": "system", "content": config.llm.system_prompt}]
for i in range(12):
    history += [
        {"role": "user", "content": f"Tell me fact number {i} about the sea, in one short sentence."},
        {"role": "assistant", "content": f"Fact {i}: the sea covers about seventy percent of the planet."},
    ]
words, one, steps = [], [], []
for turn in range(turns):
    llm.read_ahead(history, session="s").wait()
    said = history + [{"role": "user", "content": f"Okay, so what I really want to know now is about "
                       f"river number {turn}: how long is it, and where does it flow into the sea?"}]
    for times in (words, one):
        start, at = time.perf_counter(), []
        for _ in llm.stream_chat(said, max_tokens=12, temperature=0.0, seed=0, session="s"):
            at.append(time.perf_counter() - start)
        times.append(at[0])
        steps += [b - a for a, b in zip(at, at[1:])]
new = len(llm.tokens(said)) - len(llm.tokens(history + [{"role": "user", "content": ""}], reply=False))
print(json.dumps({"words": words, "one": one, "steps": steps, "new_tokens": new}))
llm.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args()
    runs: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for build in ("xllamacpp", "node-llama-cpp"):
            done = subprocess.run(
                [sys.executable, "-c", _ONE_BUILD, args.config, build, str(args.turns)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                sys.exit(f"{build}: {done.stderr.strip().splitlines()[-1]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            into = runs.setdefault(build, {"words": [], "one": [], "steps": []})
            for key in into:
                into[key] += result[key]
            new_tokens = result["new_tokens"]
    report = {
        "config": args.config,
        "user_words_tokens": new_tokens,
        **{
            build: {
                "first_token_after_reading_the_words_ms_p50": round(
                    1000 * percentile(r["words"], 50)
                ),
                "first_token_one_to_read_ms_p50": round(1000 * percentile(r["one"], 50)),
                "ms_per_token_p50": round(1000 * percentile(r["steps"], 50), 1),
            }
            for build, r in runs.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
