"""The console's guards, each in one place: the Host check, security headers, and CSRF tokens.

* **Host**: only the console's own names are answered (others get 421), so a page on a hostile domain that
  rebinds its DNS to 127.0.0.1 cannot read the console. (In a cluster: the picker's host and the apps' hosts,
  :meth:`console.signin.SignIn.host_ok`; who may see what is :mod:`console.signin`'s, after these guards.)
* **Headers**: every response carries a strict Content-Security-Policy (scripts, styles and images from the
  console itself only, no inline script, no framing, forms posting only to it) and ``nosniff``.
* **CSRF**: a browser session is a random id in an HttpOnly, SameSite=Strict cookie (Secure over https); the
  server keeps one random token per session. Every request other than GET/HEAD must carry that token (the
  ``X-CSRF-Token`` header htmx sends, or the ``csrf_token`` form field of a plain form) and, when the browser
  says where it comes from, an ``Origin`` of the console itself. The token is not derived from the cookie, so a cookie planted by another
  site on the same host (cookies ignore ports) gains nothing.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

COOKIE = "kiln_console_session"
HEADER = "X-CSRF-Token"
FORM_FIELD = "csrf_token"
MAX_SESSIONS = 10_000  # the oldest sessions are forgotten past this (their next action asks for a reload)
SAFE_METHODS = frozenset({"GET", "HEAD"})

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CsrfRefusedError(Exception):
    """A state-changing request without this session's token (or from another origin)."""


class Sessions:
    """Browser sessions and their CSRF tokens, in memory (a console restart asks for a reload)."""

    def __init__(self, *, limit: int = MAX_SESSIONS) -> None:
        self._tokens: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._limit = limit

    def token(self, session: str | None) -> tuple[str, str | None]:
        """The CSRF token of ``session``, and the new session id to set when it had none (else None)."""
        if session is not None and (found := self._tokens.get(session)) is not None:
            self._tokens.move_to_end(session)
            return found, None
        new, token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._tokens[new] = token
        while len(self._tokens) > self._limit:
            self._tokens.popitem(last=False)
        return token, new

    def check(self, session: str | None, presented: str | None) -> None:
        """Raise :class:`CsrfRefusedError` unless ``presented`` is ``session``'s token."""
        expected = self._tokens.get(session) if session is not None else None
        if expected is None or presented is None or not secrets.compare_digest(expected, presented):
            raise CsrfRefusedError("this action needs the page's security token: reload the page and try again")


def allowed_hosts(port: int, extra: Iterable[str], listen_host: str) -> frozenset[str]:
    """Host header values the console answers: its listen address, localhost and 127.0.0.1 at its port."""
    names = {"localhost", "127.0.0.1", "[::1]", listen_host if ":" not in listen_host else f"[{listen_host}]"}
    return frozenset({f"{n}:{port}" for n in names} | {h.strip().lower() for h in extra if h.strip()})


def middleware(sessions: Sessions, host_ok: Callable[[str], bool],
               refused: Callable[[web.Request, str, int], web.StreamResponse], *,
               scheme: str | None = None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The aiohttp middleware that applies every guard above to every request.

    ``host_ok`` says which Host values are answered; ``scheme`` is the one browsers use when it is not the
    request's (a cluster's console behind a proxy that ends TLS), for the ``Origin`` check.
    """

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_ok(request.host.lower()):
            response: web.StreamResponse = web.Response(status=421, text="421: this console does not serve this host\n")
        else:
            session = request.cookies.get(COOKIE)
            token, new_session = sessions.token(session)
            request["csrf_token"] = token
            try:
                if request.method not in SAFE_METHODS:
                    await _check_action(request, sessions, session, scheme or request.scheme)
                response = await handler(request)
            except CsrfRefusedError as exc:
                response = refused(request, str(exc), 403)
            except web.HTTPException as exc:
                if exc.status < 400:  # a redirect: sent as aiohttp raised it, with the same headers
                    exc.headers.update(HEADERS)
                    raise
                response = refused(request, f"{exc.status}: {exc.reason}", exc.status)
            if new_session is not None:
                response.set_cookie(COOKIE, new_session, httponly=True, samesite="Strict", path="/",
                                    secure=(scheme or request.scheme) == "https")
        response.headers.update(HEADERS)
        return response

    return guard


async def _check_action(request: web.Request, sessions: Sessions, session: str | None, scheme: str) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{scheme}://{request.host}":
        raise CsrfRefusedError(f"an action from another site ({origin}) is refused")
    presented = request.headers.get(HEADER)
    if presented is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.post()).get(FORM_FIELD)
        presented = value if isinstance(value, str) else None
    sessions.check(session, presented)
