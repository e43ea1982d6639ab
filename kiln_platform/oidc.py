"""OpenID Connect sign-in (authorization code flow with PKCE): the relying party the router and the console share.

:meth:`OidcClient.authorization_url` gives the provider's URL to send a browser to, with a signed ``state`` (who
the sign-in is for, where to continue, a nonce and an expiry), the nonce, and a PKCE ``code_challenge`` (S256).
The caller keeps the nonce in a short-lived HttpOnly cookie, so a callback can only complete the sign-in started
in the same browser. :meth:`OidcClient.finish` checks the state (signature, audience, expiry), the nonce cookie,
exchanges the code with the PKCE verifier at the token endpoint, and verifies the ID token (signature against the
provider's JWKS, issuer, audience, expiry, nonce, a verified email). States and nonce cookies of any other shape
or content (non-ASCII included) are refused with :class:`SignInError`, never an exception of another kind.

The PKCE verifier is never sent to the browser nor stored: it is derived from the nonce with the state key, so
only a holder of that key (this deployment) can redeem a code, even one read from a URL in transit. The
provider's discovery document and keys are fetched once and cached; keys are refetched when a token names an
unknown one.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import jwt

from kiln_platform import signing

STATE_SECONDS = 600
_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
_STATE_PURPOSE = "oidc-state"
_PKCE_PURPOSE = "oidc-pkce"


class SignInError(Exception):
    """The sign-in could not complete; the message is safe to show."""


class OidcClient:
    """A deployment as an OpenID Connect relying party (see module docstring)."""

    def __init__(self, *, issuer: str, client_id: str, client_secret: str, state_key: str) -> None:
        if not state_key:
            raise ValueError("state_key: required to sign sign-in states")
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
            if not isinstance(found, dict) or str(found.get("issuer", "")).rstrip("/") != self.issuer:
                raise SignInError("the identity provider's configuration names another issuer")
            self._discovery = found
        return self._discovery

    def _verifier(self, nonce: str) -> str:
        """The PKCE code verifier of the sign-in with ``nonce`` (64 hex digits; RFC 7636 allows 43 to 128)."""
        return signing.derive(self._state_key, _PKCE_PURPOSE, nonce)

    def _unsign(self, state: str, audience: str) -> dict[str, Any]:
        """The payload of a state signed here for ``audience``; any other input is a :class:`SignInError`."""
        data = signing.unseal(self._state_key, _STATE_PURPOSE, state)
        if data is None:
            raise SignInError("invalid sign-in state")
        expires = data.get("x")
        if not isinstance(data.get("n"), str) or not isinstance(data.get("c"), str):
            raise SignInError("invalid sign-in state")
        if data.get("a") != audience:
            raise SignInError("this sign-in was started for another app")
        if type(expires) is not int or expires < time.time():
            raise SignInError("the sign-in took too long; start again")
        return dict(data)

    async def authorization_url(self, *, redirect_uri: str, audience: str, continue_to: str) -> tuple[str, str]:
        """Where to send the browser to sign in for ``audience``, and the nonce to keep in its cookie.

        ``audience`` names what the sign-in is for (the router: the app; the console: itself); ``continue_to``
        is carried, signed, to :meth:`finish` (the caller checks it before and after).
        """
        config = await self._config()
        nonce = secrets.token_urlsafe(24)
        state = signing.seal(self._state_key, _STATE_PURPOSE,
                             {"a": audience, "c": continue_to, "n": nonce, "x": int(time.time()) + STATE_SECONDS})
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self._verifier(nonce).encode()).digest()).rstrip(b"=")
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id, "scope": "openid email",
            "redirect_uri": redirect_uri, "state": state, "nonce": nonce,
            "code_challenge": challenge.decode(), "code_challenge_method": "S256"})
        return f"{config['authorization_endpoint']}?{query}", nonce

    async def finish(self, *, query: Mapping[str, str], nonces: Iterable[str], redirect_uri: str,
                     audience: str) -> tuple[str, str]:
        """The verified email and the continue value of the callback with ``query``.

        ``nonces`` are the nonce cookie's values the browser sent.

        Raises:
            SignInError: anything wrong (its message is safe to show).
        """
        if "error" in query:
            raise SignInError(f"the identity provider refused the sign-in: {query['error'][:200]}")
        state = self._unsign(query.get("state", ""), audience)
        nonce = str(state["n"])
        if not any(signing.same_secret(value, nonce) for value in nonces):
            raise SignInError("this sign-in was not started in this browser")
        code = query.get("code")
        if not code:
            raise SignInError("the identity provider sent no code")
        config = await self._config()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": self.client_id, "client_secret": self._client_secret,
                "code_verifier": self._verifier(nonce)}
        try:
            async with (await self._session()).post(config["token_endpoint"], data=form) as resp:
                tokens = await resp.json(content_type=None)
                if not isinstance(tokens, dict):
                    raise SignInError("the identity provider answered the code with no tokens")
                if resp.status != 200:
                    raise SignInError(f"the identity provider refused the code: {tokens.get('error', resp.status)}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SignInError(f"the identity provider could not be reached: {exc}") from None
        claims = await self._verify(str(tokens.get("id_token", "")), config)
        if claims.get("nonce") != nonce:
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
        for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
            try:
                keys[jwk.get("kid", "")] = jwt.PyJWK(jwk).key
            except jwt.PyJWTError:
                continue
        self._keys = keys
