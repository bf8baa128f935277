"""Twilio Media Streams: TwiML at ``POST /``, marks reported when the audio has played,
the webhook's ``X-Twilio-Signature`` checked when ``TWILIO_AUTH_TOKEN`` is set."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from xml.sax.saxutils import quoteattr

from fastapi import Request
from loguru import logger
from pipecat.serializers.twilio import TwilioFrameSerializer

from pipelines.serve.telephony.provider import XML_HEAD, PhoneProvider, StrictStream
from pipelines.turns.half_duplex import MarkProtocol


class TwilioCallSerializer(StrictStream, TwilioFrameSerializer):
    pass


def twiml(stream_url: str) -> str:
    """Connect the call's audio to the stream, both ways."""
    stream = f"<Stream url={quoteattr(stream_url)}/>"
    return f"{XML_HEAD}<Response><Connect>{stream}</Connect></Response>"


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's X-Twilio-Signature of a webhook request: base64 HMAC-SHA1 of the URL
    followed by each POST parameter's name and value, sorted by name."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


async def check_signature(request: Request, public_url: str) -> str | None:
    """Why the request is refused (None: it is Twilio's). Only with TWILIO_AUTH_TOKEN set."""
    auth_token = os.environ.get("TWILIO_AUTH_TOKEN")
    if not auth_token:
        return None
    form = {k: str(v) for k, v in (await request.form()).items()}
    expected = twilio_signature(auth_token, public_url, form)
    if hmac.compare_digest(expected, request.headers.get("x-twilio-signature", "")):
        return None
    logger.warning(f"refused a TwiML request to {public_url}: bad X-Twilio-Signature")
    return "bad X-Twilio-Signature"


def serializer(call: dict, on_stop) -> TwilioCallSerializer:
    sid, token = os.environ.get("TWILIO_ACCOUNT_SID"), os.environ.get("TWILIO_AUTH_TOKEN")
    return TwilioCallSerializer(
        on_stop=on_stop,
        stream_sid=call["stream_id"],
        call_sid=call.get("call_id"),
        account_sid=sid,
        auth_token=token,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=bool(sid and token)),
    )


def marks(call: dict) -> MarkProtocol:
    """``{"event": "mark", "streamSid": …, "mark": {"name": …}}`` both ways."""

    def echoed(message: dict) -> str | None:
        if message.get("event") != "mark":
            return None
        mark = message.get("mark")
        return mark.get("name") if isinstance(mark, dict) else None

    return MarkProtocol(
        mark_message=lambda name: {
            "event": "mark",
            "streamSid": call["stream_id"],
            "mark": {"name": name},
        },
        echoed_mark=echoed,
    )


PROVIDER = PhoneProvider(
    name="twilio",
    webhook_path="/",
    answer=twiml,
    serializer=serializer,
    marks=marks,
    check=check_signature,
)
