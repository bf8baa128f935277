"""Where benchmark results go: one JSON file per run (the path the script's --out gives)."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return out
