"""The callout's answer: nats-server's authorization request in, a user JWT signed by the issuer out (see the
package docstring)."""


from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from typing import Any

import nkeys
from nats.aio.client import Client
from nats.aio.msg import Msg

from kiln_platform import natsauth, signing
from kiln_platform.auth import APP_ID_RE
from kiln_platform.natsauth import issuer_public_key

log = logging.getLogger("natscallout")

CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
QUEUE = "kiln-natscallout"
GLOBAL_ACCOUNT = "$G"  # nats-server's account for users when the configuration names no accounts


# ------------------------------------------------------------------ JWTs (NATS's: ed25519 signatures by nkeys)

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_HEADER = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}, separators=(",", ":")).encode())


def encode_jwt(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """A JWT of ``claims`` issued and signed by ``issuer``."""
    body = {**claims, "iss": issuer.public_key.decode(), "iat": int(time.time())}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    signed = f"{_HEADER}.{_b64(json.dumps(body, separators=(',', ':')).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (not verified: see :meth:`Callout.answer`).

    Raises:
        ValueError: not a JWT.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT: expected three dot-separated parts")
    try:
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    if not isinstance(claims, dict):
        raise ValueError("not a JWT: the claims are not an object")
    return claims


def user_permissions(app_id: str) -> dict[str, Any]:
    """:func:`kiln_platform.natsauth.app_permissions` in a user JWT's terms."""
    static = natsauth.app_permissions(app_id)
    return {
        "pub": {"allow": static["publish"]["allow"]},
        "sub": {"allow": static["subscribe"]["allow"]},
        "resp": {"max": 1, "ttl": 0},  # allow_responses: one reply per request, the server's default time
        "subs": -1, "data": -1, "payload": -1,  # no limits beyond the server's own
    }


# ------------------------------------------------------------------ the callout

class Callout:
    """Answers nats-server's authorization requests (see the module docstring)."""

    def __init__(self, issuer_seed: str, app_secret: str) -> None:
        issuer_public_key(issuer_seed)  # refuses a seed that is not an account's
        self._issuer = nkeys.from_seed(issuer_seed.encode())
        self._app_secret = app_secret

    def answer(self, request: str) -> str | None:
        """The signed authorization response to a request JWT; None when the request is malformed (no one to
        answer: the server refuses the connection when its wait runs out).

        The request's signature is not checked: its key is the server's own, made at each start and known
        from nothing else, and only nats-server may publish on the callout subject. What is checked is ours:
        the password, and that the response names the server and user key the request gave.
        """
        try:
            claims = jwt_claims(request)
            nats_claims = claims["nats"]
            user_nkey, server_id = nats_claims["user_nkey"], nats_claims["server_id"]["id"]
            opts = nats_claims.get("connect_opts") or {}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("malformed authorization request: %s", exc)
            return None
        if not (isinstance(user_nkey, str) and user_nkey.startswith("U") and isinstance(server_id, str)):
            log.warning("malformed authorization request: bad user_nkey or server id")
            return None
        user, password = str(opts.get("user") or ""), str(opts.get("pass") or "")
        app_id = user.removeprefix("app-") if user.startswith("app-") else ""
        response: dict[str, Any] = {"type": "authorization_response", "version": 2}
        if not APP_ID_RE.match(app_id) or not signing.verify(self._app_secret, natsauth.APP_PASSWORD_PURPOSE,
                                                              password, app_id):
            log.info("refused NATS user %r from %s", user[:100], (nats_claims.get("client_info") or {}).get("host"))
            response["error"] = "unknown user or wrong password"
        else:
            response["jwt"] = encode_jwt({
                "sub": user_nkey, "aud": GLOBAL_ACCOUNT, "name": natsauth.app_user(app_id),
                "nats": {**user_permissions(app_id), "type": "user", "version": 2},
            }, self._issuer)
        return encode_jwt({"sub": user_nkey, "aud": server_id, "nats": response}, self._issuer)

    async def handle(self, msg: Msg) -> None:
        reply = self.answer(msg.data.decode(errors="replace"))
        if reply is not None and msg.reply:
            await msg.respond(reply.encode())

    async def subscribe(self, nc: Client) -> None:
        await nc.subscribe(CALLOUT_SUBJECT, queue=QUEUE, cb=self.handle)
        await nc.flush()
