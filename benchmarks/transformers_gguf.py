"""The other LLM runtime the issue named: transformers loading the same GGUF on torch.

Runs in its own venv, because the agent does not depend on torch:

    python -m venv /tmp/tfv && /tmp/tfv/bin/pip install torch==2.13.0 transformers gguf accelerate
    /tmp/tfv/bin/python benchmarks/transformers_gguf.py [~/.cache/voice-agent]

Compare with `python -m benchmarks.llm_choice` (llama-cpp-python, the runtime chosen).
"""

import os
import resource
import sys
import threading
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def main():
    folder = os.path.expanduser(sys.argv[1] if len(sys.argv) > 1 else "~/.cache/voice-agent")
    torch.set_num_threads(os.cpu_count() or 2)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    # transformers dequantizes GGUF weights to a torch dtype on load.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    print("load_secs", round(time.perf_counter() - start, 1))
    messages = [
        {
            "role": "system",
            "content": "You are a friendly voice assistant. Answer in one or two short spoken sentences.",
        },
        {"role": "user", "content": "Tell me about the city of Paris."},
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(ids):
        ids = ids["input_ids"]
    for run in range(2):
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        worker = threading.Thread(
            target=model.generate,
            kwargs=dict(input_ids=ids, max_new_tokens=40, do_sample=False, streamer=streamer),
        )
        start = time.perf_counter()
        worker.start()
        times = [time.perf_counter() - start for piece in streamer if piece]
        worker.join()
        ms = (times[-1] - times[0]) / (len(times) - 1) * 1000
        print(f"run {run}: first token {times[0]:.3f} s, {ms:.1f} ms/token")
    print("peak_rss_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


if __name__ == "__main__":
    main()
