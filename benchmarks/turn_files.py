"""Which project files one user turn passes through, on a real server, as a newcomer
reading the code would follow it.

    python -m benchmarks.turn_files [--transport webrtc|phone] [--root DIR] [--config tiny]

Starts ``run_agent.py`` of ``--root`` (default: this checkout; another checkout compares
layouts) under a profiler that notes every project file whose code runs, calls it (a
scripted WebRTC or phone caller from this checkout asks one spoken question), and
records only between the caller starting to speak and the reply having played: the
files of one turn, not of start-up or connecting. Prints and writes the list (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The traced server: run_agent.py under a profile hook, recording between SIGUSR1 and
# SIGUSR2 (the file list is written on SIGUSR2).
SERVER = r"""
import os, runpy, signal, sys, threading, json
root, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
seen, on = set(), [False]
def hook(frame, event, arg):
    if on[0] and event == "call":
        seen.add(frame.f_code.co_filename)
sys.setprofile(hook)
threading.setprofile(hook)
def start(*_):
    on[0] = True
def stop(*_):
    on[0] = False
    files = sorted({os.path.relpath(f, root) for f in seen
                    if f.startswith(root) and "/.venv" not in f and f.endswith(".py")})
    with open(out, "w") as fh:
        json.dump(files, fh)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv = ["run_agent.py"] + sys.argv[3:]
runpy.run_path(os.path.join(root, "run_agent.py"), run_name="__main__")
"""


async def one_turn(url: str, transport: str, server: subprocess.Popen, clip, rate) -> None:
    if transport == "webrtc":
        from pipelines.callers.webrtc import WebRTCCaller

        caller = WebRTCCaller(url)
        await caller.connect()
    else:
        from pipelines.callers.phone import PhoneCall

        caller = PhoneCall(url)
        await caller.connect()
    await asyncio.sleep(1.0)
    server.send_signal(signal.SIGUSR1)
    since = time.monotonic()
    if transport == "webrtc":
        caller.mic.say(clip, rate)
        await caller.mic.clip_finished.wait()
    else:
        await caller.say(clip, rate)
    await caller.wait_for_reply(since, timeout=120)
    server.send_signal(signal.SIGUSR2)
    await asyncio.sleep(1.0)
    await (caller.close() if transport == "webrtc" else caller.hang_up())


async def main_async(args) -> list[str]:
    from agent.audio import load_input_wav
    from pipelines.callers.agent_process import wait_healthy
    from pipelines.callers.webrtc import free_loopback_port

    root = str(Path(args.root).resolve())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    port = free_loopback_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, root, str(out), "--config", args.config,
         "--port", str(port)],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, server, timeout=600)
        clip, _ = load_input_wav(args.wav, 16000)
        await one_turn(url, args.transport, server, clip, 16000)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=["webrtc", "phone"], default="webrtc")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--wav", required=True, help="the question the caller speaks")
    parser.add_argument("--out", default="out/benchmarks/turn_files.json")
    args = parser.parse_args()
    files = asyncio.run(main_async(args))
    for f in files:
        print(f)
    print(f"{len(files)} project files in one {args.transport} turn ({args.root})")


if __name__ == "__main__":
    main()
