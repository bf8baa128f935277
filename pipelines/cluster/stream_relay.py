"""A phone call's media stream through the front door, for the providers that stream to
wss:// only (Twilio does) when the nodes have no certificate of their own: the front
door, which has one (--tls-cert, or a TLS tunnel in front of it), takes the provider's
websocket and opens one to the call's node, and each message goes on as it comes.

    phone provider ══wss /ws/TOKEN══► front door ──ws /ws/NODE-TOKEN──► node

Nothing is held back: a message is sent on when it has been read whole (a Twilio media
message is 20 ms of audio), so the relay adds a loopback or LAN hop and no buffering. When
either side closes, the other is closed too, with the same code: a node that is lost
ends its calls' streams as it does without the relay.
"""

from __future__ import annotations

import asyncio

import aiohttp
from fastapi import WebSocket
from loguru import logger

from pipelines.serve.telephony.routes import close_quietly

# Sent to the provider when the node's side ended without a close code of its own (it
# died, or could not be reached): the server could not go on.
CLOSE_NODE_LOST = 1011
# The most a node's message may hold (the provider's side is capped by the front door's
# own websocket limit).
MAX_MESSAGE_BYTES = 1 << 20


async def relay(websocket: WebSocket, target: str) -> None:
    """Carry the accepted ``websocket``'s messages to the node's stream URL ``target`` and
    the node's back, until either side closes."""
    async with aiohttp.ClientSession() as http:
        try:
            node = await http.ws_connect(target, max_msg_size=MAX_MESSAGE_BYTES)
        except (aiohttp.ClientError, OSError) as e:
            logger.warning(f"the phone stream's node could not be reached: {e}")
            await close_quietly(websocket, CLOSE_NODE_LOST, "the call's node is gone")
            return
        to_node = asyncio.create_task(_provider_to_node(websocket, node))
        to_provider = asyncio.create_task(_node_to_provider(node, websocket))
        done, pending = await asyncio.wait(
            {to_node, to_provider}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        provider_left = to_node in done and to_node.result()
        await node.close()
        if not provider_left:  # the node ended the call, or was lost
            code = node.close_code
            if code in (None, 1005, 1006):  # no code of its own: it went away
                code = CLOSE_NODE_LOST
            await close_quietly(websocket, code, "the call has ended")


async def _provider_to_node(websocket: WebSocket, node) -> bool:
    """Whether it ended because the provider hung up (else: the node's side failed)."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return True
            if message.get("text") is not None:
                await node.send_str(message["text"])
            elif message.get("bytes") is not None:
                await node.send_bytes(message["bytes"])
    except (RuntimeError, ConnectionError, aiohttp.ClientError) as e:
        logger.info(f"a relayed phone stream's node side failed: {type(e).__name__}")
        return False


async def _node_to_provider(node, websocket: WebSocket) -> None:
    try:
        async for message in node:
            if message.type == aiohttp.WSMsgType.TEXT:
                await websocket.send_text(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await websocket.send_bytes(message.data)
    except (RuntimeError, ConnectionError) as e:
        logger.info(f"a relayed phone stream ended: {type(e).__name__}")
