"""The request target, read once: the normalised path every decision uses, and the query.

App Engine's front end normalised the path before choosing a handler, and the
app saw the same path in ``PATH_INFO``. kiln does the same, in this one
function, so the handler match, the ``login`` and ``secure`` checks, static
files, kiln's own paths (``/_ah/login``, ``/_ah/mail/``) and the app all see one
path and an attacker cannot make them disagree:

1. Percent-escapes are decoded once (``%2e%2e`` is ``..``, ``%2F`` is ``/``, as
   in the app's ``PATH_INFO``, which PEP 3333 defines decoded).
2. Empty segments are merged (``//admin`` is ``/admin``, as nginx's
   ``merge_slashes``), and ``.`` and ``..`` segments are resolved as RFC 3986
   5.2.4 (what a browser does before it sends a URL); ``..`` never climbs above
   ``/``.
3. What no browser sends is refused with 400 instead of guessed at: a target
   that is not ``/…`` or an absolute ``http(s)://`` URL, a backslash (read as
   ``/`` by browsers and by some servers, so its meaning is ambiguous), NUL and
   other control characters (raw or encoded), and a fragment.

Everything else is data: case is kept (handlers' patterns are case-sensitive,
as on App Engine), and ``;`` is an ordinary character (Python apps do not strip
path parameters, so ``/admin;x/panel`` is neither ``/admin/panel`` to the
router nor to the app).

The app receives the normalised path re-encoded (:attr:`Target.wire_path`), so
the runtime's single decoding gives back exactly the path the router matched.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import urllib.parse

# RFC 3986 pchar minus "%", plus "/": what stays literal when the normalised path is re-encoded.
_SAFE = "/!$&'()*+,;=:@-._~"
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class BadPathError(ValueError):
    """The request target cannot be served; the message is safe to show (HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A request target, normalised.

    Attributes:
        path: The decoded, normalised path (what handlers match and the app's ``PATH_INFO``).
        wire_path: ``path`` percent-encoded again, for the runtime to decode once.
        query: The query string as the client sent it (``QUERY_STRING`` is not decoded).
        authority: ``host[:port]`` of an absolute-form target (``GET http://host/path``), else ``None``.
    """

    path: str
    wire_path: str
    query: str
    authority: str | None = None


@functools.lru_cache(maxsize=256)
def parse_target(raw: str) -> Target:
    """The :class:`Target` for a request line's target, or :class:`BadPathError`.

    The answer depends on ``raw`` alone and is immutable, so the latest targets' answers are kept (a site's
    busy paths are parsed once, not on every request); a refused target is checked again each time.
    """
    if "#" in raw:
        raise BadPathError("the request target has a fragment")
    if not raw.isascii() or not raw.isprintable():
        raise BadPathError("the request target has characters that must be percent-encoded")
    authority = None
    if not raw.startswith("/"):
        parts = urllib.parse.urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
            raise BadPathError(f"the request target {raw[:80]!r} is neither a path nor an http(s) URL")
        authority = parts.netloc
        raw = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not raw.startswith("/"):
            raise BadPathError(f"the request target {raw[:80]!r} is neither a path nor an http(s) URL")
    encoded, _, query = raw.partition("?")
    decoded = urllib.parse.unquote_to_bytes(encoded)
    if _CONTROL.search(decoded):
        raise BadPathError("the request path has a control character")
    if b"\\" in decoded:
        raise BadPathError("the request path has a backslash")
    segments: list[bytes] = []
    parts_ = decoded.split(b"/")[1:]
    for index, segment in enumerate(parts_):
        last = index == len(parts_) - 1
        if segment == b"..":
            if segments:
                segments.pop()
            if last:
                segments.append(b"")  # "/a/b/.." is "/a/", as RFC 3986 keeps the trailing slash
        elif segment == b".":
            if last:
                segments.append(b"")
        elif segment or last:
            segments.append(segment)
    normalised = b"/" + b"/".join(segments)
    # Decoded as the runtime decodes the path it receives (UTF-8, undecodable bytes replaced), so both agree.
    return Target(path=normalised.decode("utf-8", "replace"), wire_path=urllib.parse.quote(normalised, safe=_SAFE),
                  query=query, authority=authority)
