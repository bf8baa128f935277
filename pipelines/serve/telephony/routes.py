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
import secrets
import time
from collections.abc import Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from loguru import logger
from pipecat.frames.frames import OutputAudioRawFrame
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

from pipelines.build import build_session
from pipelines.serve.telephony import PROVIDERS, check_phone_providers
from pipelines.serve.telephony.provider import PhoneProvider

# A stream URL handed to Twilio is used within seconds; an unused one expires.
TOKEN_TTL_SECS = 60
# The provider's "connected"/"start" messages arrive at once; a socket that sends
# nothing is not a call.
HANDSHAKE_TIMEOUT_SECS = 10
# Websocket close codes: policy violation (bad token), try again later (server full).
CLOSE_POLICY = 1008
CLOSE_FULL = 1013


class StreamTokens:
    """One-time tokens for stream URLs, each with what its stream goes to (a cluster's
    front door: the node's own stream URL; one server: nothing)."""

    def __init__(self, ttl_secs: float = TOKEN_TTL_SECS):
        self._ttl_secs = ttl_secs
        self._issued: dict[str, tuple[float, str]] = {}  # token → (expiry, target)

    def issue(self, target: str = "") -> str:
        now = time.monotonic()
        self._issued = {t: v for t, v in self._issued.items() if v[0] > now}
        token = secrets.token_urlsafe(24)
        self._issued[token] = (now + self._ttl_secs, target)
        return token

    def redeem(self, token: str) -> str | None:
        """Once for a token issued less than the TTL ago, its target; else None."""
        expiry, target = self._issued.pop(token, (0.0, ""))
        return target if expiry > time.monotonic() else None


def make_serializer(
    provider: str, call: dict, *, on_stop: Callable[[], None] | None = None
) -> FrameSerializer:
    """Pipecat's serializer for the provider ``parse_telephony_websocket`` found, made
    strict (``on_stop``: called when the stream says the caller hung up)."""
    if provider not in PROVIDERS:
        raise ValueError(f"not a telephony media stream (provider {provider!r})")
    if not call.get("stream_id"):
        raise ValueError(f"the {provider} start message has no stream id")
    return PROVIDERS[provider].serializer(call, on_stop)


# ``stream_url(request, secure)``: a new call's one-time media stream URL ("ws" or "wss"
# per ``secure``), from this server or from a cluster node that will hold the call.
StreamUrl = Callable[[Request, bool], Awaitable[str]]


def add_phone_routes(app: FastAPI, server) -> None:
    """Every provider's webhook and ``/ws/{token}`` (the media stream) on the browser
    server's app; calls count against its session limit."""
    config = server.config
    tokens = StreamTokens()
    app.state.stream_tokens = tokens

    async def own_stream_url(request: Request, secure: bool) -> str:
        host = config.server.public_host or request.headers.get("host", "")
        return f"{'wss' if secure else 'ws'}://{host}/ws/{tokens.issue()}"

    add_webhooks(app, config, own_stream_url)
    busy = BusyLine(server)

    @app.websocket("/ws/{token}")
    async def media_stream(websocket: WebSocket, token: str):
        await websocket.accept()
        if tokens.redeem(token) is None:
            logger.warning("refused a media stream: unknown, used or expired token")
            server.metrics.refused.labels("bad_stream_token").inc()
            await close_quietly(websocket, CLOSE_POLICY, "unknown or used stream token")
            return
        await _serve_stream(websocket, server, busy)


def add_webhooks(app: FastAPI, config, stream_url: StreamUrl) -> None:
    """Every provider's webhook, handing out stream URLs from ``stream_url``."""
    check_phone_providers(config.server.phone_providers)
    for provider in PROVIDERS.values():
        _add_webhook(app, provider, config, stream_url)


def _add_webhook(app: FastAPI, provider: PhoneProvider, config, stream_url: StreamUrl) -> None:
    """The provider's webhook: the one-time stream URL in its markup."""

    async def webhook(request: Request):
        if provider.name not in config.server.phone_providers:
            return Response(
                f"{provider.name} calls are off: add {provider.name} to server.phone_providers",
                status_code=404,
            )
        host = config.server.public_host or request.headers.get("host", "")
        secure = bool(config.server.public_host) or request.url.scheme == "https"
        if provider.check is not None:
            public_url = f"{'https' if secure else 'http'}://{host}{request.url.path}"
            if refused := await provider.check(request, public_url):
                return Response(refused, status_code=403)
        answer = provider.answer(await stream_url(request, secure))
        if isinstance(answer, dict):
            return answer
        return Response(answer, media_type="application/xml")

    app.add_api_route(
        provider.webhook_path, webhook, methods=list(provider.methods), name=provider.name
    )


async def close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    """Close a stream the server refuses; one whose client has already left is a log
    line, not a traceback."""
    try:
        await websocket.close(code=code, reason=reason)
    except (WebSocketDisconnect, RuntimeError) as e:
        logger.info(f"the refused stream's client had already left ({type(e).__name__})")


class BusyLine:
    """What a caller the server cannot take hears before the line closes: the busy
    message, synthesised once."""

    def __init__(self, server):
        self._server = server
        self._audio: tuple[np.ndarray, int] | None = None

    async def say(self, websocket: WebSocket, serializer: FrameSerializer):
        try:
            if self._audio is None:
                config, speech = self._server.config, self._server.stack.speech
                rate = config.audio_out_sample_rate
                text = config.server.busy_message
                self._audio = (await asyncio.to_thread(speech.synthesize_all, text, rate), rate)
            pcm, rate = self._audio
            step = rate // 50  # 20 ms messages, as a call's audio goes
            for start in range(0, len(pcm), step):
                frame = OutputAudioRawFrame(pcm[start : start + step].tobytes(), rate, 1)
                if message := await serializer.serialize(frame):
                    await websocket.send_text(message)
            await asyncio.sleep(len(pcm) / rate + 0.3)  # the provider plays it out
        except Exception as e:  # noqa: BLE001 - the line closes anyway
            logger.warning(f"could not say the busy message: {e}")


async def _handshake(websocket: WebSocket, config, server):
    """The stream's provider, call and serializer, or None (the socket closed, the reason
    logged) when it is not a media stream of a provider that is on."""
    try:
        provider, call = await asyncio.wait_for(
            parse_telephony_websocket(websocket), HANDSHAKE_TIMEOUT_SECS
        )
        hung_up = asyncio.Event()
        call = dict(call)
        serializer = make_serializer(provider, call, on_stop=hung_up.set)
        if provider not in config.server.phone_providers:
            raise ValueError(f"{provider} calls are off (server.phone_providers)")
        return PROVIDERS[provider], call, serializer, hung_up
    except Exception as e:  # noqa: BLE001 - any bad handshake closes this call only
        reason = "no handshake" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        logger.warning(f"refused a media stream: {reason}")
        server.metrics.refused.labels("bad_stream").inc()
        await close_quietly(websocket, CLOSE_POLICY, reason[:120])
        return None


async def _serve_stream(websocket: WebSocket, server, busy: BusyLine):
    """One phone call, from its handshake to its end."""
    config = server.config
    handshake = await _handshake(websocket, config, server)
    if handshake is None:
        return
    provider, call, serializer, hung_up = handshake
    # Checked after the handshake's awaits, with none before the session is registered
    # (run_session, below), so calls that arrive together cannot pass the limit.
    if not server.has_room():
        server.metrics.refused.labels("full").inc()
        await busy.say(websocket, serializer)
        await close_quietly(websocket, CLOSE_FULL, "the server is at its session limit")
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
    session_id = f"{provider.name}-{call.get('call_id') or 'call'}-{secrets.token_hex(4)}"
    # A provider that reports playback: the bot listens again on that report; the others'
    # streams are paced in real time by the transport, and it listens again once sent.
    session = build_session(
        server.stack,
        transport,
        session_id=session_id,
        page=False,
        playout_marks=provider.marks(call) if provider.marks else None,
        on_turn=lambda turn: server.turn_done(session_id, "phone", turn),
        peer_silence_secs=config.server.peer_silence_secs,
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
