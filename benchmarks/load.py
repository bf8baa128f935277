"""How many callers at once the server holds: K callers × M turns of human speech, and a soak.

    python -m benchmarks.load [--callers 1 2 3 4 6] [--turns 5] [--transport webrtc|phone]
    python -m benchmarks.load --soak-minutes 30 [--callers 2]

Starts ``run_agent.py`` once, in its own process, and for each K calls it with K scripted
callers at once (staggered by 0.5-3 s; pipelines/callers/webrtc.py or, with ``--transport
phone``, pipelines/callers/phone.py), each playing the first M clips of the human set
(pipelines/callers/human_speech.py) as turns, as benchmarks/call_latency.py does. Reported per K:
voice-to-voice at the caller (end of speech sent → first reply audio heard) p50 / p95 /
max over the finished turns, turns left unanswered, callers turned away, the server's CPU
(cores) and peak RSS. The capacity is the largest K with p95 ≤ 2 s and nothing unanswered
or turned away. ``--cluster local:2`` calls a cluster's front door instead
(``--max-sessions`` is then per node) and reports the most calls each node held; with
``--shared llm [tts]`` the nodes share one LLM engine (and voice) instead of loading their
own (config cluster.llm / cluster.tts, one replica each: pipelines/cluster/engines.py).

``--soak-minutes``: K callers call again and again (M turns, hang up, call again) for that
long; RSS is sampled after every call, and its slope per call is reported (a leak shows as
a steady climb).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from benchmarks.call_latency import load_set, run_caller
from benchmarks.report import write_report
from benchmarks.server_memory import mib
from pipelines.callers.agent_process import agent_server
from pipelines.callers.scoring import percentile

TARGET_P95_SECS = 2.0


def tree(process: psutil.Process) -> list[psutil.Process]:
    """The server and the processes it started (a local cluster's Ray nodes and agent
    nodes); none for one server."""
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [process]


def cpu_secs(processes: list[psutil.Process]) -> dict[int, float]:
    secs = {}
    for p in processes:
        try:
            secs[p.pid] = sum(p.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return secs


def tree_mib(process: psutil.Process) -> float:
    total = 0.0
    for p in tree(process):
        try:
            total += mib(p)
        except psutil.NoSuchProcess:
            continue
    return round(total, 1)


class ServerWatch:
    """The server's CPU (cores, over a stretch) and peak RSS, sampled; with its child
    processes (a local cluster). With ``url`` of a cluster's front door, the most calls
    each node held at once (``GET /api/cluster``)."""

    def __init__(self, process: psutil.Process, url: str | None = None):
        self.process = process
        self.peak_mib = 0.0
        self.node_sessions: dict[str, int] = {}
        self.node_peak_mib: dict[str, float] = {}  # each agent node's process
        self._url = url
        self._task: asyncio.Task | None = None

    async def __aenter__(self):
        self._cpu = cpu_secs(tree(self.process))
        self._wall = time.monotonic()
        self.peak_mib = tree_mib(self.process)
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self):
        async with aiohttp.ClientSession() as http:
            while True:
                self.peak_mib = max(self.peak_mib, tree_mib(self.process))
                if self._url:
                    async with http.get(f"{self._url}/api/cluster") as r:
                        for node in (await r.json())["nodes"]:
                            held = len(node["sessions"])
                            self.node_sessions[node["node"]] = max(
                                held, self.node_sessions.get(node["node"], 0)
                            )
                            self.node_peak_mib[node["node"]] = node["peak_rss_mib"]
                await asyncio.sleep(0.5)

    async def __aexit__(self, *exc):
        self._task.cancel()
        now = cpu_secs(tree(self.process))
        used = sum(now[pid] - self._cpu.get(pid, 0.0) for pid in now)
        self.cpu_cores = round(used / (time.monotonic() - self._wall), 3)


async def one_caller(url: str, clips: list[dict], args, delay: float) -> dict:
    """A caller's turns, or why it was turned away."""
    try:
        return {"turns": await run_caller(url, clips, args, delay)}
    except Exception as e:  # noqa: BLE001 - a refused call is a result here
        return {"refused": f"{type(e).__name__}: {e}"[:200]}


async def at_once(url: str, k: int, clips: list[dict], args, process) -> dict:
    rng = random.Random(k)
    async with ServerWatch(process, url if args.cluster else None) as watch:
        callers = await asyncio.gather(
            *(
                one_caller(url, clips, args, 0 if i == 0 else rng.uniform(0.5, 3.0))
                for i in range(k)
            )
        )
    turns = [t for c in callers for t in c.get("turns", [])]
    finished = [t for t in turns if not t["category"].startswith("paused")]
    v2v = [t["voice_to_voice"] for t in finished]
    answered = [v for v in v2v if v is not None]
    result = {
        "callers": k,
        "turns": len(turns),
        "voice_to_voice_finished": {
            "p50": percentile(v2v, 50),
            "p95": percentile(v2v, 95),
            "max": round(max(answered), 3) if answered else None,
            "n": len(answered),
        },
        "unanswered": sum(1 for t in turns if t["voice_to_voice"] is None),
        "turned_away": sum(1 for c in callers if "refused" in c),
        "refusals": [c["refused"] for c in callers if "refused" in c],
        "server_cpu_cores": watch.cpu_cores,
        "server_peak_rss_mib": watch.peak_mib,
    }
    if args.cluster:
        result["most_calls_per_node"] = watch.node_sessions
        result["node_peak_rss_mib"] = watch.node_peak_mib
    p95 = result["voice_to_voice_finished"]["p95"]
    result["within_target"] = bool(
        p95 is not None
        and p95 <= TARGET_P95_SECS
        and not result["unanswered"]
        and not result["turned_away"]
    )
    return result


async def soak(url: str, clips: list[dict], args, process) -> dict:
    """K callers calling again and again; RSS after each call."""
    deadline = time.monotonic() + args.soak_minutes * 60
    samples: list[tuple[int, float]] = []  # (calls done, RSS MiB)
    calls, unanswered, refused = 0, 0, 0

    async def caller(index: int):
        nonlocal calls, unanswered, refused
        await asyncio.sleep(index * 1.5)
        while time.monotonic() < deadline:
            result = await one_caller(url, clips, args, 0)
            if "refused" in result:
                # The last call's session may still be ending: call again a little later
                # (not at once: the server limits offers per client).
                refused += 1
                await asyncio.sleep(5)
                continue
            calls += 1
            unanswered += sum(1 for t in result["turns"] if t["voice_to_voice"] is None)
            samples.append((calls, mib(process)))
            await asyncio.sleep(2)  # the server ends the session

    async with ServerWatch(process) as watch:
        await asyncio.gather(*(caller(i) for i in range(args.callers[0])))
    x = np.array([c for c, _ in samples], float)
    y = np.array([r for _, r in samples], float)
    # The first calls warm caches up; the slope is fitted over the second half.
    half = len(x) // 2
    slope = float(np.polyfit(x[half:], y[half:], 1)[0]) if len(x) - half >= 3 else None
    return {
        "minutes": args.soak_minutes,
        "callers": args.callers[0],
        "calls": calls,
        "unanswered_turns": unanswered,
        "refused_attempts": refused,
        "rss_first_last_mib": [y[0], y[-1]] if len(y) else None,
        "rss_slope_mib_per_call_second_half": round(slope, 3) if slope is not None else None,
        "server_cpu_cores": watch.cpu_cores,
        "rss_by_call": samples,
    }


async def run(args) -> dict:
    clips = load_set("human", args.turns, args.source)
    log = Path(args.out).with_suffix(".server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    extra = ["--max-sessions", str(args.max_sessions)] if args.max_sessions else []
    extra += ["--cluster", args.cluster] if args.cluster else []
    if args.shared:
        args.config = shared_config(args.config, args.shared, Path(args.out))
    async with agent_server(args.config, log=log, extra_args=extra) as (url, server):
        process = psutil.Process(server.pid)
        report: dict = {"config": args.config, "transport": args.transport, "turns": args.turns}
        report["rss_idle_mib"] = tree_mib(process)
        if args.cluster:
            report["cluster"] = args.cluster
        if args.soak_minutes:
            report["soak"] = await soak(url, clips, args, process)
            return report
        report["by_callers"] = []
        for k in args.callers:
            result = await at_once(url, k, clips, args, process)
            report["by_callers"].append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "refusals"}))
            await asyncio.sleep(3)  # the calls end on the server
        fits = [r["callers"] for r in report["by_callers"] if r["within_target"]]
        report["capacity"] = max(fits) if fits else 0
        return report


def shared_config(name: str, engines: list[str], out: Path) -> str:
    """A copy of the config ``name`` whose cluster shares ``engines``, written beside
    ``out``; its path."""
    import yaml

    from agent.config import resolve_config_path

    data = yaml.safe_load(resolve_config_path(name).read_text())
    # No CPU reserved: the local cluster's nodes have a core each, which the agent nodes
    # share with the engine's replica as on one machine.
    data["cluster"] = {engine: {"num_cpus": 0} for engine in engines}
    path = out.with_suffix(".config.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    parser.add_argument("--turns", type=int, default=5, help="clips of the human set per call")
    parser.add_argument("--source", help='only clips from this source, e.g. "asterisk"')
    parser.add_argument("--transport", choices=["webrtc", "phone"], default="webrtc")
    parser.add_argument("--soak-minutes", type=float, default=0)
    parser.add_argument(
        "--max-sessions", type=int, help="the server's session limit (default: the config's)"
    )
    parser.add_argument(
        "--cluster",
        help="serve from a Ray cluster (run_agent.py --cluster), e.g. local:2; the CPU and "
        "RSS then cover the front door and the nodes it started",
    )
    parser.add_argument(
        "--shared",
        nargs="+",
        choices=["llm", "tts"],
        help="with --cluster: the engines the nodes share (one Serve replica each)",
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between turns")
    parser.add_argument("--level", type=int, default=300, help="int16 level of audible audio")
    parser.add_argument("--reply-timeout", type=float, default=30.0)
    parser.add_argument("--out", help="default out/benchmarks/load[_soak][_phone].json")
    args = parser.parse_args()
    suffix = ("_soak" if args.soak_minutes else "") + (
        "_phone" if args.transport == "phone" else ""
    )
    args.out = args.out or f"out/benchmarks/load{suffix}.json"
    report = asyncio.run(run(args))
    write_report(report, args.out)
    summary = {k: v for k, v in report.items() if k not in ("by_callers", "soak")}
    if "soak" in report:
        summary["soak"] = {k: v for k, v in report["soak"].items() if k != "rss_by_call"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
