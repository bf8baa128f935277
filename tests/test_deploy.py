"""deploy/kuberay.yaml is a KubeRay RayJob that starts the agent's front door on a cluster
(it cannot be applied here: no Kubernetes; this checks what it says)."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import yaml

from run_agent import parse_args

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "kuberay.yaml"


def test_the_kuberay_manifest_starts_the_front_door_on_a_ray_cluster():
    job = yaml.safe_load(MANIFEST.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:2] == ["python", "run_agent.py"]
    args = parse_args(command[2:])  # options run_agent.py takes, as it would parse them
    assert args.cluster == "auto" and args.transport == "webrtc"
    cluster = job["spec"]["rayClusterSpec"]
    # The Ray the agent is tested with (pyproject.toml's cluster extra).
    pyproject = tomllib.loads((MANIFEST.parent.parent / "pyproject.toml").read_text())
    (ray,) = [r for r in pyproject["project"]["optional-dependencies"]["cluster"] if "ray" in r]
    assert ray.endswith(f"=={cluster['rayVersion']}")
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        # Media goes straight to the node holding the call: its own addresses.
        assert pod["hostNetwork"] is True
        (container,) = pod["containers"]
        assert container["image"] and container["resources"]["requests"]["cpu"]
    head = pods[0]["containers"][0]
    assert 7860 in [p["containerPort"] for p in head["ports"]]
    token = [e for e in head["env"] if e["name"] == "VOICE_AGENT_TOKEN"]
    assert token and "secretKeyRef" in token[0]["valueFrom"]
