"""`python -m benchmarks.miso_gpu` runs here, on the tiny config, as its CPU smoke test: the
same code path the GPU measurement takes (random weights built on the device, callers in
one batch, the session cache), and the summary says what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_gpu_benchmark_runs_on_the_tiny_config(tmp_path):
    out = tmp_path / "miso_gpu.json"
    # Run as a user runs it (tests never import benchmarks), on one torch thread.
    subprocess.run(
        [sys.executable, "-m", "benchmarks.miso_gpu", "--model", "tiny", "--device", "cpu",
         "--batches", "1", "2", "--context-secs", "4", "--utterance-secs", "0.64",
         "--threads", "1", "--out", str(out)],
        cwd=Path(__file__).resolve().parents[1], check=True, timeout=600,
    )
    report = json.loads(out.read_text())
    assert report["model"] == "tiny" and report["cuda_graphs"] is False
    for batch in ("1", "2"):
        result = report["batches"][batch]
        assert result["frames_per_stream"] == 8  # random weights run to the limit
        assert result["frame_ms"]["steps_measured"] > 0  # steps with every caller in
        assert result["ttfa_full_prefill_ms"]["p50"] > 0
        # The second sentence read only the first one and its own text, not the context.
        assert result["positions_read_per_caller_second_sentence"] < result["prompt_positions"] / 2
    fifth = report["fifth_sentence"]
    assert fifth["positions_read_with_cache"] < fifth["prompt_positions"] / 4
