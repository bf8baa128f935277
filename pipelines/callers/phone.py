"""A scripted phone call over a real websocket, in the media-stream protocol of Twilio
(default), Telnyx, Plivo or Exotel.

It does what the provider does between a caller and the bot: asks the server's webhook
for the stream URL, sends the opening messages, the caller's audio as 8 kHz ``media``
messages of 20 ms in real time (silence between clips, as a phone line carries), keypad
presses (``dtmf``) and ``stop``; it plays what the bot sends back in real time into a
recording, answers each ``mark`` when the audio sent before it has played, and drops the
unplayed audio on ``clear``. For tests, benchmarks, and trying the phone entry without a
phone number:

    python -m pipelines.callers.phone http://127.0.0.1:7860 question.wav [--provider plivo]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import soxr

RATE = 8000
FRAME_SAMPLES = RATE // 50  # 20 ms

# G.711 μ-law, bit-exact with audioop.lin2ulaw / ulaw2lin (audioop is gone from 3.13).
_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_BIAS = 0x84


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples → μ-law bytes."""
    v = pcm.astype(np.int32) >> 2  # 14 bits
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), 8159) + (_BIAS >> 2)
    seg = np.searchsorted(_SEG_END, v)  # the first segment whose end is >= v
    ulaw = np.where(seg < 8, (seg << 4) | ((v >> (seg + 1)) & 0x0F), 0x7F)
    return (ulaw ^ mask).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """μ-law bytes → int16 samples."""
    u = ~np.frombuffer(data, np.uint8).astype(np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    x = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(u & 0x80, -x, x).astype(np.int16)


def phone_line(samples: np.ndarray, rate: int, out_rate: int | None = None) -> np.ndarray:
    """int16 audio as it comes out of a phone line: band-limited to 8 kHz and G.711 μ-law
    coded, then at ``out_rate`` (default: ``rate``)."""
    narrow = samples.astype(np.int16) if rate == RATE else soxr.resample(samples, rate, RATE)
    heard = ulaw_decode(ulaw_encode(narrow))
    out_rate = out_rate or rate
    return heard if out_rate == RATE else soxr.resample(heard, RATE, out_rate)


@dataclass
class PlayedAudio:
    """What the caller heard: μ-law decoded, at 8 kHz, with when each piece played."""

    chunks: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (monotonic, pcm)

    def since(self, t: float) -> np.ndarray:
        parts = [pcm for at, pcm in self.chunks if at >= t]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def first_after(self, t: float, level: int = 300) -> float | None:
        """When the first audible sample (above ``level``) after ``t`` played."""
        for at, pcm in self.chunks:
            if at + len(pcm) / RATE >= t and pcm.size:
                loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
                loud = loud[at + loud / RATE >= t]
                if loud.size:
                    return at + loud[0] / RATE
        return None


class Provider:
    """One provider's side of the media-stream protocol (Twilio's; the others below say
    what they do differently). ``call`` is the PhoneCall whose ids go in the messages."""

    name = "twilio"
    webhook = "/"  # where the server hands out a stream URL for a new call
    audio_in = "media"  # the event that carries the bot's audio
    clear = "clear"  # the event that drops the bot's unplayed audio

    async def stream_url(self, http: aiohttp.ClientSession, base_url: str, call_id: str) -> str:
        """Ask the webhook, as the provider does when the number is dialled."""
        async with http.post(base_url + self.webhook, data={"CallSid": call_id}) as r:
            r.raise_for_status()
            body = await r.text()
        start = body.index('url="') + len('url="')
        return body[start : body.index('"', start)]

    def handshake(self, call: PhoneCall) -> list[dict]:
        return [
            {"event": "connected", "protocol": "Call", "version": "1.0.0"},
            {
                "event": "start",
                "streamSid": call.stream_id,
                "start": {
                    "accountSid": "AC" + "0" * 32,
                    "streamSid": call.stream_id,
                    "callSid": call.call_id,
                    "tracks": ["inbound"],
                    "customParameters": call.custom_parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
                },
            },
        ]

    def encode(self, pcm: np.ndarray) -> bytes:
        return ulaw_encode(pcm)

    def decode(self, data: bytes) -> np.ndarray:
        return ulaw_decode(data)

    def media(self, call: PhoneCall, payload: str, chunk: int) -> dict:
        return {
            "event": "media",
            "streamSid": call.stream_id,
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(chunk * 20),
                "payload": payload,
            },
        }

    def dtmf(self, call: PhoneCall, digit: str) -> dict:
        return {
            "event": "dtmf",
            "streamSid": call.stream_id,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }

    def stop(self, call: PhoneCall) -> dict:
        return {"event": "stop", "streamSid": call.stream_id, "stop": {"callSid": call.call_id}}

    def mark(self, call: PhoneCall, name: str) -> dict:
        return {"event": "mark", "streamSid": call.stream_id, "mark": {"name": name}}


class Telnyx(Provider):
    """Telnyx media streaming (TeXML ``<Stream bidirectionalMode="rtp">``): snake_case
    ids at the top level, the call named by its ``call_control_id``."""

    name = "telnyx"
    webhook = "/telnyx"

    def handshake(self, call):
        return [
            {"event": "connected", "version": "1.0.0"},
            {
                "event": "start",
                "sequence_number": "1",
                "stream_id": call.stream_id,
                "start": {
                    "call_control_id": call.call_id,
                    "from": "+15550100",
                    "to": "+15550199",
                    "media_format": {"encoding": "PCMU", "sample_rate": RATE, "channels": 1},
                },
            },
        ]

    def media(self, call, payload, chunk):
        return {
            "event": "media",
            "stream_id": call.stream_id,
            "media": {"track": "inbound", "chunk": str(chunk), "payload": payload},
        }

    def dtmf(self, call, digit):
        return {"event": "dtmf", "stream_id": call.stream_id, "dtmf": {"digit": digit}}

    def stop(self, call):
        return {"event": "stop", "stream_id": call.stream_id, "stop": {}}

    def mark(self, call, name):
        return {"event": "mark", "stream_id": call.stream_id, "mark": {"name": name}}


class Plivo(Provider):
    """Plivo audio streams: camelCase ids, no ``connected``; the bot answers with
    ``playAudio`` and ``clearAudio``."""

    name = "plivo"
    webhook = "/plivo"
    audio_in = "playAudio"
    clear = "clearAudio"

    async def stream_url(self, http, base_url, call_id):
        async with http.post(base_url + self.webhook, data={"CallUUID": call_id}) as r:
            r.raise_for_status()
            body = await r.text()
        return body.split("<Stream", 1)[1].split(">", 1)[1].split("</Stream>", 1)[0]

    def handshake(self, call):
        return [
            {
                "event": "start",
                "sequenceNumber": 0,
                "start": {
                    "callId": call.call_id,
                    "streamId": call.stream_id,
                    "accountId": "MA" + "0" * 18,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE},
                },
            }
        ]

    def media(self, call, payload, chunk):
        return {
            "event": "media",
            "streamId": call.stream_id,
            "media": {"track": "inbound", "chunk": chunk, "payload": payload},
        }

    def dtmf(self, call, digit):
        return {"event": "dtmf", "streamId": call.stream_id, "dtmf": {"digit": digit}}

    def stop(self, call):
        return {"event": "stop", "streamId": call.stream_id}


class Exotel(Provider):
    """Exotel's Voicebot applet: 16-bit linear PCM at 8 kHz (not μ-law), snake_case ids;
    its dynamic endpoint hands out the stream URL as JSON."""

    name = "exotel"
    webhook = "/exotel"

    async def stream_url(self, http, base_url, call_id):
        async with http.get(base_url + self.webhook, params={"CallSid": call_id}) as r:
            r.raise_for_status()
            return (await r.json())["url"]

    def handshake(self, call):
        return [
            {"event": "connected"},
            {
                "event": "start",
                "stream_sid": call.stream_id,
                "start": {
                    "stream_sid": call.stream_id,
                    "call_sid": call.call_id,
                    "account_sid": "exotel-account",
                    "from": "09999999999",
                    "to": "08888888888",
                    "custom_parameters": {},
                    "media_format": {"encoding": "base64", "sample_rate": str(RATE)},
                },
            },
        ]

    def encode(self, pcm):
        return pcm.astype("<i2").tobytes()

    def decode(self, data):
        return np.frombuffer(data, "<i2").astype(np.int16)

    def media(self, call, payload, chunk):
        return {
            "event": "media",
            "stream_sid": call.stream_id,
            "media": {"chunk": chunk, "timestamp": str(chunk * 20), "payload": payload},
        }

    def dtmf(self, call, digit):
        return {"event": "dtmf", "stream_sid": call.stream_id, "dtmf": {"digit": digit}}

    def stop(self, call):
        return {"event": "stop", "stream_sid": call.stream_id, "stop": {}}

    def mark(self, call, name):
        return {"event": "mark", "stream_sid": call.stream_id, "mark": {"name": name}}


PROVIDERS = {p.name: p for p in (Provider(), Telnyx(), Plivo(), Exotel())}


class PhoneCall:
    """One call into a server's phone entry (webhook + ``/ws/{token}``), in the protocol
    of ``provider``: twilio (default), telnyx, plivo or exotel."""

    def __init__(
        self, base_url: str, *, provider: str = "twilio", custom_parameters: dict | None = None
    ):
        self.base_url = base_url.rstrip("/")
        self.provider = PROVIDERS[provider]
        self.stream_id = "MZ" + secrets.token_hex(16)
        self.call_id = "CA" + secrets.token_hex(16)
        self.custom_parameters = custom_parameters or {}
        self.played = PlayedAudio()
        self.marks_answered: list[str] = []
        self.clears = 0
        self.unexpected: list[dict] = []  # messages the provider would not understand
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outgoing: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._sequence = 0
        self._playout_end = 0.0  # monotonic time the audio received so far ends playing
        self._pending_marks: list[tuple[asyncio.TimerHandle, str]] = []
        self._clip_done: asyncio.Future | None = None  # the clip being sent
        self._line_closed = False
        self._tasks: list[asyncio.Task] = []

    async def stream_url(self) -> str:
        return await self.provider.stream_url(self._session, self.base_url, self.call_id)

    async def connect(self, url: str | None = None):
        """Dial: get the stream URL from the webhook (or use ``url``), open the stream
        and send the provider's opening messages."""
        self._session = aiohttp.ClientSession()
        url = url or await self.stream_url()
        self._ws = await self._session.ws_connect(url)
        for message in self.provider.handshake(self):
            await self._send(message)
        self._tasks = [
            asyncio.create_task(self._speak()),
            asyncio.create_task(self._listen()),
        ]

    def say(self, samples: np.ndarray, rate: int) -> asyncio.Future:
        """Queue a clip (int16 mono); the future resolves to the monotonic time its last
        sample was sent."""
        done = asyncio.get_running_loop().create_future()
        if self._line_closed:
            done.set_exception(ConnectionResetError("the line is closed"))
            return done
        pcm = samples.astype(np.int16) if rate == RATE else soxr.resample(samples, rate, RATE)
        pad = (-len(pcm)) % FRAME_SAMPLES
        self._outgoing.put_nowait((np.concatenate([pcm, np.zeros(pad, np.int16)]), done))
        return done

    async def press(self, digit: str):
        """A key on the keypad (DTMF)."""
        await self._send(self.provider.dtmf(self, digit))

    async def stop(self):
        """Send ``stop``, as the provider does when the caller hangs up."""
        if self._ws is not None and not self._ws.closed:
            await self._send(self.provider.stop(self))

    def go_quiet(self):
        """The line stops sending audio and its socket stays open: a far end gone without
        a word (a dead caller process, a network that dropped)."""
        self._tasks[0].cancel()

    async def send_raw(self, text: str):
        """Send a message as is (for testing what the server does with bad input)."""
        await self._ws.send_str(text)

    async def hang_up(self):
        """Send ``stop`` (the caller hung up) and close."""
        await self.stop()
        await self.close()

    async def close(self):
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def wait_for_reply(
        self, since: float, *, quiet_secs: float = 1.5, timeout: float = 60
    ) -> np.ndarray:
        """The bot's audio that played after ``since``, once it has been quiet for
        ``quiet_secs`` after speaking."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = self.played.first_after(since)
            if first is not None and time.monotonic() - max(self._playout_end, first) > quiet_secs:
                return self.played.since(since)
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no reply within {timeout} s")

    async def _send(self, message: dict):
        self._sequence += 1
        if self._ws.closed:
            raise ConnectionResetError("the stream is closed")
        await self._ws.send_str(json.dumps({**message, "sequenceNumber": str(self._sequence)}))

    async def _speak(self):
        """20 ms of the caller's line every 20 ms: queued clips, else silence (until the
        stream closes)."""
        try:
            await self._speak_frames()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            # Clips not (wholly) sent fail, so nobody waits on them forever.
            self._line_closed = True
            pending = [self._clip_done] if self._clip_done is not None else []
            while not self._outgoing.empty():
                pending.append(self._outgoing.get_nowait()[1])
            for done in pending:
                if not done.done():
                    done.set_exception(ConnectionResetError("the line closed"))

    async def _speak_frames(self):
        silence = np.zeros(FRAME_SAMPLES, np.int16)
        clip, done, offset = None, None, 0
        next_at = time.monotonic()
        chunk = 0
        while True:
            if clip is None and not self._outgoing.empty():
                (clip, done), offset = self._outgoing.get_nowait(), 0
                self._clip_done = done
            if clip is not None:
                frame = clip[offset : offset + FRAME_SAMPLES]
                offset += FRAME_SAMPLES
            else:
                frame = silence
            chunk += 1
            payload = base64.b64encode(self.provider.encode(frame)).decode()
            await self._send(self.provider.media(self, payload, chunk))
            if clip is not None and offset >= len(clip):
                done.set_result(time.monotonic())
                clip = self._clip_done = None
            next_at += FRAME_SAMPLES / RATE
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _listen(self):
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                event = message.get("event")
                if event == self.provider.audio_in:
                    pcm = self.provider.decode(base64.b64decode(message["media"]["payload"]))
                    start = max(time.monotonic(), self._playout_end)
                    self._playout_end = start + len(pcm) / RATE
                    self.played.chunks.append((start, pcm))
                elif event == "mark":
                    # A mark is answered once the audio sent before it has played.
                    name = message.get("mark", {}).get("name", "")
                    handle = asyncio.get_running_loop().call_later(
                        max(0.0, self._playout_end - time.monotonic()),
                        lambda n=name: asyncio.ensure_future(self._answer_mark(n)),
                    )
                    self._pending_marks.append((handle, name))
                elif event == self.provider.clear:
                    # Unplayed audio is dropped, and the marks waiting on it are answered.
                    now = time.monotonic()
                    self.clears += 1
                    self.played.chunks = [(at, pcm) for at, pcm in self.played.chunks if at <= now]
                    self._playout_end = now
                    for handle, name in self._pending_marks:
                        if handle.when() > asyncio.get_running_loop().time():
                            handle.cancel()
                            asyncio.ensure_future(self._answer_mark(name))
                    self._pending_marks.clear()
                else:
                    self.unexpected.append(message)
        finally:
            self.close_code = self._ws.close_code
            self.closed.set()

    async def _answer_mark(self, name: str):
        if self._ws is not None and not self._ws.closed:
            await self._send(self.provider.mark(self, name))
            self.marks_answered.append(name)


async def _main(url: str, wav: str, provider: str):
    import soundfile as sf

    samples, rate = sf.read(wav, dtype="int16")
    if samples.ndim > 1:
        samples = samples[:, 0]
    call = PhoneCall(url, provider=provider)
    await call.connect()
    await asyncio.sleep(0.5)
    sent = await call.say(samples, rate)
    reply = await call.wait_for_reply(sent)
    first = call.played.first_after(sent)
    print(
        f"reply: {len(reply) / RATE:.1f} s of audio, first sound {first - sent:.2f} s after the question"
    )
    sf.write("reply.wav", reply, RATE)
    print("wrote reply.wav")
    await call.hang_up()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:7860")
    parser.add_argument("wav", help="what the caller says")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="twilio")
    args = parser.parse_args()
    asyncio.run(_main(args.url, args.wav, args.provider))
