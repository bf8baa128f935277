"""The browser transport: a FastAPI server with Pipecat's SmallWebRTC (aiortc) transport.

``GET /`` serves a page that calls the bot from the browser's microphone; ``POST
/api/offer`` takes the page's SDP offer and answers it, starting one pipeline session per
peer connection. Phone calls come in on the same server (``POST /`` and ``/ws/{token}``,
pipelines/telephony.py). The models are the process's shared ModelStack; sessions only add
their own small state. A malformed or oversized offer gets HTTP 400 and nothing else
happens; a full server answers 503.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from loguru import logger
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import (
    IceCandidate,
    SmallWebRTCPatchRequest,
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from pipelines.build import Session, build_session
from pipelines.stack import ModelStack
from pipelines.telephony import add_phone_routes

STATIC_DIR = Path(__file__).resolve().parent / "static"


class OfferError(ValueError):
    """The body of an offer request is not a usable SDP offer."""


def parse_offer(body: bytes) -> SmallWebRTCRequest:
    """The SDP offer in a request body that _read_limited has already bounded in size."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OfferError(f"offer is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise OfferError("offer must be a JSON object with 'sdp' and 'type'")
    sdp, kind, pc_id = data.get("sdp"), data.get("type"), data.get("pc_id")
    if kind != "offer":
        raise OfferError(f"'type' must be 'offer', got {kind!r}")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise OfferError("'sdp' is not a session description (it must start with 'v=0')")
    if "m=audio" not in sdp:
        raise OfferError("the offer has no audio track")
    if pc_id is not None and not isinstance(pc_id, str):
        raise OfferError("'pc_id' must be a string")
    return SmallWebRTCRequest(
        sdp=sdp, type=kind, pc_id=pc_id, restart_pc=bool(data.get("restart_pc"))
    )


class WebRTCServer:
    """Owns the sessions of one server process."""

    def __init__(self, stack: ModelStack):
        self.stack = stack
        self.sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task] = set()
        self._handler = SmallWebRTCRequestHandler()

    @property
    def config(self):
        return self.stack.config

    def has_room(self) -> bool:
        """Whether another session (browser or phone call) may start."""
        return len(self.sessions) < self.config.server.max_sessions

    async def answer(self, request: SmallWebRTCRequest) -> dict:
        is_new = not (request.pc_id and request.pc_id in self.sessions)
        if is_new and not self.has_room():
            raise HTTPException(status_code=503, detail="the server is at its session limit")
        try:
            answer = await self._handler.handle_web_request(request, self._start_session)
        except HTTPException:
            raise
        except Exception as e:
            raise OfferError(f"the SDP offer was rejected: {type(e).__name__}: {e}") from None
        if answer is None:
            raise OfferError("the SDP offer produced no answer")
        return answer

    async def _start_session(self, connection: SmallWebRTCConnection):
        params = TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=self.config.audio_in_sample_rate,
            audio_out_sample_rate=self.config.audio_out_sample_rate,
        )
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=params)
        session = build_session(self.stack, transport, session_id=connection.pc_id)
        self.sessions[connection.pc_id] = session

        @transport.event_handler("on_client_disconnected")
        async def _on_disconnected(_transport, _connection):
            await session.worker.cancel()

        task = asyncio.create_task(self.run_session(connection.pc_id, session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_session(self, session_id: str, session: Session):
        """Run a session (a browser's or a phone call's) until it ends."""
        self.sessions[session_id] = session
        logger.info(f"session {session_id} started ({len(self.sessions)} active)")
        try:
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(session.worker)
            await runner.run()
        except Exception as e:  # one broken session must not take the server down
            logger.exception(f"session {session_id} failed: {e}")
        finally:
            self.sessions.pop(session_id, None)
            logger.info(f"session {session_id} ended ({len(self.sessions)} active)")

    async def add_ice_candidates(self, pc_id: str, candidates: list[dict]):
        await self._handler.handle_patch_request(
            SmallWebRTCPatchRequest(
                pc_id=pc_id,
                candidates=[
                    IceCandidate(
                        candidate=c.get("candidate", ""),
                        sdp_mid=c.get("sdp_mid", c.get("sdpMid", "")),
                        sdp_mline_index=c.get("sdp_mline_index", c.get("sdpMLineIndex", 0)),
                    )
                    for c in candidates
                ],
            )
        )

    async def close(self):
        for session in list(self.sessions.values()):
            await session.worker.cancel()
        await self._handler.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)


def create_app(stack: ModelStack) -> FastAPI:
    server = WebRTCServer(stack)
    app = FastAPI(title="Local voice agent")
    app.state.server = server

    @app.get("/")
    async def index():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/api/health")
    async def health():
        return {"status": "ok", "sessions": len(server.sessions)}

    @app.post("/api/offer")
    async def offer(request: Request):
        try:
            body = await _read_limited(request, server.config.server.max_offer_bytes)
            answer = await server.answer(parse_offer(body))
        except OfferError as e:
            logger.warning(f"rejected offer: {e}")
            return JSONResponse({"error": str(e)}, status_code=400)
        return answer

    @app.patch("/api/offer")
    async def ice_candidates(request: Request):
        try:
            body = await _read_limited(request, server.config.server.max_offer_bytes)
            data = json.loads(body)
            pc_id, candidates = data["pc_id"], data["candidates"]
            if not isinstance(candidates, list):
                raise TypeError("'candidates' must be a list")
        except (OfferError, ValueError, KeyError, TypeError) as e:
            return JSONResponse({"error": f"bad ICE candidate request: {e}"}, status_code=400)
        try:
            await server.add_ice_candidates(pc_id, candidates)
        except HTTPException:
            raise
        except Exception as e:
            return JSONResponse({"error": f"bad ICE candidate: {e}"}, status_code=400)
        return {"status": "ok"}

    add_phone_routes(app, server)

    @app.on_event("shutdown")
    async def _shutdown():
        await server.close()

    return app


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    """Read the body, refusing to buffer more than a little past ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise OfferError(f"request body of {declared} bytes is over the {max_bytes} allowed")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise OfferError(f"request body is over the {max_bytes} bytes allowed")
    return bytes(body)
