"""Time limits at the server's front door, for every route.

A client that opens a connection and then sends its request slowly must not hold the
connection (and, for a webhook, a phone call's setup) for as long as it likes:

* ``HeaderDeadline``: uvicorn's HTTP protocol (httptools), with a deadline for a
  request's line and headers, counted from the connection's opening or the request's
  first byte. Past it the client gets 408 and the connection is closed. uvicorn has no
  such limit of its own (its keep-alive timeout covers idle connections only).
* ``BodyDeadline``: ASGI middleware; a request's body must arrive within the same time
  of the request (408 otherwise), and a client that leaves before sending it is one log
  line, not a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi.responses import JSONResponse
from loguru import logger
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REQUEST_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


def header_deadline(secs: Callable[[], float]) -> type[HttpToolsProtocol]:
    """uvicorn's ``http`` protocol class with a deadline of ``secs()`` seconds (read when
    each request starts) for a request's line and headers."""

    class HeaderDeadline(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(secs(), self._too_slow)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            message = f"the request line and headers did not arrive within {secs():g} s"
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            logger.warning(f"closed the connection of {client}: {message}")
            body = message.encode()
            self.transport.write(REQUEST_408 % (len(body), body))
            self.transport.close()

    return HeaderDeadline


class SlowBody(Exception):
    """A request body that did not arrive in time (raised from ``receive``)."""


class BodyDeadline:
    """ASGI middleware: an HTTP request's body arrives within ``secs()`` seconds of the
    request, or the client gets 408 (``on_refused(408)`` is called for the metrics)."""

    def __init__(self, app, secs: Callable[[], float], on_refused: Callable[[int], None]):
        self.app = app
        self._secs = secs
        self._on_refused = on_refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        secs = self._secs()
        deadline = asyncio.get_running_loop().time() + secs
        body_read = False
        response_started = False

        async def receive_in_time():
            nonlocal body_read
            if body_read:  # after the body: waiting for a disconnect is not a slow body
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise SlowBody(f"the request body did not arrive within {secs:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body"):
                body_read = True
            return message

        async def send_noted(message):
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        what = f"{scope['method']} {scope['path']}"
        try:
            await self.app(scope, receive_in_time, send_noted)
        except SlowBody as e:
            logger.warning(f"refused {what} (408): {e}")
            self._on_refused(408)
            if not response_started:
                await JSONResponse({"error": str(e)}, status_code=408)(scope, receive, send)
        except ClientDisconnect:
            logger.info(f"{what}: the client left before its request body arrived")
