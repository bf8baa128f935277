"""Resident memory of the WebRTC server, and what each extra session adds.

    python -m benchmarks.server_memory [--config default] [--sessions 4] [--transport phone]

Starts `run_agent.py --transport webrtc` as a separate process, waits until its models
are loaded, then opens sessions one at a time with real WebRTC callers over loopback
(``--transport phone``: phone calls in Twilio's protocol, pipelines/callers/phone.py);
each caller asks one spoken question and waits for the spoken answer, and stays
connected. Reports the server's RSS after start-up, after each session, the mean growth
per session, the CPU the server burns while the open sessions are silent, RSS after
every caller has hung up, and after a second round of as many calls (one at a time).

``--sequential N``: then N more calls one after another (each asks, is answered, hangs
up), RSS after each, and the growth per call over the first and the second half: memory
that levels off grows less in the second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import numpy as np
import psutil

from agent.config import load_config
from benchmarks.report import write_report
from pipelines.callers.agent_process import agent_server
from pipelines.callers.phone import PhoneCall
from pipelines.callers.webrtc import WebRTCCaller
from tts import load_engine


def mib(process: psutil.Process) -> float:
    return round(process.memory_info().rss / 2**20, 1)


async def ask(caller: WebRTCCaller | PhoneCall, question: np.ndarray):
    """Say the question (16 kHz) and wait for the spoken answer."""
    if isinstance(caller, PhoneCall):
        sent = await caller.say(question, 16000)
        await caller.wait_for_reply(sent, timeout=120)
    else:
        caller.mic.say(question, 16000)
        await caller.mic.clip_finished.wait()
        await caller.wait_for_reply(time.monotonic(), timeout=120)


async def hang_up(caller: WebRTCCaller | PhoneCall):
    await (caller.hang_up() if isinstance(caller, PhoneCall) else caller.close())


async def one_call(caller: WebRTCCaller | PhoneCall, question: np.ndarray):
    """A call that asks the question, hears the answer and hangs up."""
    await caller.connect()
    await asyncio.sleep(0.5)
    await ask(caller, question)
    await hang_up(caller)


async def run(args) -> dict:
    config = load_config(args.config)
    engine = load_engine(config)
    question = engine.synthesize_all("What is the capital of France?", 16000)

    callers: list[WebRTCCaller | PhoneCall] = []
    report: dict = {"config": args.config, "transport": args.transport}
    extra = ["--max-sessions", str(args.sessions)]
    async with agent_server(args.config, extra_args=extra, timeout=300) as (url, server):
        process = psutil.Process(server.pid)

        def new_caller():
            return PhoneCall(url) if args.transport == "phone" else WebRTCCaller(url)

        try:
            await asyncio.sleep(2)
            report["rss_after_start_mib"] = mib(process)
            after_each = []
            for _ in range(args.sessions):
                caller = new_caller()
                await caller.connect()
                callers.append(caller)
                await asyncio.sleep(0.5)
                await ask(caller, question)
                await asyncio.sleep(1)
                after_each.append(mib(process))
            report["rss_after_each_session_mib"] = after_each
            steps = np.diff([report["rss_after_start_mib"], *after_each])
            report["rss_growth_per_session_mib"] = {
                "first": round(float(steps[0]), 1),
                "mean_of_later": round(float(steps[1:].mean()), 1) if len(steps) > 1 else None,
            }
            cpu_before = process.cpu_times()
            wall = time.monotonic()
            await asyncio.sleep(5)
            cpu_after = process.cpu_times()
            used = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
            cores = round(used / (time.monotonic() - wall), 3)
            report["server_cpu_cores_with_silent_sessions"] = cores
            for caller in callers:
                await hang_up(caller)
            callers.clear()
            await asyncio.sleep(3)
            report["rss_after_hangups_mib"] = mib(process)
            # A second round of the same sessions: memory that is reused, not leaked, stays.
            for _ in range(args.sessions):
                await one_call(new_caller(), question)
            await asyncio.sleep(3)
            report["rss_after_second_round_mib"] = mib(process)
            if args.sequential:
                report["sequential"] = await sequential(new_caller, question, process, args)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/api/health") as response:
                    report["sessions_left_after_hangups"] = (await response.json())["sessions"]
        finally:
            for caller in callers:
                await hang_up(caller)
    return report


async def sequential(new_caller, question: np.ndarray, process, args) -> dict:
    """``args.sequential`` calls one after another: RSS after each, growth per call."""
    rss = [mib(process)]
    for _ in range(args.sequential):
        await one_call(new_caller(), question)
        await asyncio.sleep(2)  # aiortc winds a closed connection down
        rss.append(mib(process))
    half = args.sequential // 2

    def per_call(values: list[float]) -> float:
        return round((values[-1] - values[0]) / (len(values) - 1), 2)

    return {
        "calls": args.sequential,
        "rss_after_each_call_mib": rss[1:],
        "growth_per_call_mib": {
            "first_half": per_call(rss[: half + 1]),
            "second_half": per_call(rss[half:]),
        },
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--transport", choices=["webrtc", "phone"], default="webrtc")
    parser.add_argument("--sequential", type=int, default=0, help="N calls one after another")
    parser.add_argument("--out", help="default out/benchmarks/server_memory[_phone].json")
    args = parser.parse_args()
    suffix = "_phone" if args.transport == "phone" else ""
    args.out = args.out or f"out/benchmarks/server_memory{suffix}.json"
    report = asyncio.run(run(args))
    write_report(report, args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
