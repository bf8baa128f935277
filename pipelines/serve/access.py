"""Who may use a server that is reachable from a network: an access token, TLS, ICE servers.

On loopback nothing here is needed. Bound to another address, the server asks every
request (but the health check and the phone provider's own signed or one-time URLs) for
its access token, like Jupyter: ``?token=…`` on the page's URL (the page passes it on) or
``Authorization: Bearer …``; and it serves HTTPS, since browsers give a page the
microphone only on ``localhost`` or over HTTPS.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import socket
import time
from pathlib import Path

from fastapi import Request


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def request_token(request: Request) -> str | None:
    """The access token a request carries: ``?token=`` or ``Authorization: Bearer``."""
    if token := request.query_params.get("token"):
        return token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def token_matches(request: Request, token: str) -> bool:
    given = request_token(request)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def turn_credentials(secret: str, ttl_secs: int, user: str = "voice-agent") -> tuple[str, str]:
    """Short-lived TURN credentials (the TURN REST API that coturn's ``use-auth-secret``
    checks): username ``EXPIRY:user``, password base64(HMAC-SHA1(secret, username))."""
    username = f"{int(time.time()) + ttl_secs}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def certificate_fingerprint(cert_path: Path) -> str:
    """SHA-256 fingerprint of a PEM certificate, as browsers show it (AA:BB:…)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def self_signed_certificate(folder: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (and this machine's name, localhost and the
    loopback addresses), made once and kept in ``folder``: (cert, key) PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = folder / f"{host}.crt", folder / f"{host}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(socket.gethostname()),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voice-agent (self-signed)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
