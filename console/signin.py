"""Cluster mode's sign-in: who may see which app, decided here and nowhere else.

In a cluster the console serves the app picker at ``public_url``'s host (``console.example.com``) and app APP at
``APP.console.example.com``: the app is part of the address, so every link and form of a page stays within its
app, and two tabs on two apps never mix. For every request (after :mod:`console.security`'s Host and CSRF checks):

* without a valid sign-in cookie, a page (GET) sends the browser to the OpenID Connect provider
  (:class:`kiln_platform.oidc.OidcClient`, shared with the router: signed state, nonce cookie, PKCE), and anything
  else is refused with 401 before any service is called;
* the provider sends the browser back to ``/_console/callback`` on the picker's host, which checks the sign-in and
  sets the cookie: ``BASE64URL({email, expiry}).MAC`` signed with ``session_secret`` (a forged, altered or
  expired cookie counts as none), HttpOnly, SameSite=Lax, Secure when ``public_url`` is https, for the picker's
  host and its app hosts (``Domain=``);
* on an app's host, an identity that ``admins`` does not list for that app gets 403 naming both; an
  administrator's request runs :func:`console.backend.acting_as` that app, so the services see only that app
  (through the gateway, with the console's server-side token);
* ``POST /_console/signout`` (CSRF-checked like every action) removes the cookie.

The cookie carries no server state: signing out removes it from the browser, and a copy taken before stays valid
until its expiry (``session_hours``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from console import backend, render
from console.config import ConsoleConfig
from kiln_platform import signing
from kiln_platform.auth import APP_ID_RE
from kiln_platform.oidc import OidcClient, SignInError

log = logging.getLogger(__name__)

CALLBACK_PATH = "/_console/callback"
SIGNOUT_PATH = "/_console/signout"
COOKIE = "kiln_console_signin"
NONCE_COOKIE = "kiln_console_oidc"
AUDIENCE = "console"  # what the OpenID Connect state is for (the router's name an app)
NONCE_SECONDS = 600
_PURPOSE = "console-signin"
_SAFE_METHODS = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SignIn:
    """Cluster mode's sign-in and app access (see module docstring)."""

    def __init__(self, cfg: ConsoleConfig) -> None:
        self.scheme, self.root = cfg.public_origin()
        self._domain = self.root.partition(":")[0]  # a DNS name (config checks): the cookie reaches the app hosts
        self._admins = cfg.admin_map()
        self._key = cfg.session_secret.get()
        self._seconds = int(cfg.session_hours * 3600)
        self.client = OidcClient(issuer=cfg.oidc_issuer, client_id=cfg.oidc_client_id,
                                 client_secret=cfg.oidc_client_secret.get(), state_key=self._key)
        self.redirect_uri = f"{self.scheme}://{self.root}{CALLBACK_PATH}"

    # -- addresses --------------------------------------------------------------------------------------------

    def app_of(self, host: str) -> str | None:
        """The app whose host ``host`` is (APP. + the picker's host), or None."""
        host = host.lower()
        suffix = "." + self.root
        if not host.endswith(suffix):
            return None
        label = host[:-len(suffix)]
        return label if APP_ID_RE.fullmatch(label) else None

    def host_ok(self, host: str) -> bool:
        """Whether the console answers ``host``: the picker's host or an app's."""
        return host.lower() == self.root or self.app_of(host) is not None

    def _continue(self, value: str) -> str:
        """The URL a signed-in browser goes on to: ``value`` (host and path) when it is one of ours, else the picker."""
        host, sep, path = value.partition("/")
        if sep and self.host_ok(host) and not path.startswith(("/", "\\")):
            return f"{self.scheme}://{host.lower()}/{path}"
        return f"{self.scheme}://{self.root}/"

    # -- the cookie -------------------------------------------------------------------------------------------

    def identity(self, request: web.Request) -> str | None:
        """The signed-in email of ``request``'s cookie, or None (none, forged, altered, or expired)."""
        value = request.cookies.get(COOKIE)
        data = signing.unseal(self._key, _PURPOSE, value) if value else None
        if data is None:
            return None
        email, expires = data.get("e"), data.get("x")
        if not isinstance(email, str) or type(expires) is not int or expires <= time.time():
            return None
        return email

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, *, max_age: int, path: str) -> None:
        response.set_cookie(name, value, max_age=max_age, path=path, domain=self._domain, httponly=True,
                            samesite="Lax", secure=self.scheme == "https")

    # -- the middleware ---------------------------------------------------------------------------------------

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        """The aiohttp middleware that applies sign-in and app access to every request."""

        @web.middleware
        async def signed_in(request: web.Request, handler: Handler) -> web.StreamResponse:
            request["signed_in"] = None
            if request.path == CALLBACK_PATH:
                return await self._callback(request)
            if request.path.startswith("/static/"):  # the stylesheet and htmx: public files, no data
                return await handler(request)
            if request.path == SIGNOUT_PATH:
                return self._sign_out(request)
            email = self.identity(request)
            if email is None:
                if request.method in _SAFE_METHODS and not render.is_htmx(request):
                    return await self._start(request)
                return render.problem(request, "401: sign in first (reload the page); nothing was done", 401)
            request["signed_in"] = email
            app = self.app_of(request.host)
            if app is None:
                return self._picker(request, email)
            if email.lower() not in self._admins.get(app, frozenset()):
                log.info("%s asked for app %s, which it does not administer", email, app)
                return render.problem(request, f"403: {email} does not administer app {app}. Choose one of your "
                                               f"apps at {self.scheme}://{self.root}/", 403)
            request["app_id"] = app
            with backend.acting_as(app):
                return await handler(request)

        return signed_in

    async def _start(self, request: web.Request) -> web.StreamResponse:
        try:
            url, nonce = await self.client.authorization_url(redirect_uri=self.redirect_uri, audience=AUDIENCE,
                                                             continue_to=f"{request.host.lower()}{request.path_qs}")
        except SignInError as exc:
            log.warning("sign-in could not start: %s", exc)
            return render.problem(request, f"502: sign-in is unavailable: {exc}", 502)
        response = web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
        self._set_cookie(response, NONCE_COOKIE, nonce, max_age=NONCE_SECONDS, path=CALLBACK_PATH)
        return response

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        if request.host.lower() != self.root or request.method not in _SAFE_METHODS:
            return render.problem(request, "404: the sign-in callback is on the console's own address", 404)
        nonce = request.cookies.get(NONCE_COOKIE)
        try:
            email, destination = await self.client.finish(query=request.query, nonces=[nonce] if nonce else [],
                                                          redirect_uri=self.redirect_uri, audience=AUDIENCE)
        except SignInError as exc:
            log.info("sign-in failed: %s", exc)
            return render.problem(request, f"400: sign-in failed: {exc}", 400)
        response = web.Response(status=302, headers={"Location": self._continue(destination),
                                                     "Cache-Control": "no-store"})
        session = signing.seal(self._key, _PURPOSE, {"e": email.lower(), "x": int(time.time()) + self._seconds})
        self._set_cookie(response, COOKIE, session, max_age=self._seconds, path="/")
        response.del_cookie(NONCE_COOKIE, path=CALLBACK_PATH, domain=self._domain)
        log.info("%s signed in", email)
        return response

    def _sign_out(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return render.problem(request, "405: sign out with the page's Sign out button", 405)
        response = render.page(request, "signed_out.html", root=f"{self.scheme}://{self.root}/")
        response.del_cookie(COOKIE, path="/", domain=self._domain)
        return response

    def _picker(self, request: web.Request, email: str) -> web.StreamResponse:
        if request.path != "/":
            return web.Response(status=302, headers={"Location": "/"})
        mine = sorted(app for app, emails in self._admins.items() if email.lower() in emails)
        return render.page(request, "apps.html", apps=[(app, f"{self.scheme}://{app}.{self.root}/") for app in mine])
