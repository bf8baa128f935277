"""A server put on a network: the access token, HTTPS with a self-signed certificate, ICE
servers with TURN REST credentials, and the refusal to bind beyond loopback unprotected."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from pipelines.callers.webrtc import WebRTCCaller
from pipelines.serve.access import certificate_fingerprint, self_signed_certificate
from pipelines.serve.server import create_app
from tests.conftest import serving

ROOT = Path(__file__).resolve().parent.parent


async def test_with_an_access_token_only_its_holders_get_in(stack):
    app = create_app(stack, access_token="let-me-in")
    async with serving(app) as port:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/") as r:
                assert r.status == 401 and "access token" in (await r.json())["error"]
            async with http.get(f"{url}/?token=wrong") as r:
                assert r.status == 401
            async with http.get(f"{url}/?token=let-me-in") as r:
                assert r.status == 200 and "<html" in (await r.text()).lower()
            async with http.get(f"{url}/api/health") as r:  # for monitors
                assert r.status == 200
            async with http.post(f"{url}/api/offer", json={"type": "offer"}) as r:
                assert r.status == 401
            async with http.post(f"{url}/") as r:  # the phone webhook too, unless signed
                assert r.status == 401
            async with http.post(f"{url}/?token=let-me-in") as r:
                assert r.status == 200 and "<Stream" in await r.text()
        stranger = WebRTCCaller(url)
        try:
            await stranger.connect()
            raise AssertionError("connected without the token")
        except RuntimeError as e:
            assert "401" in str(e)
        finally:
            await stranger.close()
        caller = WebRTCCaller(url, token="let-me-in")
        await caller.connect()
        assert caller.pc.connectionState == "connected"
        await caller.close()


async def test_the_page_is_served_over_https_with_the_printed_fingerprint(stack, tmp_path):
    cert, key = self_signed_certificate(tmp_path, "127.0.0.1")
    assert self_signed_certificate(tmp_path, "127.0.0.1") == (cert, key)  # made once, kept
    app = create_app(stack)
    async with serving(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as port:
        trust = ssl.create_default_context(cafile=str(cert))  # verified, not ignored
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/", ssl=trust) as r:
                assert r.status == 200 and "<html" in (await r.text()).lower()
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust)
        der = writer.get_extra_info("ssl_object").getpeercert(True)
        writer.close()
        served = hashlib.sha256(der).hexdigest()
        assert certificate_fingerprint(cert).replace(":", "").lower() == served


async def test_the_page_gets_ice_servers_with_short_lived_turn_credentials(server, monkeypatch):
    from agent.config import IceServerConfig

    app, url = server
    config = app.state.server.config.server
    monkeypatch.setattr(
        config,
        "ice_servers",
        [
            IceServerConfig(urls=["stun:stun.example.org:3478"]),
            IceServerConfig(urls=["turn:turn.example.org:3478?transport=udp"]),
        ],
    )
    monkeypatch.setattr(config, "turn_secret", "coturn-static-secret")
    monkeypatch.setattr(config, "turn_ttl_secs", 600)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/api/ice") as r:
            stun, turn = (await r.json())["iceServers"]
    assert stun == {"urls": ["stun:stun.example.org:3478"]}
    expiry, _, user = turn["username"].partition(":")
    assert abs(int(expiry) - (time.time() + 600)) < 5 and user
    # What coturn's use-auth-secret checks.
    mac = hmac.new(b"coturn-static-secret", turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(mac).decode()


def test_binding_beyond_loopback_without_https_is_refused_before_loading_models():
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "run_agent.py", "--config", "tiny", "--host", "0.0.0.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--self-signed" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
