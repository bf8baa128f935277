"""Blocking iterators (a model generating on its own thread) as async iterators."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator, Iterable

from agent.cpu_share import CpuShare

_DONE = object()


class ThreadFedIterator:
    """The items a blocking iterator yields on another thread, as an async iterator.

    ``run`` starts ``produce`` on some thread. Items cross to the event loop through a
    queue; an exception raised by the iterator is raised again by ``__anext__``. ``stop()``
    ends production after the current item and closes the iterator (so a generator's
    ``finally``/``with`` blocks run, e.g. a model lock is released). A generator's return
    value is ``result`` once the iteration has ended.
    """

    def __init__(self, items: Callable[[], Iterable], run: Callable[[Callable[[], None]], object]):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stop = threading.Event()
        self.result = None  # what a generator returned, once it has run to its end
        loop = asyncio.get_running_loop()
        put = self._queue.put_nowait

        def produce():
            iterator = iter(items())
            try:
                while not self._stop.is_set():
                    try:
                        item = next(iterator)
                    except StopIteration as end:  # a generator's return value
                        self.result = end.value
                        break
                    loop.call_soon_threadsafe(put, item)
            except Exception as e:
                loop.call_soon_threadsafe(put, e)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
                loop.call_soon_threadsafe(put, _DONE)

        run(produce)

    def stop(self) -> None:
        self._stop.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._queue.get()
        if item is _DONE:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item


def while_urgent(cpu: CpuShare, chunks: Generator) -> Generator:
    with cpu.urgent():
        return (yield from chunks)


def start_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="stream", daemon=True).start()
