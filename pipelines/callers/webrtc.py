"""A scripted WebRTC caller (aiortc): speaks audio into the bot and records what it hears.

Used by the tests and benchmarks as the far end of a real peer connection over loopback,
and handy for calling a running server from a script.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame
from av.audio.resampler import AudioResampler

from pipelines.serve.uvicorn_server import free_port

FRAME_SECS = 0.02


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a server to call."""
    return free_port("127.0.0.1")


async def unconnected_offer(**extra) -> tuple[RTCPeerConnection, dict]:
    """A real SDP offer (the offer request's JSON, with ``extra``) from an aiortc peer that
    will never go on to connect: a probe of the server's admission."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, {"sdp": pc.localDescription.sdp, "type": "offer", **extra}


class SentClip:
    """A clip queued on a ScriptedMicrophone; ``started_at`` is when its first sample went
    out (time.monotonic()), so a caller can time the bot from the end of its speech."""

    def __init__(self, first_sample: int, samples: int, sample_rate: int):
        # first_sample: the microphone's sample count (pts) at which the clip begins;
        # samples and sample_rate: the clip as given (the microphone may resample it).
        self.first_sample = first_sample
        self.samples = samples
        self.sample_rate = sample_rate
        self.started_at: float | None = None

    def time_of(self, offset: int) -> float | None:
        """When sample ``offset`` of the clip (at its own rate) was (or will be) sent, at
        real-time pacing."""
        if self.started_at is None:
            return None
        return self.started_at + offset / self.sample_rate


class ScriptedMicrophone(MediaStreamTrack):
    """An audio track that plays queued clips in real time and silence in between."""

    kind = "audio"

    def __init__(self, sample_rate: int = 48000):
        super().__init__()
        self.sample_rate = sample_rate
        self._samples_per_frame = int(sample_rate * FRAME_SECS)
        self._pending = np.zeros(0, np.int16)
        self._pts = 0
        self._start: float | None = None
        self._clips: list[SentClip] = []  # clips whose first sample has not gone out yet
        self.clip_finished = asyncio.Event()

    def say(self, samples: np.ndarray, sample_rate: int) -> SentClip:
        """Queue int16 mono speech; ``clip_finished`` is set when it has all been sent."""
        given = len(samples)
        if sample_rate != self.sample_rate:
            import soxr

            samples = soxr.resample(
                samples.astype(np.float32) / 32768, sample_rate, self.sample_rate
            )
            samples = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        self.clip_finished.clear()
        # Queued behind what is pending: its first sample goes out in the frame with that pts.
        clip = SentClip(self._pts + len(self._pending), given, sample_rate)
        self._clips.append(clip)
        self._pending = np.concatenate([self._pending, samples])
        return clip

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        # Real-time pacing: frame n goes out at start + n * 20 ms.
        due = self._start + self._pts / self.sample_rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        n = self._samples_per_frame
        now = time.monotonic()
        for clip in [c for c in self._clips if c.first_sample < self._pts + n]:
            clip.started_at = now + max(0, clip.first_sample - self._pts) / self.sample_rate
            self._clips.remove(clip)
        chunk, self._pending = self._pending[:n], self._pending[n:]
        if len(self._pending) == 0:
            self.clip_finished.set()
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), np.int16)])
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        self._pts += n
        return frame


class WebRTCCaller:
    """Calls a server's /api/offer, talks through a ScriptedMicrophone, records the bot at 16 kHz."""

    def __init__(self, base_url: str, record_rate: int = 16000, *, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.token = token  # the server's access token, when it has one
        self.mic = ScriptedMicrophone()
        self.pc = RTCPeerConnection()
        self.record_rate = record_rate
        self._heard: list[tuple[float, np.ndarray]] = []
        self._reader: asyncio.Task | None = None
        self.pc_id: str | None = None
        self.session_secret: str | None = None  # needed to renegotiate or add ICE candidates
        # Messages the server sends over the data channel (what it heard and answered),
        # each with "_at", the time.monotonic() it arrived.
        self.messages: list[dict] = []

        @self.pc.on("track")
        def on_track(track):
            if track.kind == "audio":
                self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track):
        resampler = AudioResampler(format="s16", layout="mono", rate=self.record_rate)
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            for out in resampler.resample(frame):
                self._heard.append(
                    (time.monotonic(), out.to_ndarray().reshape(-1).astype(np.int16))
                )

    async def connect(self, timeout: float = 30.0):
        self.pc.addTrack(self.mic)
        channel = self.pc.createDataChannel("messages")

        @channel.on("message")
        def on_message(data):
            try:
                message = json.loads(data)
            except (TypeError, ValueError):
                return
            if isinstance(message, dict):
                self.messages.append({**message, "_at": time.monotonic()})

        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            async with http.post(
                f"{self.base_url}/api/offer", json=offer, timeout=timeout, headers=headers
            ) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"offer refused ({response.status}): {body}")
        self.pc_id = body["pc_id"]
        self.session_secret = body.get("session_secret")
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=body["sdp"], type=body["type"])
        )
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if time.monotonic() > deadline:
                raise TimeoutError(f"peer connection stuck in state {self.pc.connectionState}")
            await asyncio.sleep(0.05)

    def heard_chunks(self) -> list[tuple[float, np.ndarray]]:
        """(arrival time, int16 samples at ``record_rate``) of everything heard so far."""
        return list(self._heard)

    def heard_since(self, since: float) -> np.ndarray:
        chunks = [c for t, c in self._heard if t >= since]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    async def wait_for_reply(
        self, since: float, *, timeout: float = 60.0, quiet_secs: float = 1.5, level: int = 500
    ) -> np.ndarray:
        """Wait until the bot has spoken after ``since`` and then been quiet ``quiet_secs``."""
        deadline = time.monotonic() + timeout
        spoke_at = None
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            loud = [t for t, c in self._heard if t >= since and c.size and np.abs(c).max() > level]
            if loud:
                spoke_at = loud[-1]
                if time.monotonic() - spoke_at > quiet_secs:
                    return self.heard_since(since)
        raise TimeoutError(
            "the bot did not answer" if spoke_at is None else "the bot did not stop speaking"
        )

    async def close(self):
        await self.pc.close()
        if self._reader:
            self._reader.cancel()
