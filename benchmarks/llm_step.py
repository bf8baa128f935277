"""What one decoding step of the LLM costs for 1 to 8 tokens at once: whether checking
several guessed tokens in one step (speculative decoding, a draft model's or the
prompt's n-grams) could write a reply faster than one token a step.

    python -m benchmarks.llm_step [--config default fast] [--repeats 8]

For each config's LLM: a 400-token context is read, then a step of k tokens (logits for
each) is decoded at its end, again and again; the median time per k is reported, and the
ratio to a 1-token step. Speculation pays only when a step of k tokens costs well under k
single steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from agent.config import load_config
from agent.llm.local import LocalLLM

CONTEXT_TOKENS = 400
STEP_TOKENS = (1, 2, 3, 4, 6, 8)


def step_costs(llm: LocalLLM, repeats: int) -> dict[int, float]:
    engine = llm.engine
    lib, context, batch = engine._lib, engine._context, engine._batch
    text = b"The quick brown fox jumps over the lazy dog. " * 80
    tokens = engine.model.tokenize(text, True, False)[:CONTEXT_TOKENS]

    def decode(part: list[int], start: int, every_logit: bool) -> None:
        for i, token in enumerate(part):
            batch.token[i], batch.pos[i] = token, start + i
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
            batch.logits[i] = every_logit or i == len(part) - 1
        batch.n_tokens = len(part)
        if lib.llama_decode(context.handle, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def run() -> dict[int, float]:
        lib.llama_memory_seq_rm(context.memory, 0, -1, -1)
        for start in range(0, CONTEXT_TOKENS, 64):
            decode(tokens[start : start + 64], start, False)
        costs = {}
        for k in STEP_TOKENS:
            times = []
            for _ in range(repeats):
                lib.llama_memory_seq_rm(context.memory, 0, CONTEXT_TOKENS, -1)
                started = time.perf_counter()
                decode(tokens[:k], CONTEXT_TOKENS, True)
                times.append(time.perf_counter() - started)
            costs[k] = statistics.median(times)
        lib.llama_memory_seq_rm(context.memory, 0, -1, -1)
        return costs

    return engine.call(run)  # on the engine's thread, which owns the context


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", nargs="+", default=["default", "fast"])
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    report = {}
    for name in args.config:
        llm = LocalLLM.from_config(load_config(name).llm)
        costs = step_costs(llm, args.repeats)
        report[name] = {
            "model": llm.name,
            "step_ms": {k: round(v * 1000, 1) for k, v in costs.items()},
            "vs_one_token": {k: round(v / costs[1], 2) for k, v in costs.items()},
        }
        llm.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
