"""Who gets a small CPU first: the audio the user is waiting for, then the LLM's next token.

On 2 cores, Piper synthesising a reply's first phrase while llama.cpp keeps writing the
rest of the reply makes both crawl (OpenMP and onnxruntime threads spin against each
other): a phrase Piper speaks in 0.12 s alone took 0.3-0.5 s. The first phrase is what
the user hears first; the rest of the reply is not needed until that phrase has played.
So urgent work announces itself, and the LLM waits between tokens while any runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CpuShare:
    def __init__(self, *, max_wait_secs: float = 2.0):
        self._urgent = 0
        self._changed = threading.Condition()
        # A bound on one wait, so a stuck synthesis cannot stall every session's LLM.
        self._max_wait_secs = max_wait_secs

    @contextmanager
    def urgent(self) -> Iterator[None]:
        """Run the block with background work held back."""
        with self._changed:
            self._urgent += 1
        try:
            yield
        finally:
            with self._changed:
                self._urgent -= 1
                self._changed.notify_all()

    def wait_for_urgent(self) -> None:
        """Background work calls this between its steps: returns once no urgent work runs."""
        with self._changed:
            self._changed.wait_for(lambda: self._urgent == 0, timeout=self._max_wait_secs)

    @property
    def busy(self) -> bool:
        return self._urgent > 0
