"""Page tokens: where a query's next page starts, signed so the browser can carry it but never change it.

A "next page" link holds the rest of a query (its position, what is left of its LIMIT and OFFSET) in the URL. The
browser is not trusted with it: a token is its payload and a MAC (kiln_platform/signing.py, purpose ``console-page``) over that payload and the
context it belongs to (the namespace and the query text the page shows), with a key this console process drew at start. A
changed, forged or foreign token, or one moved to another query, is refused with a message, and so is a token of
an earlier console process (its key is gone): the user runs the query again from its first page.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from kiln_platform import signing
from kiln.errors import BadRequestError

KEY_BYTES = 32
MAX_TOKEN = 8_000  # characters: a URL aiohttp reads holds at most 8190
PURPOSE = "console-page"


def _text(data: bytes) -> str:
    """``data`` as a signed field can hold it (URL-safe base64: no newline)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


class PageTokens:
    """Signs and opens page tokens (``PAYLOAD.MAC``) with one key (a console process's)."""

    def __init__(self, *, key: str | None = None) -> None:
        self._key = key if key is not None else secrets.token_hex(KEY_BYTES)

    def sign(self, context: str, payload: bytes) -> str:
        """A token carrying ``payload`` for ``context`` only (URL-safe text)."""
        text = _text(payload)
        return text + "." + signing.sign(self._key, PURPOSE, _text(context.encode("utf-8", "surrogatepass")), text)

    def open(self, context: str, token: str) -> bytes:
        """The payload of a token :meth:`sign` made for ``context``.

        Raises:
            BadRequestError: ``token`` was not made by this process for ``context``, or was changed.
        """
        refused = BadRequestError("cursor: not a page of this query (it was changed, or the console restarted); "
                                  "run the query again from its first page")
        text, dot, mac = token.rpartition(".")
        if len(token) > MAX_TOKEN or not dot or not signing.verify(
                self._key, PURPOSE, mac, _text(context.encode("utf-8", "surrogatepass")), text):
            raise refused
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise refused from None
