"""Feishu (Lark) event envelope: signature, AES decryption, verification token.

Pure functions over bytes and str (no I/O, no lark-oapi SDK) so the webhook
stays a thin adapter and every rule here is unit-testable. The webhook calls
`open_envelope()` with the raw body and the three ``X-Lark-*`` header values.

Errors: `SignatureError` for anything that says "this did not come from our
Feishu app" (signature, verification token); `InvalidMessage` (and its
`DecryptError`) for bodies we cannot read. No message ever includes the
encrypt key or a token value.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import time

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import DecryptError, InvalidMessage, SignatureError

_IV_SIZE = 16
_BLOCK = 16

HEADER_TIMESTAMP = "X-Lark-Request-Timestamp"
HEADER_NONCE = "X-Lark-Request-Nonce"
HEADER_SIGNATURE = "X-Lark-Signature"


def _aes_key(encrypt_key: str) -> bytes:
    # Feishu derives the AES-256 key as SHA-256 of the console's "Encrypt Key".
    return hashlib.sha256(encrypt_key.encode("utf-8")).digest()


def decrypt(encrypt_b64: str, encrypt_key: str) -> str:
    """Decrypt the ``encrypt`` field of a Feishu body to the JSON event text."""
    if not isinstance(encrypt_b64, str):
        raise DecryptError(
            f"'encrypt' must be a base64 string, got {type(encrypt_b64).__name__}"
        )
    try:
        # validate=True: silently skipping junk characters would hide corruption.
        raw = base64.b64decode(encrypt_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DecryptError("'encrypt' is not valid base64") from None
    if len(raw) < _IV_SIZE + _BLOCK or (len(raw) - _IV_SIZE) % _BLOCK:
        raise DecryptError(
            f"encrypted payload has a wrong length ({len(raw)} bytes): "
            "expected a 16-byte IV followed by whole 16-byte AES blocks"
        )
    decryptor = Cipher(
        algorithms.AES(_aes_key(encrypt_key)), modes.CBC(raw[:_IV_SIZE])
    ).decryptor()
    padded = decryptor.update(raw[_IV_SIZE:]) + decryptor.finalize()
    # CBC has no integrity check: bad PKCS#7 padding is how a wrong key usually shows.
    unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptError(
            "bad padding after decryption (wrong encrypt key?)"
        ) from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptError(
            "decrypted payload is not UTF-8 (wrong encrypt key?)"
        ) from None


def encrypt(plaintext: str, encrypt_key: str, iv: bytes | None = None) -> str:
    """Inverse of `decrypt`, as Feishu does it; for tests, benchmarks and fixtures."""
    if iv is None:
        iv = os.urandom(_IV_SIZE)
    if len(iv) != _IV_SIZE:
        raise ValueError("iv must be 16 bytes")
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(_aes_key(encrypt_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(
        iv + encryptor.update(padded) + encryptor.finalize()
    ).decode("ascii")


def _text(value: str) -> bytes:
    # surrogatepass: header strings decoded oddly upstream must fail the
    # comparison, not crash the request with UnicodeEncodeError.
    return value.encode("utf-8", "surrogatepass")


def _header(value):
    # Some servers hand header values over as latin-1 bytes; normalise to str.
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else value


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """hex SHA-256 of timestamp + nonce + key + raw body, as Feishu computes it."""
    return hashlib.sha256(
        _text(timestamp + nonce + encrypt_key) + bytes(body)
    ).hexdigest()


def verify_signature(
    headers_timestamp, headers_nonce, headers_signature, encrypt_key, body: bytes
) -> None:
    """Raise `SignatureError` unless ``X-Lark-Signature`` matches the raw body."""
    headers_timestamp, headers_nonce, headers_signature = map(
        _header, (headers_timestamp, headers_nonce, headers_signature)
    )
    for name, value in (
        (HEADER_TIMESTAMP, headers_timestamp),
        (HEADER_NONCE, headers_nonce),
        (HEADER_SIGNATURE, headers_signature),
    ):
        if not value:
            raise SignatureError(f"missing {name} header")
    expected = signature(headers_timestamp, headers_nonce, encrypt_key, body)
    # Bytes, not str: compare_digest rejects non-ASCII str with TypeError.
    if not hmac.compare_digest(
        _text(expected), _text(headers_signature.strip().lower())
    ):
        raise SignatureError(f"{HEADER_SIGNATURE} does not match the request body")


def check_timestamp(timestamp, max_age, now) -> None:
    """Raise `SignatureError` unless the signed X-Lark-Request-Timestamp (epoch seconds) is within
    `max_age` seconds of `now`, either way: a captured request must not work forever."""
    value = _header(timestamp).strip()
    if not value.isdigit() or len(value) > 12:
        raise SignatureError(f"{HEADER_TIMESTAMP} is not a time in epoch seconds: {value[:20]!r}")
    off = now - int(value)
    if abs(off) > max_age:
        when = f"{off:.0f} s old" if off > 0 else f"{-off:.0f} s ahead of this host's clock"
        raise SignatureError(f"{HEADER_TIMESTAMP} is {when}, outside the replay window of {max_age:g} s"
                             " (feishu_replay_window): refused as a replay")


def event_token(event: dict) -> str | None:
    """The verification token an event carries, or None.

    v2 events (``schema: "2.0"``) carry it at ``header.token``; v1 events and
    ``url_verification`` at the top-level ``token``.
    """
    header = event.get("header")
    if isinstance(header, dict) and "token" in header:
        token = header["token"]
    else:
        token = event.get("token")
    return token if isinstance(token, str) else None


def verify_token(event: dict, expected: str) -> None:
    """Raise `SignatureError` unless the event carries the configured verification token."""
    token = event_token(event)
    if token is None:
        raise SignatureError("event carries no verification token")
    if not hmac.compare_digest(_text(token), _text(expected)):
        raise SignatureError("verification token does not match")


def _reject_constant(name):
    # NaN/Infinity are not JSON and PostgreSQL jsonb refuses them downstream.
    raise ValueError(f"non-standard JSON constant {name}")


def _json_object(data: bytes | str, what: str, error=InvalidMessage) -> dict:
    if isinstance(data, bytes):
        try:
            # Decode ourselves: json.loads(bytes) would also accept UTF-16/32.
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{what} is not valid UTF-8") from None
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        detail = (
            exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        )
        raise error(f"{what} is not valid JSON: {detail}") from None
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _is_url_verification(event: dict) -> bool:
    return event.get("type") == "url_verification"


def open_envelope(
    body: bytes,
    *,
    encrypt_key: str | None = None,
    verification_token: str | None = None,
    timestamp: str | None = None,
    nonce: str | None = None,
    signature: str | None = None,
    max_age: float | None = None,
    now: float | None = None,
) -> dict:
    """Authenticate and unwrap one Feishu request body; return the event dict.

    Raises `SignatureError` (signature or token mismatch, missing headers, a
    signed timestamp more than `max_age` seconds from `now`) or
    `InvalidMessage`/`DecryptError` (unreadable body). Plain, unsigned bodies
    are accepted even with a key configured, because other senders (the
    OpenClaw hook) post plain JSON here; the verification token, when
    configured, still applies to them.
    """
    body = bytes(body)
    signed = bool(signature)
    if encrypt_key and signed:
        # Before parsing: the signature covers the raw bytes, and a forged
        # body should not reach the JSON parser or the decryptor.
        verify_signature(timestamp, nonce, signature, encrypt_key, body)
        if max_age is not None:
            check_timestamp(timestamp, max_age, time.time() if now is None else now)

    event = _json_object(body, "request body")
    if "encrypt" in event:
        if not encrypt_key:
            raise InvalidMessage("encrypted event but no encrypt key is configured")
        # Undecodable plaintext after a successful unpad almost always means a
        # wrong key (1/256 chance the padding looks valid), hence DecryptError.
        event = _json_object(
            decrypt(event["encrypt"], encrypt_key), "decrypted event", DecryptError
        )
        # Feishu signs every encrypted event callback. The exception is
        # url_verification: the official lark-oapi SDK skips the signature for
        # it, so we do not require one (the token check below still applies
        # and the challenge echo stores nothing).
        if not signed and not _is_url_verification(event):
            raise SignatureError(
                f"missing {HEADER_SIGNATURE} header: Feishu signs every encrypted event when an encrypt key is set"
            )

    if verification_token:
        verify_token(event, verification_token)
    return event
