"""Credentials toward kiln's services as a given app: short-lived app tokens minted from ``service_secret``.

Two parts use them. The router calls a service as the app whose request it handles; ``kiln dev``'s console
(``console/``) calls the services as the app it shows (it runs beside the services, holding their secret, as the
router does).

Some requests need a service before or after the app runs: a Blobstore upload
is stored before the app's success handler sees it, and a response carrying
``X-AppEngine-BlobKey`` is filled from the blob after the app answered. The
router then calls the service *as that app*, with an app token it mints from
the services' shared secret (``service_secret``), so the service scopes data
exactly as it does for the app's own calls (``kiln_platform.grpcserver.AppTokens``):
an app's response can only name that app's blobs.

For the router, the app id always comes from its own routing (the version it sent the
request to), never from the app's response or the client. Tokens expire after
:data:`TOKEN_SECONDS` and are minted again at half that age, once per app.
"""

from __future__ import annotations

import time

from kiln_platform import auth

TOKEN_SECONDS = 600


class AppCredentials:
    """gRPC call metadata that authenticates its holder (the router, the console) as a given app."""

    def __init__(self, service_secret: str, *, token_seconds: int = TOKEN_SECONDS) -> None:
        if not service_secret:
            raise ValueError("service_secret: required to call services as an app")
        self._secret = service_secret
        self._seconds = token_seconds
        self._minted: dict[str, tuple[tuple[tuple[str, str], ...], float]] = {}

    def metadata(self, app_id: str, *, now: float | None = None) -> tuple[tuple[str, str], ...]:
        """The ``authorization`` metadata for a call as ``app_id`` (valid for at least half the token's life)."""
        now = time.time() if now is None else now
        known = self._minted.get(app_id)
        if known is not None and now < known[1]:
            return known[0]
        expires = int(now) + self._seconds
        value = ((auth.METADATA_KEY, f"Bearer {auth.mint_app_token(self._secret, app_id, expires_at=expires)}"),)
        self._minted[app_id] = (value, now + self._seconds / 2)
        return value
