"""Deploy tokens: who may change which app, and who may read every app.

A token is ``kiln1.APP.SCOPE.NAME.MAC``: ``APP`` is an app id or ``*`` (every
app), ``SCOPE`` is ``admin`` (deploy, switch and delete versions, read the
app's data) or ``read`` (what routers, runtime hosts and cron need: versions
and files), ``NAME`` says who holds it (recorded as ``deployed_by``), and
``MAC`` signs the rest with the control plane's ``admin_secret``. Operators
mint tokens with ``python -m deploy.control mint-token``; nothing is stored, so
rotating the secret revokes every token.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from kiln_platform import auth, signing
from kiln_platform.auth import APP_ID_RE
from kiln.errors import PermissionDeniedError, UnauthenticatedError

PREFIX = "kiln1"
ALL_APPS = "*"
SCOPES = ("admin", "read")
NAME_RE = re.compile(r"^[A-Za-z0-9_@+-]{1,64}$")


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a verified token allows."""

    app: str
    scope: str
    name: str

    def allows(self, app_id: str, scope: str) -> bool:
        """True if this token may act on ``app_id`` with ``scope`` (admin implies read)."""
        return self.app in (ALL_APPS, app_id) and (self.scope == "admin" or scope == "read")

    def require(self, app_id: str, scope: str) -> None:
        """Raise PermissionDeniedError unless :meth:`allows`."""
        if not self.allows(app_id, scope):
            what = "an admin token" if scope == "admin" else "a token"
            raise PermissionDeniedError(f"this token ({self.name}, {self.scope} for {self.app}) is not {what} "
                                        f"for app {app_id!r}; ask your operator for one")


def mint(secret: str, app: str, scope: str, name: str) -> str:
    """A token for ``app`` (or ``*``) with ``scope``, held by ``name``."""
    if not secret:
        raise ValueError("admin_secret is empty")
    if app != ALL_APPS and not APP_ID_RE.match(app):
        raise ValueError(f"app: {app!r} is not an app id (lowercase letters, digits, hyphens) or '*'")
    if scope not in SCOPES:
        raise ValueError(f"scope: must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not NAME_RE.match(name):
        raise ValueError(f"name: 1-64 of letters, digits, _ @ + -, got {name!r}")
    body = f"{PREFIX}.{app}.{scope}.{name}"
    return f"{body}.{signing.sign(secret, 'kiln-deploy', body)}"


def verify(secret: str, token: str) -> Grant:
    """The grant of a token signed with ``secret``.

    Raises:
        UnauthenticatedError: the token is malformed or not signed with ``secret``.
    """
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != PREFIX:
        raise UnauthenticatedError("malformed deploy token: expected kiln1.APP.SCOPE.NAME.MAC")
    _, app, scope, name, mac = parts
    if scope not in SCOPES or not NAME_RE.match(name) or (app != ALL_APPS and not APP_ID_RE.match(app)):
        raise UnauthenticatedError("malformed deploy token: expected kiln1.APP.SCOPE.NAME.MAC")
    if not signing.verify(secret, "kiln-deploy", mac, token.rpartition(".")[0]):
        raise UnauthenticatedError("deploy token signature does not match (wrong deployment, or revoked)")
    return Grant(app, scope, name)


@dataclasses.dataclass(frozen=True)
class DeployTokens:
    """The control plane's authenticator (:class:`kiln_platform.grpcserver.Authenticator`): the caller is the
    :class:`Grant` of the deploy token in ``authorization: Bearer``."""

    secret: str

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Grant:
        return verify(self.secret, auth.bearer_token(metadata, "deploy token"))
