"""Which of a client's request headers reach the app.

The app reads headers as CGI variables: ``X-AppEngine-Cron`` becomes
``HTTP_X_APPENGINE_CRON``, and so would ``X_AppEngine_Cron`` or
``x-appengine_cron``, because ``-`` and ``_`` become the same character. So
the rule is decided on that CGI form, never on the name as written:

- A name that is not letters, digits and ``-`` is dropped. This removes every
  underscore variant, so two headers can never become one variable and a
  client cannot write a trusted header's variable with another spelling
  (nginx's default ``underscores_in_headers off`` and Apache 2.4's CGI rule
  do the same).
- A name whose CGI form is one of App Engine's or kiln's own (``X-AppEngine-*``,
  ``X-Kiln-*``) is dropped, whatever its case: only the router sets those
  (request log id, location, cron, inbound app id), after this filter.
- Hop-by-hop headers, ``Host`` and ``Content-Length`` (the router sets both
  itself), ``Accept-Encoding`` (the router compresses) and ``Proxy`` (which an
  app's HTTP library would read as its ``HTTP_PROXY`` setting: "httpoxy") are
  dropped, as are forwarding headers the router has already consumed.

The runtime applies the same name rule when it builds the environ
(:mod:`runtime.wsgi`), so it holds end to end.

Values are bytes (:mod:`kiln_platform.httpfields`): the router reads them from
the request's raw header lines (:func:`received`) as ISO-8859-1 text, so every
byte a client may send (aiohttp refuses controls with 400) reaches the app as
sent, and nothing a client sends can fail to fit the envelope.

Fields that hold one value (:data:`SINGLE`) are refused with 400 when repeated
(:func:`repeated_single`): a second ``Authorization`` or ``Origin`` means the
router, a proxy in front of it and the app could each believe another one.
aiohttp's parser refuses some of these first (a repeated ``Content-Type`` or
``User-Agent`` in one spelling), and a repeated ``Content-Length`` (even with
equal values), a list in it, and ``Content-Length`` with ``Transfer-Encoding``;
:mod:`router.hosts` refuses a repeated ``Host``. ``Set-Cookie`` is a response
header and is dropped from requests. A repeated ``Cookie`` is joined with ``; ``
by the runtime (:mod:`runtime.wsgi`), every other repeated header with ``,``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable

# App Engine removes these from requests before they reach the app.
REQUEST_DROP = frozenset({"accept-encoding", "connection", "keep-alive", "proxy-authorization", "te",
                          "trailer", "transfer-encoding", "upgrade", "host", "content-length", "proxy",
                          "set-cookie"})
# Fields with one value (RFC 9110: not lists), compared in CGI form; Host and Content-Length are checked elsewhere.
SINGLE = frozenset({"authorization", "content-type", "content-range", "content-location", "content-md5", "origin",
                    "referer", "user-agent", "range", "if-range", "if-modified-since", "if-unmodified-since",
                    "max-forwards", "from"})
# Only the router writes headers under these prefixes (compared in CGI form: "_" read as "-", case folded).
PROTECTED_PREFIXES = ("x-appengine-", "x-kiln-")
NAME = re.compile(r"[A-Za-z0-9-]+")


@functools.lru_cache(maxsize=1024)  # clients send the same few names on every request
def cgi_form(name: str) -> str:
    """``name`` as the app tells it apart: ``_`` read as ``-``, ASCII case folded."""
    return name.replace("_", "-").lower()


@functools.lru_cache(maxsize=1024)
def _forwarded_form(name: str) -> str | None:
    """The CGI form of a client's header name that may reach the app (before ``consumed``), else ``None``."""
    canonical = cgi_form(name)
    if not NAME.fullmatch(name) or canonical in REQUEST_DROP or canonical.startswith(PROTECTED_PREFIXES):
        return None
    return canonical


def from_client(headers: Iterable[tuple[str, str]], *, consumed: Collection[str] = ()) -> list[tuple[str, str]]:
    """The client's headers that may reach the app (see module docstring).

    Args:
        headers: The request's headers, in order.
        consumed: Lower-case names the router has already acted on (a trusted proxy's ``X-Forwarded-*``).
    """
    kept = []
    for name, value in headers:
        canonical = _forwarded_form(name)
        if canonical is None or canonical in consumed:
            continue
        kept.append((name, value))
    return kept


def received(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """A request's header lines (aiohttp's ``raw_headers``) as ISO-8859-1 text: every byte kept, in order."""
    # httpfields.text, written in place: a function call per name and value was half of this list's cost.
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw_headers]


def repeated_single(headers: Iterable[tuple[str, str]]) -> str | None:
    """The name of a one-value field (:data:`SINGLE`) the request has more than once, or ``None``."""
    seen: set[str] = set()
    for name, _ in headers:
        canonical = cgi_form(name)
        if canonical in SINGLE:
            if canonical in seen:
                return name
            seen.add(canonical)
    return None
