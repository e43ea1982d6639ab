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

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence

from kiln.errors import UnauthenticatedError
from kiln_platform import signing

APP_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
METADATA_KEY = "authorization"


_APP_TOKEN = "kiln-app"


def mint_app_token(secret: str, app_id: str, *, expires_at: int | None = None) -> str:
    """Return the token that proves to services that the caller is ``app_id`` (until ``expires_at``, a Unix
    time, if given)."""
    if not APP_ID_RE.match(app_id):
        raise ValueError(f"invalid app id {app_id!r}")
    body = app_id if expires_at is None else f"{app_id}.{expires_at}"
    return f"{body}.{signing.sign(secret, _APP_TOKEN, body)}"


def verify_app_token(secret: str, token: str, *, now: float | None = None) -> str:
    """Return the app id a token was minted for.

    Raises:
        UnauthenticatedError: the token is missing, malformed, not signed with ``secret``, or expired.
    """
    return verify_app_token_until(secret, token, now=now)[0]


def verify_app_token_until(secret: str, token: str, *, now: float | None = None) -> tuple[str, float]:
    """Return the app id a token was minted for, and the Unix time until which the token is valid (``math.inf``
    for a token without expiry): until then, the same token gives the same answer.

    Raises:
        UnauthenticatedError: as :func:`verify_app_token`.
    """
    body, sep, mac = token.rpartition(".")
    app_id, dot, expires = body.partition(".")
    if not sep or not APP_ID_RE.match(app_id) or (dot and not (expires.isdigit() and len(expires) <= 12)):
        raise UnauthenticatedError("malformed app token")
    if not signing.verify(secret, _APP_TOKEN, mac, body):
        raise UnauthenticatedError("app token signature does not match")
    if dot and int(expires) < (time.time() if now is None else now):
        raise UnauthenticatedError(f"app token for {app_id!r} expired; run the command again for a new one")
    return app_id, (float(expires) if dot else math.inf)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None, what: str = "app token") -> str:
    """The bearer token in gRPC ``authorization`` metadata (``what`` names it in errors), unverified.

    Raises:
        UnauthenticatedError: there is none, or it is not ``Bearer <token>`` in ASCII.
    """
    for key, value in metadata or ():
        if key == METADATA_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip() or not token.isascii():
                raise UnauthenticatedError(f"authorization metadata must be 'Bearer <{what}>'")
            return token.strip()
    raise UnauthenticatedError(f"no {what}: send 'authorization: Bearer <{what}>' metadata")


def app_from_metadata(secret: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """Find the bearer token in gRPC metadata and verify it."""
    return verify_app_token(secret, bearer_token(metadata))


# --- App Engine's X-AppEngine-Inbound-AppId between kiln apps ---------------------------------------

INBOUND_APP_HEADER = "X-AppEngine-Inbound-AppId"
INBOUND_SIGNATURE_HEADER = "X-Kiln-Inbound-Signature"
INBOUND_MAX_AGE_SECONDS = 60


def sign_inbound(secret: str, app_id: str, method: str, host: str, path: str, now: float) -> str:
    """The signature URL Fetch sends with ``X-AppEngine-Inbound-AppId``: it binds the calling app to one
    request (method, host without port, path with query) for :data:`INBOUND_MAX_AGE_SECONDS`."""
    return signing.sign_stamped(secret, "kiln-inbound", int(now), app_id, method.upper(), host.lower(), path)


def verify_inbound(secret: str, signature: str, app_id: str, method: str, host: str, path: str, now: float) -> bool:
    """True if ``signature`` is URL Fetch's, for this app and request, and recent (the router keeps the header)."""
    if not APP_ID_RE.match(app_id):
        return False
    stamp = signing.verify_stamped(secret, "kiln-inbound", signature, app_id, method.upper(), host.lower(), path)
    return stamp is not None and abs(now - stamp) <= INBOUND_MAX_AGE_SECONDS


# --- The signed-in user, vouched for by the router -------------------------------------------------------------
#
# A service that must know who is signed in (mail's sender rule) cannot believe the app: the router signs the
# user it established for a request, for that app, until the request's deadline; the runtime hands the proof to
# the app's SDK, which sends it along. With it an app can act as that user only as long as the request could.

def sign_user(secret: str, app_id: str, email: str, expires: float) -> str:
    """The proof that ``email`` is signed in to a request of ``app_id`` that ends by ``expires`` (Unix time)."""
    return signing.sign_stamped(secret, "kiln-user", int(expires) + 1, app_id, email.lower())


def verify_user(secret: str, proof: str, app_id: str, email: str, now: float) -> bool:
    """True if ``proof`` is the router's, for this app and user, and not expired."""
    if not email:
        return False
    stamp = signing.verify_stamped(secret, "kiln-user", proof, app_id, email.lower())
    return stamp is not None and now <= stamp


# --- Requests kiln's own services make to apps (inbound mail, cron, push tasks) -------------------------------

PLATFORM_HEADER = "X-Kiln-Platform"
PLATFORM_SIGNATURE_HEADER = "X-Kiln-Platform-Signature"
PLATFORM_CALLERS = frozenset({"mail", "cron", "taskqueue"})
# App Engine's headers of a push task: taskqueue_svc sends them to the router, which passes them to the app only
# on a request the task queue signed (its signature covers their values, see task_header_values).
# A push task's request may run this long (App Engine: 10 minutes), where other requests have the runtime's
# request deadline: the router gives it this long, and the runtime's timer gives a request carrying
# X-AppEngine-QueueName (which only the router sets, for the task queue's signed requests) this long.
TASK_REQUEST_DEADLINE_SECONDS = 600.0
TASK_HEADERS = ("X-AppEngine-QueueName", "X-AppEngine-TaskName", "X-AppEngine-TaskRetryCount",
                "X-AppEngine-TaskExecutionCount", "X-AppEngine-TaskETA", "X-AppEngine-TaskPreviousResponse",
                "X-AppEngine-Current-Namespace")


def task_header_values(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The values of :data:`TASK_HEADERS` in ``headers`` (``""`` for those absent), in that order."""
    return tuple(headers.get(name, "") for name in TASK_HEADERS)


def sign_platform(secret: str, caller: str, method: str, host: str, path: str, now: float,
                  bound: Sequence[str] = ()) -> str:
    """The signature a kiln service (``caller``: mail, cron, taskqueue) sends with a request it makes to an app
    through the router: it binds the service to one request (method, host without port, path with query, and
    ``bound``: the task queue's :func:`task_header_values`) for :data:`INBOUND_MAX_AGE_SECONDS`."""
    return signing.sign_stamped(secret, "kiln-platform", int(now), caller, method.upper(), host.lower(), path,
                                *bound)


def verify_platform(secret: str, signature: str, caller: str, method: str, host: str, path: str,
                    now: float, bound: Sequence[str] = ()) -> bool:
    """True if ``signature`` is kiln service ``caller``'s for this request (and ``bound``), and recent."""
    if caller not in PLATFORM_CALLERS:
        return False
    stamp = signing.verify_stamped(secret, "kiln-platform", signature, caller, method.upper(), host.lower(), path,
                                   *bound)
    return stamp is not None and abs(now - stamp) <= INBOUND_MAX_AGE_SECONDS
