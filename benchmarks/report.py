"""Where benchmark results go: one JSON file per run (the path the script's --out gives)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_report(report: dict, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return out


def percentile(values: list[float], q: float) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.percentile(values, q)), 3) if values else None
