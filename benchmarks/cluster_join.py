"""How long a machine that joins a running cluster takes to take calls, and what it holds.

    python -m benchmarks.cluster_join [--config default] [--joins 2]

Starts a local Ray cluster of one node behind a front door's desk (no HTTP, no calls),
then adds ``--joins`` Ray nodes one at a time, as `ray start --address=…` on another
machine would. Reported per join: seconds from the Ray node's start to the front door
seeing it, from then to its agent node being ready (models loaded), and the agent node's
peak RSS; and the cluster's start-up as run_agent.py --cluster does it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from agent.config import load_config
from benchmarks.report import write_report
from pipelines.cluster.front_door import ClusterDesk
from pipelines.cluster.start import start_cluster


async def run(args) -> dict:
    config = load_config(args.config)
    started = await start_cluster("local:1", config)
    desk = ClusterDesk(config, started.nodes, started.placer)
    report: dict = {
        "config": args.config,
        "first_node": {"joined_secs": started.joined_secs, "ready_secs": started.ready_secs},
        "joins": [],
    }
    try:
        await desk.poll()
        report["first_node"]["peak_rss_mib"] = started.nodes[0].load.get("peak_rss_mib")
        for _ in range(args.joins):
            before = set(desk.nodes)
            added_at = time.monotonic()
            started.local.add_node(num_cpus=1)
            seen_at = None
            while set(desk.nodes) == before:
                await desk.poll()
                if seen_at is None and desk.status()["starting"]:
                    seen_at = time.monotonic()
                await asyncio.sleep(0.2)
            (key,) = set(desk.nodes) - before
            report["joins"].append(
                {
                    "seen_secs": round((seen_at or time.monotonic()) - added_at, 2),
                    "ready_after_seen_secs": desk.ready_secs[key],
                    "total_secs": round(time.monotonic() - added_at, 2),
                    "peak_rss_mib": desk.nodes[key].load.get("peak_rss_mib"),
                }
            )
    finally:
        await desk.close()
        started.close()
    return report


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="default")
    parser.add_argument("--joins", type=int, default=2)
    parser.add_argument("--out", default="out/benchmarks/cluster_join.json")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    write_report(report, args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
