"""Page tokens: where a query's next page starts, signed so the browser can carry it but never change it.

A "next page" link holds the rest of a query (its position, what is left of its LIMIT and OFFSET) in the URL. The
browser is not trusted with it: a token is its payload and an HMAC-SHA256 over that payload and the context it
belongs to (the namespace and the query text the page shows), with a key this console process drew at start. A
changed, forged or foreign token, or one moved to another query, is refused with a message, and so is a token of
an earlier console process (its key is gone): the user runs the query again from its first page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from kiln.errors import BadRequestError

KEY_BYTES = 32
MAX_TOKEN = 8_000  # characters: a URL aiohttp reads holds at most 8190


class PageTokens:
    """Signs and opens page tokens with one key (a console process's)."""

    def __init__(self, *, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(KEY_BYTES)

    def _mac(self, context: str, payload: bytes) -> bytes:
        framed = len(context.encode()).to_bytes(8, "big") + context.encode() + payload
        return hmac.new(self._key, framed, hashlib.sha256).digest()

    def sign(self, context: str, payload: bytes) -> str:
        """A token carrying ``payload`` for ``context`` only (URL-safe text)."""
        return base64.urlsafe_b64encode(self._mac(context, payload) + payload).decode("ascii").rstrip("=")

    def open(self, context: str, token: str) -> bytes:
        """The payload of a token :meth:`sign` made for ``context``.

        Raises:
            BadRequestError: ``token`` was not made by this process for ``context``, or was changed.
        """
        refused = BadRequestError("cursor: not a page of this query (it was changed, or the console restarted); "
                                  "run the query again from its first page")
        if len(token) > MAX_TOKEN:
            raise refused
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise refused from None
        mac, payload = raw[:hashlib.sha256().digest_size], raw[hashlib.sha256().digest_size:]
        if not hmac.compare_digest(mac, self._mac(context, payload)):
            raise refused
        return payload
