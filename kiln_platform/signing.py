"""Every signature kiln makes and checks: one HMAC, one comparison, one place.

kiln's tokens (app identity, deploy tokens, URL Fetch's inbound-app signature, the router's proof of the
signed-in user, platform callers' request signatures, sign-in sessions, OpenID Connect state, apps' NATS
passwords) differ in what they carry, not in how they are signed. Each format module decides its fields;
this module turns (secret, purpose, fields) into a MAC and checks one:

- a MAC is HMAC-SHA256 (hex) with the secret as key, over ``PURPOSE:`` followed by the fields joined by
  newlines, so a MAC made for one purpose never verifies for another (key separation by domain);
- fields may not contain a newline, so no two field lists give the same message;
- :func:`verify` is constant-time, and false (never an exception) for any input: non-ASCII text, wrong
  length, an empty secret, a field with a newline. Whatever a client sends is compared, never trusted.

Small objects (sign-in sessions, OpenID Connect state) are sealed as ``BASE64URL(JSON).MAC``
(:func:`seal` / :func:`unseal`). Time-limited signatures carry their Unix time in the token (``STAMP.MAC``, :func:`sign_stamped` /
:func:`verify_stamped`); what the stamp means (issued at, or expires at) is the caller's choice.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
from typing import Any

_HEX_MAC = re.compile(r"[0-9a-f]{64}", re.ASCII)
_STAMP = re.compile(r"[0-9]{1,12}", re.ASCII)


@functools.lru_cache(maxsize=8192)
def sign(secret: str, purpose: str, *fields: str) -> str:
    """The MAC of ``fields`` for ``purpose`` under ``secret`` (cached: services check the same tokens often).

    Raises:
        ValueError: the secret is empty, or a field (or the purpose) contains a newline.
    """
    if not secret:
        raise ValueError("cannot sign with an empty secret")
    if "\n" in purpose or ":" in purpose or any("\n" in f for f in fields):
        raise ValueError("signed fields may not contain a newline")
    message = purpose + ":" + "\n".join(fields)
    # surrogatepass: text decoded with surrogateescape (paths, headers) is signed, never an error.
    return hmac.new(secret.encode("utf-8", "surrogatepass"), message.encode("utf-8", "surrogatepass"),
                    hashlib.sha256).hexdigest()


def verify(secret: str, purpose: str, mac: str, *fields: str) -> bool:
    """True if ``mac`` is :func:`sign`'s for these fields; false for anything malformed."""
    if not secret or not _HEX_MAC.fullmatch(mac) or "\n" in purpose or any("\n" in f for f in fields):
        return False
    return hmac.compare_digest(mac.encode("ascii"), sign(secret, purpose, *fields).encode("ascii"))


def sign_stamped(secret: str, purpose: str, stamp: int, *fields: str) -> str:
    """``STAMP.MAC``: the MAC covers the stamp (a Unix time) and the fields."""
    return f"{stamp}.{sign(secret, purpose, str(stamp), *fields)}"


def verify_stamped(secret: str, purpose: str, value: str, *fields: str) -> int | None:
    """The stamp of a valid ``STAMP.MAC`` for these fields, or None (malformed, or not signed with ``secret``)."""
    stamp, sep, mac = value.partition(".")
    if not sep or not _STAMP.fullmatch(stamp):
        return None
    return int(stamp) if verify(secret, purpose, mac, stamp, *fields) else None


def derive(secret: str, purpose: str, value: str) -> str:
    """A secret derived from ``secret`` for one ``value`` (e.g. an app's NATS password): the MAC itself."""
    return sign(secret, purpose, value)


_SEALED = re.compile(r"[A-Za-z0-9_-]{1,8192}\.[0-9a-f]{64}", re.ASCII)


def seal(secret: str, purpose: str, payload: dict[str, Any]) -> str:
    """``BASE64URL(JSON).MAC``: a small signed (not encrypted) object, e.g. a cookie or an OAuth ``state``."""
    encoded = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
    return f"{encoded}.{sign(secret, purpose, encoded)}"


def unseal(secret: str, purpose: str, value: str) -> dict[str, Any] | None:
    """The object :func:`seal` signed for ``purpose``, or None for anything else (any input is safe)."""
    if not _SEALED.fullmatch(value):
        return None
    encoded, _, mac = value.partition(".")
    if not verify(secret, purpose, mac, encoded):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, binascii.Error):
        return None
    return data if isinstance(data, dict) else None


def same_secret(given: str, expected: str) -> bool:
    """True if ``given`` (from a client) equals ``expected`` (a secret or nonce), in constant time, for any input."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
