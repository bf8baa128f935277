"""Phone calls: Twilio Media Streams (and Telnyx, Plivo, Exotel) over a websocket.

Served by the same process as the browser page, with the same models and session limit:

* ``POST /`` is the webhook a Twilio number calls when it is dialled. It answers TwiML
  that connects the call's audio to ``wss://HOST/ws/TOKEN`` (HOST: ``server.public_host``,
  else the request's Host header). When ``TWILIO_AUTH_TOKEN`` is set, the request must
  carry a valid ``X-Twilio-Signature``. ``POST /telnyx`` (TeXML) and ``POST /plivo``
  (Plivo XML) answer the same for those providers; ``GET /exotel`` gives Exotel's
  Voicebot applet (dynamic endpoint) the URL as ``{"url": …}``.
* ``WebSocket /ws/TOKEN`` takes the media stream. TOKEN comes from a TwiML answer and
  opens one stream, once, within ``TOKEN_TTL_SECS``: nobody can stream into the bot
  without having been handed a URL by the webhook. The provider is told apart by its
  first messages (Pipecat's ``parse_telephony_websocket``), and Pipecat's serializer for
  it converts 8 kHz μ-law to the pipeline's rate and back.

Hanging up through the provider's REST API happens only when its credentials are in the
environment (``TWILIO_ACCOUNT_SID`` + ``TWILIO_AUTH_TOKEN``, ``TELNYX_API_KEY``,
``PLIVO_AUTH_ID`` + ``PLIVO_AUTH_TOKEN``); without them the call ends when the provider
closes the stream.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from loguru import logger
from pipecat.frames.frames import Frame, InputTransportMessageFrame, OutputAudioRawFrame
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.serializers.exotel import ExotelFrameSerializer
from pipecat.serializers.plivo import PlivoFrameSerializer
from pipecat.serializers.telnyx import TelnyxFrameSerializer
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

from pipelines.build import build_session
from pipelines.turns.half_duplex import MarkProtocol

# A stream URL handed to Twilio is used within seconds; an unused one expires.
TOKEN_TTL_SECS = 60
# The provider's "connected"/"start" messages arrive at once; a socket that sends
# nothing is not a call.
HANDSHAKE_TIMEOUT_SECS = 10
# Websocket close codes: policy violation (bad token), try again later (server full).
CLOSE_POLICY = 1008
CLOSE_FULL = 1013


class StreamTokens:
    """One-time tokens for stream URLs."""

    def __init__(self, ttl_secs: float = TOKEN_TTL_SECS):
        self._ttl_secs = ttl_secs
        self._expiry: dict[str, float] = {}

    def issue(self) -> str:
        now = time.monotonic()
        self._expiry = {t: e for t, e in self._expiry.items() if e > now}
        token = secrets.token_urlsafe(24)
        self._expiry[token] = now + self._ttl_secs
        return token

    def redeem(self, token: str) -> bool:
        """True once for a token issued less than the TTL ago."""
        expiry = self._expiry.pop(token, None)
        return expiry is not None and expiry > time.monotonic()


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's X-Twilio-Signature of a webhook request: base64 HMAC-SHA1 of the URL
    followed by each POST parameter's name and value, sorted by name."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


_XML = '<?xml version="1.0" encoding="UTF-8"?>'


def twiml(stream_url: str) -> str:
    """Twilio: connect the call's audio to the stream, both ways."""
    return f"{_XML}<Response><Connect><Stream url={quoteattr(stream_url)}/></Connect></Response>"


def texml(stream_url: str) -> str:
    """Telnyx's TeXML: as TwiML, and the bot's audio goes back as raw media (``rtp``)."""
    stream = f'<Stream url={quoteattr(stream_url)} bidirectionalMode="rtp"/>'
    return f"{_XML}<Response><Connect>{stream}</Connect></Response>"


def plivo_xml(stream_url: str) -> str:
    """Plivo: a bidirectional μ-law stream that holds the call while it is open."""
    attrs = 'bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000"'
    return f"{_XML}<Response><Stream {attrs}>{escape(stream_url)}</Stream></Response>"


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


class TwilioCallSerializer(StrictStream, TwilioFrameSerializer):
    pass


class TelnyxCallSerializer(StrictStream, TelnyxFrameSerializer):
    pass


class PlivoCallSerializer(StrictStream, PlivoFrameSerializer):
    pass


class ExotelCallSerializer(StrictStream, ExotelFrameSerializer):
    pass


def twilio_marks(stream_sid: str) -> MarkProtocol:
    """Twilio's marks: ``{"event": "mark", "streamSid": …, "mark": {"name": …}}`` both ways."""

    def echoed(message: dict) -> str | None:
        if message.get("event") != "mark":
            return None
        mark = message.get("mark")
        return mark.get("name") if isinstance(mark, dict) else None

    return MarkProtocol(
        mark_message=lambda name: {
            "event": "mark",
            "streamSid": stream_sid,
            "mark": {"name": name},
        },
        echoed_mark=echoed,
    )


def make_serializer(
    provider: str, call: dict, *, on_stop: Callable[[], None] | None = None
) -> FrameSerializer:
    """Pipecat's serializer for the provider ``parse_telephony_websocket`` found, made
    strict (``on_stop``: called when the stream says the caller hung up)."""
    if provider not in ("twilio", "telnyx", "plivo", "exotel"):
        raise ValueError(f"not a telephony media stream (provider {provider!r})")
    if not call.get("stream_id"):
        raise ValueError(f"the {provider} start message has no stream id")
    env = os.environ.get
    if provider == "twilio":
        sid, token = env("TWILIO_ACCOUNT_SID"), env("TWILIO_AUTH_TOKEN")
        return TwilioCallSerializer(
            on_stop=on_stop,
            stream_sid=call["stream_id"],
            call_sid=call.get("call_id"),
            account_sid=sid,
            auth_token=token,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=bool(sid and token)),
        )
    if provider == "telnyx":
        key = env("TELNYX_API_KEY")
        return TelnyxCallSerializer(
            on_stop=on_stop,
            stream_id=call["stream_id"],
            outbound_encoding=call.get("outbound_encoding") or "PCMU",
            inbound_encoding="PCMU",
            call_control_id=call.get("call_id"),
            api_key=key,
            params=TelnyxFrameSerializer.InputParams(auto_hang_up=bool(key)),
        )
    if provider == "plivo":
        auth_id, token = env("PLIVO_AUTH_ID"), env("PLIVO_AUTH_TOKEN")
        return PlivoCallSerializer(
            on_stop=on_stop,
            stream_id=call["stream_id"],
            call_id=call.get("call_id"),
            auth_id=auth_id,
            auth_token=token,
            params=PlivoFrameSerializer.InputParams(auto_hang_up=bool(auth_id and token)),
        )
    return ExotelCallSerializer(
        on_stop=on_stop, stream_sid=call["stream_id"], call_sid=call.get("call_id")
    )


def add_phone_routes(app: FastAPI, server) -> None:
    """``POST /`` (the TwiML webhook) and ``/ws/{token}`` (the media stream) on the
    browser server's app; calls count against its session limit."""
    tokens = StreamTokens()
    config = server.config

    def stream_url(request: Request) -> str:
        """A one-time ``ws(s)://HOST/ws/TOKEN`` for the call this webhook answers."""
        host = config.server.public_host or request.headers.get("host", "")
        secure = config.server.public_host or request.url.scheme == "https"
        return f"{'wss' if secure else 'ws'}://{host}/ws/{tokens.issue()}"

    @app.post("/")
    async def twiml_webhook(request: Request):
        auth_token = os.environ.get("TWILIO_AUTH_TOKEN")
        if auth_token:
            host = config.server.public_host or request.headers.get("host", "")
            form = {k: str(v) for k, v in (await request.form()).items()}
            scheme = "https" if config.server.public_host else request.url.scheme
            url = f"{scheme}://{host}{request.url.path}"
            expected = twilio_signature(auth_token, url, form)
            given = request.headers.get("x-twilio-signature", "")
            if not hmac.compare_digest(expected, given):
                logger.warning(f"refused a TwiML request to {url}: bad X-Twilio-Signature")
                return Response("bad X-Twilio-Signature", status_code=403)
        return Response(twiml(stream_url(request)), media_type="application/xml")

    def provider_off(provider: str) -> Response | None:
        if provider in config.server.phone_providers:
            return None
        return Response(
            f"{provider} calls are off: add {provider} to server.phone_providers", status_code=404
        )

    # The other providers' webhooks: the same one-time stream URL in each one's markup.
    @app.post("/telnyx")
    async def texml_webhook(request: Request):
        if off := provider_off("telnyx"):
            return off
        return Response(texml(stream_url(request)), media_type="application/xml")

    @app.post("/plivo")
    async def plivo_webhook(request: Request):
        if off := provider_off("plivo"):
            return off
        return Response(plivo_xml(stream_url(request)), media_type="application/xml")

    @app.api_route("/exotel", methods=["GET", "POST"])
    async def exotel_endpoint(request: Request):
        # The Voicebot applet's dynamic endpoint: it asks for the stream URL per call.
        if off := provider_off("exotel"):
            return off
        return {"url": stream_url(request)}

    busy: list[tuple[np.ndarray, int]] = []  # the busy message's audio, made once

    async def say_busy(websocket: WebSocket, serializer: FrameSerializer):
        """A caller the server cannot take hears why before the line closes."""
        try:
            if not busy:
                rate = config.audio_out_sample_rate
                text = config.server.busy_message
                busy.append(
                    (await asyncio.to_thread(server.stack.speech.synthesize_all, text, rate), rate)
                )
            pcm, rate = busy[0]
            step = rate // 50  # 20 ms messages, as a call's audio goes
            for start in range(0, len(pcm), step):
                frame = OutputAudioRawFrame(pcm[start : start + step].tobytes(), rate, 1)
                if message := await serializer.serialize(frame):
                    await websocket.send_text(message)
            await asyncio.sleep(len(pcm) / rate + 0.3)  # the provider plays it out
        except Exception as e:  # noqa: BLE001 - the line closes anyway
            logger.warning(f"could not say the busy message: {e}")

    @app.websocket("/ws/{token}")
    async def media_stream(websocket: WebSocket, token: str):
        await websocket.accept()
        if not tokens.redeem(token):
            logger.warning("refused a media stream: unknown, used or expired token")
            server.metrics.refused.labels("bad_stream_token").inc()
            await websocket.close(code=CLOSE_POLICY, reason="unknown or used stream token")
            return
        try:
            provider, call = await asyncio.wait_for(
                parse_telephony_websocket(websocket), HANDSHAKE_TIMEOUT_SECS
            )
            hung_up = asyncio.Event()
            serializer = make_serializer(provider, dict(call), on_stop=hung_up.set)
            if provider not in config.server.phone_providers:
                raise ValueError(f"{provider} calls are off (server.phone_providers)")
        except Exception as e:  # noqa: BLE001 - any bad handshake closes this call only
            reason = "no handshake" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            logger.warning(f"refused a media stream: {reason}")
            server.metrics.refused.labels("bad_stream").inc()
            await websocket.close(code=CLOSE_POLICY, reason=reason[:120])
            return
        # Checked after the handshake's awaits, with none before the session is registered
        # (run_session, below), so calls that arrive together cannot pass the limit.
        if not server.has_room():
            server.metrics.refused.labels("full").inc()
            await say_busy(websocket, serializer)
            await websocket.close(code=CLOSE_FULL, reason="the server is at its session limit")
            return
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer,
                audio_in_sample_rate=config.audio_in_sample_rate,
                audio_out_sample_rate=config.audio_out_sample_rate,
                session_timeout=config.server.max_call_secs,
            ),
        )
        # The call id is the caller's to choose: a random part keeps two streams that claim
        # the same one apart in the server's sessions (and in its session count).
        session_id = f"{provider}-{call.get('call_id') or 'call'}-{secrets.token_hex(4)}"
        # Twilio reports when the reply has played; the other providers' streams are
        # paced in real time by the transport, and the bot listens again once sent.
        marks = twilio_marks(call["stream_id"]) if provider == "twilio" else None
        session = build_session(
            server.stack,
            transport,
            session_id=session_id,
            page=False,
            playout_marks=marks,
            on_turn=lambda stages: server.metrics.turn("phone", stages),
        )

        @transport.event_handler("on_client_disconnected")
        async def _on_disconnected(_transport, _websocket):
            await server.end_session(session_id, "stream closed")

        @transport.event_handler("on_session_timeout")
        async def _on_timeout(_transport, _websocket):
            await server.end_session(session_id, "over server.max_call_secs")

        async def end_when_hung_up():
            await hung_up.wait()
            await server.end_session(session_id, "hung up (stop)", gracefully=True)

        watch = asyncio.create_task(end_when_hung_up())
        try:
            await server.run_session(session_id, session, kind="phone")
        finally:
            watch.cancel()
