"""Signed-in users: the session cookie and the development sign-in page.

A session is a cookie ``kiln_login`` holding the user's email, admin flag and
id, and an HMAC-SHA256 over them with the router's ``session_secret``; a
cookie whose signature does not match is ignored, so a client cannot make
itself someone else or an admin. Under ``kiln dev`` ``/_ah/login`` is a page
like dev_appserver's: any email, with an "admin" box. ``/_ah/logout`` ends
the session. ``continue`` targets must stay on the same site (no open redirects).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import time
import urllib.parse

from aiohttp import web

from kiln.pb.runtime.v1 import http_pb2

COOKIE = "kiln_login"
LOGIN_PATH = "/_ah/login"
LOGOUT_PATH = "/_ah/logout"
SESSION_SECONDS = 14 * 24 * 3600

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


class Sessions:
    """Makes and checks session cookies."""

    def __init__(self, secret: str, *, auth_domain: str) -> None:
        self._key = secret.encode()
        self.auth_domain = auth_domain

    def _mac(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def make(self, email: str, admin: bool) -> str:
        payload = json.dumps({"e": email, "a": admin, "u": user_id_for(email),
                              "x": int(time.time()) + SESSION_SECONDS}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._mac(payload)

    def read(self, cookie: str | None) -> http_pb2.SignedInUser | None:
        """The signed-in user, or ``None`` for no, a forged or an expired cookie."""
        if not cookie or "." not in cookie:
            return None
        encoded, _, mac = cookie.rpartition(".")
        try:
            payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            data = json.loads(payload)
            if int(data["x"]) < time.time():
                return None
            return http_pb2.SignedInUser(email=str(data["e"]), user_id=str(data["u"]),
                                         auth_domain=self.auth_domain, is_admin=bool(data["a"]))
        except (ValueError, KeyError, TypeError):
            return None


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
    return path + (f"?{parts.query}" if parts.query else "")


async def login(request: web.Request, sessions: Sessions, *, dev: bool) -> web.Response:
    """``/_ah/login``: the development sign-in page (GET) and its form (POST)."""
    if not dev:
        return web.Response(status=501, text="Sign-in with an identity provider is not configured.\n",
                            content_type="text/plain")
    destination = safe_continue(request, request.query.get("continue"))
    if request.method == "POST":
        form = await request.post()
        email = str(form.get("email", "")).strip()
        if not email or "@" not in email or any(c in email for c in "\r\n;, "):
            return web.Response(status=400, text="A valid email address is required.\n", content_type="text/plain")
        response = redirect(destination)
        response.set_cookie(COOKIE, sessions.make(email, form.get("admin") == "True"), max_age=SESSION_SECONDS,
                            path="/", httponly=True, samesite="Lax", secure=request.scheme == "https")
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
