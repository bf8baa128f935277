"""Exotel: a Voicebot applet set to a dynamic endpoint asks ``/exotel`` for the stream URL
of each call and gets ``{"url": "wss://…"}``."""

from __future__ import annotations

from pipecat.serializers.exotel import ExotelFrameSerializer

from pipelines.serve.telephony.provider import PhoneProvider, StrictStream


class ExotelCallSerializer(StrictStream, ExotelFrameSerializer):
    pass


def serializer(call: dict, on_stop) -> ExotelCallSerializer:
    return ExotelCallSerializer(
        on_stop=on_stop, stream_sid=call["stream_id"], call_sid=call.get("call_id")
    )


PROVIDER = PhoneProvider(
    name="exotel",
    webhook_path="/exotel",
    methods=("GET", "POST"),
    answer=lambda stream_url: {"url": stream_url},
    serializer=serializer,
)
