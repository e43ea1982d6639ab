"""Production sign-in: OpenID Connect (authorization code flow) against a configured provider.

``/_ah/login?continue=URL`` sends the browser to the provider with a signed
``state`` (the app, the continue URL, a nonce and an expiry) and a random nonce
kept in a short-lived cookie, so a callback can only complete the sign-in it
belongs to, on the app it was started for. ``/_ah/login/callback`` checks the
state and the cookie, exchanges the code at the token endpoint, verifies the ID
token (signature against the provider's JWKS, issuer, audience, expiry, nonce,
a verified email) and starts the session for that app (:mod:`router.users`).
States and nonce cookies of any other shape or content (non-ASCII included) are
refused with 400. The provider's discovery document and keys are fetched once
and cached; keys are refetched when a token names an unknown one.
"""

from __future__ import annotations

import logging
import secrets
import time
import urllib.parse
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from kiln_platform import signing
from router import cookies, users

log = logging.getLogger(__name__)

CALLBACK_PATH = "/_ah/login/callback"
NONCE_COOKIE = cookies.NONCE
STATE_SECONDS = 600
_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
_STATE_PURPOSE = "oidc-state"


class SignInError(Exception):
    """The sign-in could not complete; the message is safe to show."""


class OidcClient:
    """The router as an OpenID Connect relying party."""

    def __init__(self, *, issuer: str, client_id: str, client_secret: str, state_key: str) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self._state_key = state_key
        self._discovery: dict[str, Any] | None = None
        self._keys: dict[str, Any] = {}
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._http

    async def _config(self) -> dict[str, Any]:
        if self._discovery is None:
            url = self.issuer + "/.well-known/openid-configuration"
            try:
                async with (await self._session()).get(url) as resp:
                    resp.raise_for_status()
                    found = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise SignInError(f"the identity provider's configuration could not be read: {exc}") from None
            if found.get("issuer", "").rstrip("/") != self.issuer:
                raise SignInError("the identity provider's configuration names another issuer")
            self._discovery = found
        return self._discovery

    def _sign(self, payload: dict[str, Any]) -> str:
        return signing.seal(self._state_key, _STATE_PURPOSE, payload)

    def _unsign(self, state: str, app: str) -> dict[str, Any]:
        """The payload of a state this router signed for ``app``; any other input is a :class:`SignInError`."""
        data = signing.unseal(self._state_key, _STATE_PURPOSE, state)
        if data is None:
            raise SignInError("invalid sign-in state")
        expires = data.get("x")
        if not isinstance(data.get("n"), str) or not isinstance(data.get("c"), str):
            raise SignInError("invalid sign-in state")
        if data.get("a") != app:
            raise SignInError("this sign-in was started for another app")
        if type(expires) is not int or expires < time.time():
            raise SignInError("the sign-in took too long; start again")
        return dict(data)

    @staticmethod
    def _redirect_uri(request: web.Request, scheme: str) -> str:
        return f"{scheme}://{request.host}{CALLBACK_PATH}"

    async def start(self, request: web.Request, scheme: str, app: str) -> web.Response:
        """``/_ah/login``: send the browser to the provider to sign in to ``app``."""
        config = await self._config()
        nonce = secrets.token_urlsafe(24)
        state = self._sign({"a": app, "c": users.safe_continue(request, request.query.get("continue")), "n": nonce,
                            "x": int(time.time()) + STATE_SECONDS})
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id, "scope": "openid email",
            "redirect_uri": self._redirect_uri(request, scheme), "state": state, "nonce": nonce})
        response = users.redirect(f"{config['authorization_endpoint']}?{query}")
        response.set_cookie(NONCE_COOKIE, nonce, max_age=STATE_SECONDS, path=CALLBACK_PATH, httponly=True,
                            samesite="Lax", secure=scheme == "https")
        return response

    async def finish(self, request: web.Request, scheme: str, app: str) -> tuple[str, str]:
        """``/_ah/login/callback``: the verified email and where to continue, for a sign-in to ``app``."""
        if "error" in request.query:
            raise SignInError(f"the identity provider refused the sign-in: {request.query['error']}")
        state = self._unsign(request.query.get("state", ""), app)
        nonce = str(state["n"])
        sent = cookies.values(request.headers.getall("Cookie", []), NONCE_COOKIE)
        if not any(signing.same_secret(value, nonce) for value in sent):
            raise SignInError("this sign-in was not started in this browser")
        code = request.query.get("code")
        if not code:
            raise SignInError("the identity provider sent no code")
        config = await self._config()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self._redirect_uri(request, scheme),
                "client_id": self.client_id, "client_secret": self._client_secret}
        try:
            async with (await self._session()).post(config["token_endpoint"], data=form) as resp:
                tokens = await resp.json(content_type=None)
                if resp.status != 200:
                    raise SignInError(f"the identity provider refused the code: {tokens.get('error', resp.status)}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SignInError(f"the identity provider could not be reached: {exc}") from None
        claims = await self._verify(str(tokens.get("id_token", "")), config)
        if claims.get("nonce") != state["n"]:
            raise SignInError("the ID token's nonce does not match this sign-in")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email or claims.get("email_verified") is False:
            raise SignInError("the identity provider gave no verified email address")
        return email, str(state["c"])

    async def _verify(self, token: str, config: dict[str, Any]) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(token).get("kid", "")
        except jwt.PyJWTError:
            raise SignInError("the identity provider sent an invalid ID token") from None
        if kid not in self._keys:
            await self._load_keys(config)
        key = self._keys.get(kid) or (next(iter(self._keys.values())) if len(self._keys) == 1 and not kid else None)
        if key is None:
            raise SignInError("the ID token is signed with an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(token, key=key, algorithms=_ALGORITHMS, audience=self.client_id,
                                                issuer=config["issuer"], leeway=30)
        except jwt.PyJWTError as exc:
            raise SignInError(f"the ID token is not valid: {exc}") from None
        return claims

    async def _load_keys(self, config: dict[str, Any]) -> None:
        try:
            async with (await self._session()).get(config["jwks_uri"]) as resp:
                resp.raise_for_status()
                jwks = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SignInError(f"the identity provider's keys could not be read: {exc}") from None
        keys = {}
        for jwk in jwks.get("keys", []):
            try:
                keys[jwk.get("kid", "")] = jwt.PyJWK(jwk).key
            except jwt.PyJWTError:
                continue
        self._keys = keys


async def login(request: web.Request, client: OidcClient, scheme: str, app: str) -> web.Response:
    """``/_ah/login`` in production, signing in to ``app``."""
    try:
        return await client.start(request, scheme, app)
    except SignInError as exc:
        log.warning("sign-in could not start: %s", exc)
        return web.Response(status=502, text=f"Sign-in is unavailable: {exc}\n", content_type="text/plain")


async def callback(request: web.Request, client: OidcClient, sessions: users.Sessions, scheme: str,
                   app: str) -> web.Response:
    """``/_ah/login/callback``: finish the sign-in and start the session for ``app``."""
    try:
        email, destination = await client.finish(request, scheme, app)
    except SignInError as exc:
        log.info("sign-in failed: %s", exc)
        return web.Response(status=400, text=f"Sign-in failed: {exc}\n", content_type="text/plain")
    response = users.redirect(destination)
    sessions.set_cookie(response, sessions.start(app, email, False), secure=scheme == "https")
    response.del_cookie(NONCE_COOKIE, path=CALLBACK_PATH)
    return response
