"""Signed-in users: the session cookie and the development sign-in page.

A session is the cookie ``kiln_login``: an explicit payload (``app``, ``email``,
``admin``, ``issued``, ``expires``) and an HMAC-SHA256 over it with the
router's ``session_secret``. A session is only good for the app it was started
on: on any host of that app (``APP.DOMAIN``, ``VERSION-dot-APP.DOMAIN``, its
custom domains share the app's sign-in, as on App Engine), never on another
app, and its ``admin`` flag makes the user an administrator of that app only.
The cookie itself is host-only (no ``Domain``), so browsers send it back only to
the host that set it, and the router removes it from requests before they reach
the app (:mod:`router.cookies`). A cookie that is malformed, forged, for
another app or expired is read as "not signed in", whatever bytes it holds.

Lifetime: see :data:`IDLE_SECONDS`, :data:`MAX_SECONDS` and
:data:`RENEW_AFTER_SECONDS`. The router renews a session it reads, with a fresh
``Set-Cookie`` on whatever response the request gets (:func:`renew_cookie`).

Under ``kiln dev`` ``/_ah/login`` is a page like dev_appserver's: any email,
with an "admin" box. ``/_ah/logout`` ends the session. ``continue`` targets must
stay on the same site (no open redirects).
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import time
import urllib.parse
from collections.abc import Callable

from aiohttp import web

from kiln.pb.runtime.v1 import http_pb2
from kiln_platform import signing
from router import cookies, responses

COOKIE = cookies.SESSION
LOGIN_PATH = "/_ah/login"
LOGOUT_PATH = "/_ah/logout"

IDLE_SECONDS = 2 * 3600
"""A session unused for two hours ends. Long enough that a visitor who steps away for a meeting or lunch is
still signed in; short enough that a cookie copied from an unattended or shared computer, a proxy log or a
backup stops working the same afternoon."""

MAX_SECONDS = 24 * 3600
"""No session lives longer than a day after its sign-in, however busy: App Engine let an app's administrators
choose one day, one week or two weeks for its sign-in cookie, and a day (the shortest) bounds what a stolen
cookie that is kept in use is worth. A visitor signs in again once a day."""

RENEW_AFTER_SECONDS = 5 * 60
"""A session is renewed (a new cookie with a later ``expires``) when that moves its end by at least five
minutes, not on every request: each renewal is a ``Set-Cookie`` that makes the response uncacheable by
shared caches, and five minutes out of two hours costs an active visitor nothing."""

CLOCK_SKEW_SECONDS = 60
"""Routers share the secret; a session issued by one whose clock runs ahead is still good on the others."""

_PURPOSE = "kiln-session-v2"  # the same secret signs other tokens (OpenID Connect state): purposes keep them apart

_PAGE = """<!doctype html>
<html><head><title>Sign in</title></head><body>
<h1>Sign in (development)</h1>
<p>Not a real sign-in: under kiln dev any email address is accepted.</p>
<form method="post" action="{action}">
  <p><label>Email <input name="email" type="email" value="{email}" required></label></p>
  <p><label><input name="admin" type="checkbox" value="True"> Sign in as administrator</label></p>
  <p><button type="submit">Sign in</button></p>
</form>
</body></html>
"""


def user_id_for(email: str) -> str:
    """A stable numeric user id for an email (App Engine's ids are 21-digit numbers)."""
    return str(int(hashlib.sha256(email.lower().encode()).hexdigest()[:17], 16)).zfill(21)[:21]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Session:
    """What a session cookie says (times are whole seconds since the epoch)."""

    app: str
    email: str
    admin: bool
    issued: int
    expires: int


class Sessions:
    """Makes, checks and renews session cookies.

    Args:
        secret: The router's ``session_secret``.
        auth_domain: ``AUTH_DOMAIN`` of signed-in users.
        clock: Seconds since the epoch (tests pass another).
    """

    def __init__(self, secret: str, *, auth_domain: str, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.auth_domain = auth_domain
        self._clock = clock

    def start(self, app: str, email: str, admin: bool) -> Session:
        """A new session for ``email`` on ``app``, starting now."""
        now = int(self._clock())
        return Session(app=app, email=email, admin=admin, issued=now, expires=now + min(IDLE_SECONDS, MAX_SECONDS))

    def encode(self, session: Session) -> str:
        """The cookie value for ``session``."""
        return signing.seal(self._secret, _PURPOSE, {"app": session.app, "email": session.email,
                                                     "admin": session.admin, "issued": session.issued,
                                                     "expires": session.expires})

    def decode(self, value: str, *, app: str) -> Session | None:
        """The session in a cookie value if it is well formed, signed by us, for ``app`` and current; else ``None``.

        Any input is safe: the format is checked (ASCII only) before anything else, and MACs are compared
        as bytes in constant time.
        """
        data = signing.unseal(self._secret, _PURPOSE, value)
        if data is None:
            return None
        session = _session_from(data)
        if session is None or session.app != app:
            return None
        now = self._clock()
        if not (session.issued - CLOCK_SKEW_SECONDS <= now < session.expires <= session.issued + MAX_SECONDS):
            return None
        return session

    def renewed(self, session: Session) -> Session | None:
        """``session`` with a later end, when renewing now moves its end by at least :data:`RENEW_AFTER_SECONDS`."""
        expires = min(int(self._clock()) + IDLE_SECONDS, session.issued + MAX_SECONDS)
        if expires - session.expires < RENEW_AFTER_SECONDS:
            return None
        return dataclasses.replace(session, expires=expires)

    def set_cookie(self, response: web.StreamResponse, session: Session, *, secure: bool) -> None:
        """Send ``session`` as the session cookie (host-only; it lasts until the session's end)."""
        max_age = max(0, session.expires - int(self._clock()))
        _set_session_cookie(response, self.encode(session), max_age, secure)

    def user(self, request: web.Request, *, app: str, secure: bool) -> http_pb2.SignedInUser | None:
        """The user signed in to ``app`` by this request's session cookie, or ``None``.

        With several ``kiln_login`` cookies the first good one for ``app`` counts. A session due for renewal
        gets its new cookie on this request's response (:func:`renew_cookie`).
        """
        for value in cookies.values(request.headers.getall("Cookie", []), COOKIE):
            session = self.decode(value, app=app)
            if session is None:
                continue
            renewed = self.renewed(session)
            if renewed is not None:
                request[_RENEWAL] = _Renewal(self.encode(renewed), max(0, renewed.expires - int(self._clock())),
                                             secure)
            return http_pb2.SignedInUser(email=session.email, user_id=user_id_for(session.email),
                                         auth_domain=self.auth_domain, is_admin=session.admin)
        return None


@dataclasses.dataclass(frozen=True)
class _Renewal:
    value: str
    max_age: int
    secure: bool


_RENEWAL = web.RequestKey("kiln_session_renewal", _Renewal)


def _session_from(data: object) -> Session | None:
    """A :class:`Session` from a decoded payload with exactly the expected fields and types."""
    if not isinstance(data, dict) or set(data) != {"app", "email", "admin", "issued", "expires"}:
        return None
    app, email, admin, issued, expires = (data[k] for k in ("app", "email", "admin", "issued", "expires"))
    if not (isinstance(app, str) and isinstance(email, str) and isinstance(admin, bool)):
        return None
    if type(issued) is not int or type(expires) is not int:
        return None
    return Session(app=app, email=email, admin=admin, issued=issued, expires=expires)


def _set_session_cookie(response: web.StreamResponse, value: str, max_age: int, secure: bool) -> None:
    # Written as a header, not with response.set_cookie: an on_response_prepare hook runs after aiohttp
    # has turned the response's cookies into headers.
    # The value is base64url and hex: nothing to quote. Host-only (no Domain): see the module docstring.
    attributes = f"Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
    response.headers.add("Set-Cookie", f"{COOKIE}={value}; {attributes}")
    responses.keep_private(response)


def renew_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """The renewed session cookie :meth:`Sessions.user` left for this request, set on its response (a plain call:
    nothing here waits, and a coroutine per request cost more than the lookup)."""
    renewal = request.get(_RENEWAL)
    if renewal is not None:
        _set_session_cookie(response, renewal.value, renewal.max_age, renewal.secure)


def safe_continue(request: web.Request, target: str | None) -> str:
    """Where to go after signing in or out: a path on this site, never another site."""
    if not target:
        return "/"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc:
        if parts.netloc.lower() != (request.host or "").lower() or parts.scheme not in ("http", "https"):
            return "/"
    path = parts.path if parts.path.startswith("/") else "/"
    if path.startswith("//") or "\\" in path:
        return "/"
    # ``continue`` arrives decoded: what is not a URL character (CR, LF, spaces, non-ASCII) is encoded again, so
    # it can never end or split the Location header it goes into.
    query = f"?{urllib.parse.quote(parts.query, safe=_URL_SAFE)}" if parts.query else ""
    return urllib.parse.quote(path, safe=_URL_SAFE) + query


_URL_SAFE = "/!$&'()*+,;=:@-._~%?"


async def login(request: web.Request, sessions: Sessions, *, app: str, dev: bool) -> web.Response:
    """``/_ah/login``: the development sign-in page (GET) and its form (POST), signing in to ``app``."""
    if not dev:
        return web.Response(status=501, text="Sign-in with an identity provider is not configured.\n",
                            content_type="text/plain")
    destination = safe_continue(request, request.query.get("continue"))
    if request.method == "POST":
        try:
            form = await request.post()
        except (UnicodeDecodeError, LookupError):  # bytes that are not the form's charset, or no such charset
            return web.Response(status=400, text="The form is not text in its charset.\n", content_type="text/plain")
        email = form.get("email", "")
        email = email.strip() if isinstance(email, str) else ""
        if not email or "@" not in email or not email.isprintable() or any(c in email for c in "\r\n;, "):
            return web.Response(status=400, text="A valid email address is required.\n", content_type="text/plain")
        response = redirect(destination)
        sessions.set_cookie(response, sessions.start(app, email, form.get("admin") == "True"),
                            secure=request.scheme == "https")
        return response
    action = LOGIN_PATH + "?" + urllib.parse.urlencode({"continue": destination})
    return web.Response(text=_PAGE.format(action=html.escape(action), email="test@example.com"),
                        content_type="text/html")


async def logout(request: web.Request) -> web.Response:
    """``/_ah/logout``: end the session and go on."""
    response = redirect(safe_continue(request, request.query.get("continue")))
    response.del_cookie(COOKIE, path="/")
    return response


def login_redirect(request: web.Request) -> web.Response:
    """Send a visitor who must sign in to the sign-in page, then back here."""
    return redirect(LOGIN_PATH + "?" + urllib.parse.urlencode({"continue": str(request.rel_url)}))


def redirect(location: str, status: int = 302) -> web.Response:
    """A redirect response."""
    return web.Response(status=status, headers={"Location": location}, text="", content_type="text/plain")
