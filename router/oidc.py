"""Production sign-in for apps: the router's routes around the shared OpenID Connect client.

``/_ah/login?continue=URL`` sends the browser to the provider (:class:`kiln_platform.oidc.OidcClient`: signed
``state`` naming the app, nonce, PKCE) with the nonce kept in a short-lived cookie, so a callback can only complete
the sign-in it belongs to, on the app it was started for. ``/_ah/login/callback`` has the client check the state
and the cookie, redeem the code and verify the ID token, then starts the session for that app
(:mod:`router.users`). Whatever goes wrong is a 400 naming it (502 when the provider cannot be reached to start).
"""

from __future__ import annotations

import logging

from aiohttp import web

from kiln_platform.oidc import OidcClient, SignInError
from router import cookies, users

__all__ = ["CALLBACK_PATH", "NONCE_COOKIE", "OidcClient", "SignInError", "callback", "login"]

log = logging.getLogger(__name__)

CALLBACK_PATH = "/_ah/login/callback"
NONCE_COOKIE = cookies.NONCE
_NONCE_SECONDS = 600


def _redirect_uri(request: web.Request, scheme: str) -> str:
    return f"{scheme}://{request.host}{CALLBACK_PATH}"


async def login(request: web.Request, client: OidcClient, scheme: str, app: str) -> web.Response:
    """``/_ah/login`` in production, signing in to ``app``."""
    try:
        url, nonce = await client.authorization_url(
            redirect_uri=_redirect_uri(request, scheme), audience=app,
            continue_to=users.safe_continue(request, request.query.get("continue")))
    except SignInError as exc:
        log.warning("sign-in could not start: %s", exc)
        return web.Response(status=502, text=f"Sign-in is unavailable: {exc}\n", content_type="text/plain")
    response = users.redirect(url)
    response.set_cookie(NONCE_COOKIE, nonce, max_age=_NONCE_SECONDS, path=CALLBACK_PATH, httponly=True,
                        samesite="Lax", secure=scheme == "https")
    return response


async def callback(request: web.Request, client: OidcClient, sessions: users.Sessions, scheme: str,
                   app: str) -> web.Response:
    """``/_ah/login/callback``: finish the sign-in and start the session for ``app``."""
    try:
        email, destination = await client.finish(
            query=request.query, nonces=cookies.values(request.headers.getall("Cookie", []), NONCE_COOKIE),
            redirect_uri=_redirect_uri(request, scheme), audience=app)
    except SignInError as exc:
        log.info("sign-in failed: %s", exc)
        return web.Response(status=400, text=f"Sign-in failed: {exc}\n", content_type="text/plain")
    response = users.redirect(destination)
    sessions.set_cookie(response, sessions.start(app, email, False), secure=scheme == "https")
    response.del_cookie(NONCE_COOKIE, path=CALLBACK_PATH)
    return response
