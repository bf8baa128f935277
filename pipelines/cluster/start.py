"""Joining (or starting) a Ray cluster and placing one agent node on each of its machines.

    --cluster local:N   a local cluster of N nodes on this machine (to try it, and tests)
    --cluster ADDRESS   a running cluster (`ray start --head` on one machine, `ray start
                        --address=HEAD:6379` on the others); "auto" finds the local one

Each alive Ray node gets one AgentNode actor, pinned to it (Ray's node affinity), which
loads its own model stack and serves the calls placed on it. The nodes' start-up (the
models' loading) runs in parallel; a Ray node that joins later gets its agent node from
the front door (pipelines/cluster/front_door.py), which looks for new ones as it polls.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from loguru import logger

from agent.config import AgentConfig
from pipelines.cluster.front_door import Node
from pipelines.cluster.node import AgentNode


class ClusterError(RuntimeError):
    """The cluster could not be joined or started (the message says why)."""


class NodePlacer:
    """Starts an agent node on a Ray node (pinned there by Ray's node affinity)."""

    def __init__(self, config: AgentConfig):
        import ray

        self._ray = ray
        self._config = config
        self._remote = ray.remote(num_cpus=0, max_restarts=0)(AgentNode)

    def alive(self) -> list[dict]:
        """The cluster's alive Ray nodes (Ray's ``ray.nodes()`` records); blocking."""
        return [n for n in self._ray.nodes() if n["Alive"]]

    async def start(self, info: dict) -> Node:
        """An agent node on the Ray node ``info``, once its models are loaded."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = self._remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(info["NodeID"], soft=False)
        ).remote(self._config, info["NodeManagerAddress"])
        return Node(node_key(info), actor, await actor.start.remote())

    def stop(self, node: Node) -> None:
        """End an agent node's process (it may be gone already)."""
        try:
            self._ray.kill(node.actor, no_restart=True)
        except Exception as e:  # noqa: BLE001 - gone already, or its Ray node is
            logger.info(f"node {node.node_id}: could not stop its agent node: {e}")


def node_key(info: dict) -> str:
    """How the front door names a Ray node: the start of its id."""
    return info["NodeID"][:12]


@dataclass
class Cluster:
    """A joined cluster and its agent nodes; ``close()`` leaves it (and stops a local one).
    ``placer`` starts agent nodes on Ray nodes that join later."""

    nodes: list[Node]
    placer: NodePlacer
    local: object | None  # ray.cluster_utils.Cluster when started here
    joined_secs: float
    ready_secs: float
    shared_engines: dict[str, str] = field(default_factory=dict)  # deploy_engines'

    def close(self) -> None:
        import ray

        if self.shared_engines:
            from ray import serve

            if self.local is not None:
                # Serve's handles keep a thread that would join the cluster again once
                # this process has left it, and a local cluster will not stop under it.
                serve.shutdown()
            else:  # the engines' replicas give their GPUs back; other apps stay
                for app in self.shared_engines.values():
                    serve.delete(app)
        ray.shutdown()
        if self.local is not None:
            self.local.shutdown()


def parse_address(value: str) -> tuple[str, int]:
    """("local", N) or ("address", 0) for ``--cluster``'s value; a clear error otherwise."""
    if value.startswith("local:"):
        count = value.removeprefix("local:")
        if not count.isdigit() or not 1 <= int(count) <= 16:
            raise ClusterError(f"--cluster {value}: local:N needs N between 1 and 16")
        return "local", int(count)
    if not value:
        raise ClusterError("--cluster needs local:N or the address of a Ray cluster")
    return "address", 0


async def start_cluster(value: str, config: AgentConfig) -> Cluster:
    """Join or start the cluster ``value`` names and start an AgentNode on every node."""
    try:
        import ray
    except ImportError:
        raise ClusterError("Ray is not installed: run ./setup.sh --cluster") from None
    kind, count = parse_address(value)
    if config.cluster.llm is not None and config.llm.backend != "llama-cpp":
        raise ClusterError(
            "cluster.llm shares the llama-cpp backend's engine; with llm.backend "
            f"'{config.llm.backend}' the nodes already share its server: leave cluster.llm unset"
        )
    started = time.monotonic()
    local = None
    if kind == "local":
        from ray.cluster_utils import Cluster as LocalCluster

        cpus = max(1, (os.cpu_count() or 1) // count)
        local = LocalCluster(
            initialize_head=True,
            head_node_args={"num_cpus": cpus, "include_dashboard": False},
        )
        for _ in range(count - 1):
            local.add_node(num_cpus=cpus)
        address = local.address
    else:
        address = value
    try:
        ray.init(address=address, logging_level="warning", log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - Ray's own errors say what failed
        if local is not None:
            local.shutdown()
        raise ClusterError(f"could not join the Ray cluster at {address}: {e}") from None
    joined = time.monotonic() - started
    apps = {}
    if config.cluster.shares_engines:
        from pipelines.cluster.engines import deploy_engines

        try:
            apps = await asyncio.to_thread(deploy_engines, config)
        except Exception as e:  # noqa: BLE001 - Serve's errors say which replica failed
            ray.shutdown()
            if local is not None:
                local.shutdown()
            raise ClusterError(f"the shared engines did not start: {e}") from None
        logger.info(f"cluster: shared engines {', '.join(apps)} ready")
    placer = NodePlacer(config)
    nodes = await asyncio.gather(*(placer.start(info) for info in placer.alive()))
    ready = time.monotonic() - started
    logger.info(f"cluster: {len(nodes)} node(s) joined in {joined:.1f} s, ready in {ready:.1f} s")
    return Cluster(list(nodes), placer, local, round(joined, 2), round(ready, 2), apps)
