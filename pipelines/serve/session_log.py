"""A JSON Lines log per call, written as the call goes: a line when it starts, one per
answered turn (what was heard, the reply, each stage's latency), one when it ends and
why. Each line is flushed as it is written, so a server or cluster node that dies keeps
every turn answered before it died.

    {"event": "started", "session": …, "kind": "webrtc", "at": "2026-12-06T20:41:07Z"}
    {"event": "turn", "turn": 1, "heard": …, "reply": …, "stages": {…}, "at": …}
    {"event": "ended", "reason": "hung up", "at": …}
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SessionLog:
    """One call's log, in ``folder`` (made if missing)."""

    def __init__(self, folder: Path, session_id: str, kind: str):
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.path = folder / f"{stamp}-{_UNSAFE.sub('_', session_id)[:80]}.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._write({"event": "started", "session": session_id, "kind": kind})

    def turn(self, index: int, heard: str, reply: str, stages: dict) -> None:
        self._write(
            {"event": "turn", "turn": index, "heard": heard, "reply": reply, "stages": stages}
        )

    def end(self, reason: str) -> None:
        self._write({"event": "ended", "reason": reason})
        self._file.close()

    def _write(self, record: dict) -> None:
        if not self._file.closed:
            self._file.write(json.dumps({**record, "at": _now()}) + "\n")
            self._file.flush()


def read_log(path: Path) -> list[dict]:
    """A session log's records (a line cut short by a crash is left out)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
