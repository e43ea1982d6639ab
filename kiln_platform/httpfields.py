"""What an HTTP header line may hold on its way between client, router and app: one rule for every hop.

Header values are bytes. A client may send any byte but controls (obs-text,
RFC 9110 5.5); the router carries them to the runtime as bytes
(``kiln.pb.runtime.v1.Header.value``) and the app reads them as ISO-8859-1
text, as PEP 3333 defines the environ (byte 0xFF is ``"\\xff"``, UTF-8 ``é``
is ``"Ã©"``), so nothing is lost or guessed on the way in.

On the way out the app hands the runtime ISO-8859-1 text (PEP 3333 again), the
runtime encodes it to bytes and the router writes them. :func:`response_problem`
says what cannot be sent, and both the runtime (so the app's own request log
says why its response became a 500) and the router (which trusts no runtime)
apply it:

- the name must be an HTTP token (RFC 9110 5.1);
- the value must hold no control character (CR and LF would split the
  response, NUL truncates it in some clients; HTAB is allowed);
- bytes above 0x7F must form UTF-8 text without C1 controls. The router's HTTP
  library writes header text as UTF-8, so these are the only non-ASCII bytes it
  can send exactly as the app wrote them; others are refused, never altered.

Like gunicorn and waitress, a value that is not ISO-8859-1 text at all (``"€"``
in a WSGI header) is refused by the runtime.
"""

from __future__ import annotations

import re

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_C1_OR_SEPARATOR = re.compile("[\x80-\x9f\u2028\u2029]")


def text(value: bytes) -> str:
    """A header value as the app reads it: each byte one character (ISO-8859-1, PEP 3333)."""
    return value.decode("latin-1")


def wire(value: str) -> bytes:
    """The bytes of a header value held as ISO-8859-1 text (the inverse of :func:`text`)."""
    return value.encode("latin-1")


def response_problem(name: str, value: bytes) -> str | None:
    """Why the response header ``name: value`` cannot be sent, or ``None`` when it can (see module docstring)."""
    if not name.isascii() or not TOKEN.fullmatch(name.encode()):
        return f"the header name {name[:80]!r} is not an HTTP token"
    if _CONTROL.search(value):
        return f"the value of {name!r} has a control character (CR, LF, NUL...)"
    if not value.isascii():
        try:
            decoded = value.decode("utf-8")
        except UnicodeDecodeError:
            return f"the value of {name!r} has bytes above 0x7F that are not UTF-8 text"
        if _C1_OR_SEPARATOR.search(decoded):
            return f"the value of {name!r} has a control character (C1 or a line separator)"
    return None
