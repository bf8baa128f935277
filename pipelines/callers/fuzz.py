"""Hostile requests at every endpoint: does anything answer 500, hang, or take the server down?

    python -m pipelines.callers.fuzz [--requests 200] [--url http://127.0.0.1:7860]

Without ``--url`` it starts ``run_agent.py --config tiny`` in its own process. For each
endpoint it sends ``--requests`` malformed requests (random bytes, deep or huge JSON, wrong
types, mutated SDP offers, bad ICE candidates, bad webhook forms, stream tokens and
websocket messages), counts the answers by status (websocket: by close code), and checks
``/api/health`` after each endpoint. Reported: per endpoint, outcome counts; any 5xx,
timeout or dropped connection is a finding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
from collections import Counter
from pathlib import Path

import aiohttp

SDP = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\na=mid:0\r\n"
    "a=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
)


def junk(rng: random.Random) -> bytes | str | dict | list:
    """One hostile body: bytes, text, or a JSON value of a wrong shape."""
    kind = rng.randrange(12)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 1:
        return "[" * rng.choice([100, 3000, 30000])
    if kind == 2:
        return '{"a":' * rng.choice([100, 3000]) + "1"
    if kind == 3:
        return {"sdp": rng.choice([None, 1, [], {}, "v=0", "x" * 70000]), "type": "offer"}
    if kind == 4:
        return {"sdp": SDP, "type": rng.choice(["answer", None, 3, "offer\x00"])}
    if kind == 5:
        lines = SDP.split("\r\n")
        rng.shuffle(lines)
        return {"sdp": "\r\n".join(lines), "type": "offer"}
    if kind == 6:
        cut = rng.randrange(len(SDP))
        return {"sdp": SDP[:cut] + "".join(rng.choices(string.printable, k=40)), "type": "offer"}
    if kind == 7:
        return {"sdp": SDP, "type": "offer", "pc_id": rng.choice(["x", 1, [], "../../etc"])}
    if kind == 8:
        return {"sdp": SDP, "type": "offer", "pc_id": "nope", "restart_pc": True}
    if kind == 9:
        return {"pc_id": rng.choice(["x", None, 5]), "candidates": rng.choice([None, "x", [1]])}
    if kind == 10:
        return {"pc_id": "x", "candidates": [{"candidate": "candidate:garbage", "sdpMid": 0}]}
    return rng.choice([[], 0, "string", None, True, {"\ud800": 1}])


async def http_round(http, url: str, method: str, path: str, n: int, rng) -> Counter:
    outcomes: Counter = Counter()
    for _ in range(n):
        body = junk(rng)
        if isinstance(body, (dict, list)) or body is None or isinstance(body, (int, bool)):
            try:
                body = json.dumps(body)
            except (TypeError, ValueError):
                body = "{}"
        headers = rng.choice(
            [{}, {"Origin": "https://evil.example"}, {"Content-Type": "application/json"}]
        )
        try:
            async with http.request(
                method,
                url + path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=20),
            ) as r:
                await r.read()
                outcomes[r.status] += 1
        except TimeoutError:
            outcomes["timeout"] += 1
        except aiohttp.ClientError as e:
            outcomes[f"dropped: {type(e).__name__}"] += 1
    return outcomes


async def ws_round(http, url: str, n: int, rng) -> Counter:
    """Stream URLs: made-up tokens, then real ones fed hostile messages."""
    outcomes: Counter = Counter()
    ws_url = url.replace("http", "ws", 1)
    for i in range(n):
        if i % 2:
            target = f"{ws_url}/ws/{''.join(rng.choices(string.ascii_letters, k=20))}"
        else:
            async with http.post(url + "/") as r:
                text = await r.text()
            target = text.split('url="')[1].split('"')[0]
        try:
            async with http.ws_connect(target, timeout=aiohttp.ClientWSTimeout(ws_close=20)) as ws:
                for _ in range(rng.randrange(1, 4)):
                    body = junk(rng)
                    if isinstance(body, bytes):
                        await ws.send_bytes(body)
                    else:
                        await ws.send_str(body if isinstance(body, str) else json.dumps(body))
                msg = await asyncio.wait_for(ws.receive(), 20)
                outcomes[f"closed {ws.close_code}" if ws.closed else f"open {msg.type.name}"] += 1
        except TimeoutError:
            outcomes["timeout"] += 1
        except aiohttp.ClientError as e:
            outcomes[f"dropped: {type(e).__name__}"] += 1
    return outcomes


async def fuzz(url: str, n: int, seed: int = 0, *, streams: bool = True) -> dict:
    """``n`` hostile requests at each endpoint of the server at ``url``; ``streams``:
    media stream URLs too (a cluster's front door hands them out for its nodes, which
    serve them)."""
    rng = random.Random(seed)
    report: dict = {"requests_per_endpoint": n, "endpoints": {}}
    async with aiohttp.ClientSession() as http:
        for method, path in (
            ("POST", "/api/offer"),
            ("PATCH", "/api/offer"),
            ("POST", "/"),
            ("POST", "/telnyx"),
            ("POST", "/plivo"),
            ("GET", "/exotel"),
            ("GET", "/api/ice"),
            ("GET", "/metrics"),
        ):
            outcomes = await http_round(http, url, method, path, n, rng)
            async with http.get(url + "/api/health") as r:
                healthy = r.status == 200
            report["endpoints"][f"{method} {path}"] = {
                "outcomes": {str(k): v for k, v in sorted(outcomes.items(), key=str)},
                "healthy_after": healthy,
            }
        if streams:
            outcomes = await ws_round(http, url, max(4, n // 10), rng)
            async with http.get(url + "/api/health") as r:
                report["endpoints"]["WS /ws/{token}"] = {
                    "outcomes": dict(outcomes),
                    "healthy_after": r.status == 200,
                    "sessions_left": (await r.json())["sessions"],
                }
    findings = []
    for endpoint, result in report["endpoints"].items():
        for outcome, count in result["outcomes"].items():
            if outcome.startswith("5") or outcome in ("timeout",) or outcome.startswith("drop"):
                findings.append(f"{endpoint}: {count} × {outcome}")
        if not result["healthy_after"]:
            findings.append(f"{endpoint}: unhealthy after")
    report["findings"] = findings
    return report


async def run(args) -> dict:
    if args.url:
        return await fuzz(args.url, args.requests)
    from pipelines.callers.agent_process import agent_server

    async with agent_server(args.config, timeout=300) as (url, _):
        return await fuzz(url, args.requests)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--url", help="a running server (default: start one, tiny config)")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--out", default="out/benchmarks/fuzz.json")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
