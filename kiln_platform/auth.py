"""App identity tokens: how a service knows which app is calling.

A service never trusts an app id sent by a client. The runtime mints, for the
app it runs, a token ``<app_id>.<hmac>`` signed with the deployment's shared
service secret; the app's SDK sends it in the ``authorization`` metadata as
``Bearer <token>``, and each service recovers the app id from it. Without the
secret an app cannot forge another app's token.

Tokens handed to people (the control plane's ``AppToken``, which the CLI uses
to read an app's logs and data) carry an expiry: ``<app_id>.<unix time>.<hmac>``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Iterable

from kiln.errors import UnauthenticatedError

APP_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
METADATA_KEY = "authorization"


@functools.lru_cache(maxsize=4096)
def _sign(secret: str, app_id: str) -> str:
    # Cached: services verify the same few apps' tokens on every call.
    return hmac.new(secret.encode(), b"kiln-app:" + app_id.encode(), hashlib.sha256).hexdigest()


def mint_app_token(secret: str, app_id: str, *, expires_at: int | None = None) -> str:
    """Return the token that proves to services that the caller is ``app_id`` (until ``expires_at``, a Unix
    time, if given)."""
    if not APP_ID_RE.match(app_id):
        raise ValueError(f"invalid app id {app_id!r}")
    body = app_id if expires_at is None else f"{app_id}.{expires_at}"
    return f"{body}.{_sign(secret, body)}"


def verify_app_token(secret: str, token: str, *, now: float | None = None) -> str:
    """Return the app id a token was minted for.

    Raises:
        UnauthenticatedError: the token is missing, malformed, not signed with ``secret``, or expired.
    """
    body, sep, mac = token.rpartition(".")
    app_id, dot, expires = body.partition(".")
    if not sep or not APP_ID_RE.match(app_id) or (dot and not (expires.isdigit() and len(expires) <= 12)):
        raise UnauthenticatedError("malformed app token")
    if not hmac.compare_digest(mac, _sign(secret, body)):
        raise UnauthenticatedError("app token signature does not match")
    if dot and int(expires) < (time.time() if now is None else now):
        raise UnauthenticatedError(f"app token for {app_id!r} expired; run the command again for a new one")
    return app_id


def app_from_metadata(secret: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """Find the bearer token in gRPC metadata and verify it."""
    for key, value in metadata or ():
        if key == METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise UnauthenticatedError("authorization metadata must be 'Bearer <app token>'")
            return verify_app_token(secret, token.strip())
    raise UnauthenticatedError("no app token: send 'authorization: Bearer <app token>' metadata")


# --- App Engine's X-AppEngine-Inbound-AppId between kiln apps ---------------------------------------

INBOUND_APP_HEADER = "X-AppEngine-Inbound-AppId"
INBOUND_SIGNATURE_HEADER = "X-Kiln-Inbound-Signature"
INBOUND_MAX_AGE_SECONDS = 60


def _inbound_mac(secret: str, stamp: int, app_id: str, method: str, host: str, path: str) -> str:
    message = "\n".join(("kiln-inbound", str(stamp), app_id, method.upper(), host.lower(), path))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_inbound(secret: str, app_id: str, method: str, host: str, path: str, now: float) -> str:
    """The signature URL Fetch sends with ``X-AppEngine-Inbound-AppId``: it binds the calling app to one
    request (method, host without port, path with query) for :data:`INBOUND_MAX_AGE_SECONDS`."""
    stamp = int(now)
    return f"{stamp}.{_inbound_mac(secret, stamp, app_id, method, host, path)}"


def verify_inbound(secret: str, signature: str, app_id: str, method: str, host: str, path: str, now: float) -> bool:
    """True if ``signature`` is URL Fetch's, for this app and request, and recent (the router keeps the header)."""
    stamp, sep, mac = signature.partition(".")
    if not sep or not stamp.isdigit() or not APP_ID_RE.match(app_id):
        return False
    if abs(now - int(stamp)) > INBOUND_MAX_AGE_SECONDS:
        return False
    return hmac.compare_digest(mac, _inbound_mac(secret, int(stamp), app_id, method, host, path))


# --- The signed-in user, vouched for by the router -------------------------------------------------------------
#
# A service that must know who is signed in (mail's sender rule) cannot believe the app: the router signs the
# user it established for a request, for that app, until the request's deadline; the runtime hands the proof to
# the app's SDK, which sends it along. With it an app can act as that user only as long as the request could.

def _user_mac(secret: str, expires: int, app_id: str, email: str) -> str:
    message = "\n".join(("kiln-user", str(expires), app_id, email.lower()))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_user(secret: str, app_id: str, email: str, expires: float) -> str:
    """The proof that ``email`` is signed in to a request of ``app_id`` that ends by ``expires`` (Unix time)."""
    stamp = int(expires) + 1
    return f"{stamp}.{_user_mac(secret, stamp, app_id, email)}"


def verify_user(secret: str, proof: str, app_id: str, email: str, now: float) -> bool:
    """True if ``proof`` is the router's, for this app and user, and not expired."""
    stamp, sep, mac = proof.partition(".")
    if not secret or not sep or not stamp.isdigit() or len(stamp) > 12 or not email:
        return False
    if now > int(stamp):
        return False
    return hmac.compare_digest(mac, _user_mac(secret, int(stamp), app_id, email))


# --- Requests kiln's own services make to apps (inbound mail, cron) ---------------------------------------------

PLATFORM_HEADER = "X-Kiln-Platform"
PLATFORM_SIGNATURE_HEADER = "X-Kiln-Platform-Signature"
PLATFORM_CALLERS = frozenset({"mail", "cron"})


def _platform_mac(secret: str, stamp: int, caller: str, method: str, host: str, path: str) -> str:
    message = "\n".join(("kiln-platform", str(stamp), caller, method.upper(), host.lower(), path))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_platform(secret: str, caller: str, method: str, host: str, path: str, now: float) -> str:
    """The signature a kiln service (``caller``: mail, cron) sends with a request it makes to an app through the
    router: it binds the service to one request (method, host without port, path with query) for
    :data:`INBOUND_MAX_AGE_SECONDS`."""
    stamp = int(now)
    return f"{stamp}.{_platform_mac(secret, stamp, caller, method, host, path)}"


def verify_platform(secret: str, signature: str, caller: str, method: str, host: str, path: str,
                    now: float) -> bool:
    """True if ``signature`` is kiln service ``caller``'s for this request, and recent."""
    stamp, sep, mac = signature.partition(".")
    if not secret or not sep or not stamp.isdigit() or caller not in PLATFORM_CALLERS:
        return False
    if abs(now - int(stamp)) > INBOUND_MAX_AGE_SECONDS:
        return False
    return hmac.compare_digest(mac, _platform_mac(secret, int(stamp), caller, method, host, path))
