"""Plivo: Plivo XML at ``POST /plivo`` (the application's answer URL), a bidirectional
μ-law stream that holds the call while it is open."""

from __future__ import annotations

import os
from xml.sax.saxutils import escape

from pipecat.serializers.plivo import PlivoFrameSerializer

from pipelines.serve.telephony.provider import XML_HEAD, PhoneProvider, StrictStream


class PlivoCallSerializer(StrictStream, PlivoFrameSerializer):
    pass


def plivo_xml(stream_url: str) -> str:
    attrs = 'bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000"'
    return f"{XML_HEAD}<Response><Stream {attrs}>{escape(stream_url)}</Stream></Response>"


def serializer(call: dict, on_stop) -> PlivoCallSerializer:
    auth_id, token = os.environ.get("PLIVO_AUTH_ID"), os.environ.get("PLIVO_AUTH_TOKEN")
    return PlivoCallSerializer(
        on_stop=on_stop,
        stream_id=call["stream_id"],
        call_id=call.get("call_id"),
        auth_id=auth_id,
        auth_token=token,
        params=PlivoFrameSerializer.InputParams(auto_hang_up=bool(auth_id and token)),
    )


PROVIDER = PhoneProvider(
    name="plivo", webhook_path="/plivo", answer=plivo_xml, serializer=serializer
)
