"""A scripted phone call in the Twilio Media Streams protocol, over a real websocket.

It does what Twilio does between a caller and the bot: sends ``connected`` and ``start``,
the caller's audio as 8 kHz μ-law ``media`` messages of 20 ms in real time (silence
between clips, as a phone line carries), ``dtmf`` and ``stop``; it plays what the bot
sends back in real time into a recording, answers each ``mark`` when the audio sent before
it has played, and drops the unplayed audio on ``clear``. For tests, benchmarks, and
trying the phone entry without a Twilio number:

    python -m pipelines.telephony_client http://127.0.0.1:7860 question.wav
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


class TwilioCall:
    """One call into a server's ``POST /`` + ``/ws/{token}`` phone entry."""

    def __init__(self, base_url: str, *, custom_parameters: dict | None = None):
        self.base_url = base_url.rstrip("/")
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.custom_parameters = custom_parameters or {}
        self.played = PlayedAudio()
        self.marks_answered: list[str] = []
        self.clears = 0
        self.unexpected: list[dict] = []  # messages Twilio would not understand
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outgoing: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._sequence = 0
        self._playout_end = 0.0  # monotonic time the audio received so far ends playing
        self._tasks: list[asyncio.Task] = []

    async def stream_url(self) -> str:
        """Ask the webhook for TwiML, as Twilio does when the number is dialled."""
        async with self._session.post(f"{self.base_url}/", data={"CallSid": self.call_sid}) as r:
            r.raise_for_status()
            body = await r.text()
        start = body.index('url="') + len('url="')
        return body[start : body.index('"', start)]

    async def connect(self, url: str | None = None):
        """Dial: get the stream URL from the webhook (or use ``url``), open the stream
        and send ``connected`` and ``start``."""
        self._session = aiohttp.ClientSession()
        url = url or await self.stream_url()
        self._ws = await self._session.ws_connect(url)
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "streamSid": self.stream_sid,
                "start": {
                    "accountSid": "AC" + "0" * 32,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": self.custom_parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
                },
            }
        )
        self._tasks = [
            asyncio.create_task(self._speak()),
            asyncio.create_task(self._listen()),
        ]

    def say(self, samples: np.ndarray, rate: int) -> asyncio.Future:
        """Queue a clip (int16 mono); the future resolves to the monotonic time its last
        sample was sent."""
        done = asyncio.get_running_loop().create_future()
        pcm = samples.astype(np.int16) if rate == RATE else soxr.resample(samples, rate, RATE)
        pad = (-len(pcm)) % FRAME_SAMPLES
        self._outgoing.put_nowait((np.concatenate([pcm, np.zeros(pad, np.int16)]), done))
        return done

    async def press(self, digit: str):
        await self._send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self):
        """Send ``stop``, as Twilio does when the caller hangs up."""
        if self._ws is not None and not self._ws.closed:
            await self._send(
                {"event": "stop", "streamSid": self.stream_sid, "stop": {"callSid": self.call_sid}}
            )

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

    async def _speak_frames(self):
        silence = np.zeros(FRAME_SAMPLES, np.int16)
        clip, done, offset = None, None, 0
        next_at = time.monotonic()
        chunk = 0
        while True:
            if clip is None and not self._outgoing.empty():
                (clip, done), offset = self._outgoing.get_nowait(), 0
            if clip is not None:
                frame = clip[offset : offset + FRAME_SAMPLES]
                offset += FRAME_SAMPLES
            else:
                frame = silence
            chunk += 1
            await self._send(
                {
                    "event": "media",
                    "streamSid": self.stream_sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(chunk),
                        "timestamp": str(chunk * 20),
                        "payload": base64.b64encode(ulaw_encode(frame)).decode(),
                    },
                }
            )
            if clip is not None and offset >= len(clip):
                done.set_result(time.monotonic())
                clip = None
            next_at += FRAME_SAMPLES / RATE
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _listen(self):
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                event = message.get("event")
                if event == "media":
                    pcm = ulaw_decode(base64.b64decode(message["media"]["payload"]))
                    start = max(time.monotonic(), self._playout_end)
                    self._playout_end = start + len(pcm) / RATE
                    self.played.chunks.append((start, pcm))
                elif event == "mark":
                    # Twilio answers a mark once the audio sent before it has played.
                    name = message.get("mark", {}).get("name", "")
                    asyncio.get_running_loop().call_later(
                        max(0.0, self._playout_end - time.monotonic()),
                        lambda n=name: asyncio.ensure_future(self._answer_mark(n)),
                    )
                elif event == "clear":
                    # Unplayed audio is dropped.
                    now = time.monotonic()
                    self.clears += 1
                    self.played.chunks = [(at, pcm) for at, pcm in self.played.chunks if at <= now]
                    self._playout_end = now
                else:
                    self.unexpected.append(message)
        finally:
            self.close_code = self._ws.close_code
            self.closed.set()

    async def _answer_mark(self, name: str):
        if self._ws is not None and not self._ws.closed:
            await self._send(
                {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
            )
            self.marks_answered.append(name)


async def _main(url: str, wav: str):
    import soundfile as sf

    samples, rate = sf.read(wav, dtype="int16")
    if samples.ndim > 1:
        samples = samples[:, 0]
    call = TwilioCall(url)
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
    args = parser.parse_args()
    asyncio.run(_main(args.url, args.wav))
