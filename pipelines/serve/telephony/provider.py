"""What a phone provider is to the server: a webhook that hands out the stream URL in the
provider's markup, and Pipecat's serializer for its media stream, made strict.

Each provider is one module beside this one (twilio.py, telnyx.py, ...) with a
``PROVIDER`` and one entry in ``PROVIDERS`` (``__init__.py``); the routes
(``routes.py``) serve every registered provider the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from pipecat.frames.frames import Frame, InputTransportMessageFrame
from pipecat.serializers.base_serializer import FrameSerializer

from pipelines.turns.half_duplex import MarkProtocol

XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


@dataclass(frozen=True)
class PhoneProvider:
    """One provider: ``answer(stream_url)`` is the webhook's reply (markup, or a JSON
    object); ``serializer(call, on_stop)`` is Pipecat's serializer for a stream whose
    start message ``parse_telephony_websocket`` read into ``call``; ``marks(call)``, when
    the provider reports playback, says how (the bot listens again on that report);
    ``check(request)``, when given, refuses a webhook request with a reason (a bad
    signature)."""

    name: str
    webhook_path: str
    answer: Callable[[str], str | dict]
    serializer: Callable[[dict, Callable[[], None] | None], FrameSerializer]
    methods: tuple[str, ...] = ("POST",)
    marks: Callable[[dict], MarkProtocol] | None = None
    check: Callable[[Request, str], Awaitable[str | None]] | None = None


class StrictStream:
    """Mixed into Pipecat's telephony serializers (which log and skip what they cannot
    parse), for a number anyone can dial:

    * a message that is not a JSON object, or media that is not base64, raises: the
      transport logs it and the call ends (one broken stream must not be half-served);
    * ``stop`` (the caller hung up) calls ``on_stop``, which ends the session even if the
      socket stays open;
    * ``mark`` events (the provider's report that the audio sent before a mark has
      played), which Pipecat's serializers drop, become InputTransportMessageFrames for
      PlayoutMarks (pipelines/turns/half_duplex.py).
    Events it does not know are ignored, as providers add new ones over time.
    """

    def __init__(self, *args, on_stop: Callable[[], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_stop = on_stop

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if not isinstance(data, str):
            raise TypeError("a binary message on a media stream")
        try:
            message = json.loads(data)
        except (json.JSONDecodeError, RecursionError):
            raise ValueError(f"a message that is not JSON: {data[:60]!r}") from None
        if not isinstance(message, dict):
            raise TypeError(f"a message that is not a JSON object: {data[:60]!r}")
        event = message.get("event")
        if event == "mark":
            return InputTransportMessageFrame(message=message)
        if event == "stop":
            if self._on_stop is not None:
                self._on_stop()
            return None
        if event == "media":
            media = message.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            try:
                base64.b64decode(payload or "", validate=True)
            except (binascii.Error, TypeError):
                raise ValueError("a media message whose payload is not base64") from None
        return await super().deserialize(data)
