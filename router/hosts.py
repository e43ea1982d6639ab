"""Resolving the Host header to an app and version, as App Engine does.

- ``APP.DOMAIN`` and any ``SUB.APP.DOMAIN``: the app's default version;
- ``VERSION-dot-APP.DOMAIN`` and ``SUB-dot-VERSION-dot-APP.DOMAIN``: that version;
- ``INSTANCE-dot-VERSION-dot-APP.DOMAIN``, where INSTANCE is an instance id
  (32 hex digits, the ``INSTANCE_ID`` apps see): that one instance;
- development mode: every host reaches the one app's default version.
"""

from __future__ import annotations

import dataclasses
import re

_INSTANCE = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a request goes; ``explicit_version`` when the host named the version."""

    app_id: str
    version_id: str
    explicit_version: bool = False
    instance_id: str | None = None


def resolve(host: str, *, domain: str, versions: dict[str, str], dev_app: str | None) -> Target | None:
    """The target for ``host`` (port removed), or ``None`` for an unknown host or app.

    Args:
        host: The Host header without its port.
        domain: The serving domain (apps live at ``APP.DOMAIN``).
        versions: Default version of each known app.
        dev_app: In development mode, the one app every host reaches.
    """
    if dev_app:
        return Target(dev_app, versions[dev_app])
    host = host.lower().rstrip(".")
    suffix = "." + domain.lower().strip(".")
    if not host.endswith(suffix):
        return None
    labels = host[: -len(suffix)].split(".")
    parts = labels[-1].split("-dot-")
    app = parts[-1]
    if not app or app not in versions:
        return None
    if len(parts) >= 3 and _INSTANCE.fullmatch(parts[-3]) and parts[-2]:
        return Target(app, parts[-2], explicit_version=True, instance_id=parts[-3])
    if len(parts) >= 2 and parts[-2]:
        return Target(app, parts[-2], explicit_version=True)
    return Target(app, versions[app])
