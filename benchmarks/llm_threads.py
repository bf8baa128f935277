"""Why LocalLLM runs every generation on one thread: ms/token by calling thread.

    python -m benchmarks.llm_threads [--config default]

Generates the same reply three times: on the model's own thread, then once from the
main thread, then on the model's thread again. llama.cpp's OpenMP worker team belongs
to the thread that calls it; once a second thread has called, the two teams compete for
the cores and every later generation is slower.
"""

from __future__ import annotations

import argparse
import json
import time

from agent.config import load_config
from agent.llm import LocalLLM


def ms_per_token(llm: LocalLLM, messages: list[dict]) -> float:
    times = []
    start = time.perf_counter()
    for chunk in llm.stream_chat(messages, max_tokens=40, temperature=0.0, seed=0):
        if chunk["choices"][0]["delta"].get("content"):
            times.append(time.perf_counter() - start)
    return round((times[-1] - times[0]) / (len(times) - 1) * 1000, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="default")
    args = parser.parse_args()
    config = load_config(args.config)
    llm = LocalLLM.from_config(config.llm)
    llm.warm_up()
    messages = [
        {"role": "system", "content": config.llm.system_prompt},
        {"role": "user", "content": "Tell me about the city of Paris."},
    ]
    report = {
        "model_thread_ms_per_token": llm.submit(lambda: ms_per_token(llm, messages)).result(),
        "main_thread_ms_per_token": ms_per_token(llm, messages),
        "model_thread_after_main_ms_per_token": llm.submit(
            lambda: ms_per_token(llm, messages)
        ).result(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
