"""Telnyx: TeXML at ``POST /telnyx`` (a TeXML application's voice URL); the bot's audio
goes back as raw media (``rtp``)."""

from __future__ import annotations

import os
from xml.sax.saxutils import quoteattr

from pipecat.serializers.telnyx import TelnyxFrameSerializer

from pipelines.serve.telephony.provider import XML_HEAD, PhoneProvider, StrictStream


class TelnyxCallSerializer(StrictStream, TelnyxFrameSerializer):
    pass


def texml(stream_url: str) -> str:
    stream = f'<Stream url={quoteattr(stream_url)} bidirectionalMode="rtp"/>'
    return f"{XML_HEAD}<Response><Connect>{stream}</Connect></Response>"


def serializer(call: dict, on_stop) -> TelnyxCallSerializer:
    key = os.environ.get("TELNYX_API_KEY")
    return TelnyxCallSerializer(
        on_stop=on_stop,
        stream_id=call["stream_id"],
        outbound_encoding=call.get("outbound_encoding") or "PCMU",
        inbound_encoding="PCMU",
        call_control_id=call.get("call_id"),
        api_key=key,
        params=TelnyxFrameSerializer.InputParams(auto_hang_up=bool(key)),
    )


PROVIDER = PhoneProvider(name="telnyx", webhook_path="/telnyx", answer=texml, serializer=serializer)
