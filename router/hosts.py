"""Resolving the Host header to an app and version, as App Engine does.

- ``APP.DOMAIN`` and any ``SUB.APP.DOMAIN``: the app's default version;
- ``VERSION-dot-APP.DOMAIN`` and ``SUB-dot-VERSION-dot-APP.DOMAIN``: that version;
- ``INSTANCE-dot-VERSION-dot-APP.DOMAIN``, where INSTANCE is an instance id
  (32 hex digits, the ``INSTANCE_ID`` apps see): that one instance;
- development mode: every host reaches the one app's default version.

The Host itself is read and checked here too (:func:`request_host`), once per
request, and every later use takes the :class:`Host` it returns.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import typing

_INSTANCE = re.compile(r"[0-9a-f]{32}")


class Target(typing.NamedTuple):
    """Where a request goes; ``explicit_version`` when the host named the version (a tuple: one is made per
    request, and a frozen dataclass took several times as long to build)."""

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


# --- The Host of a request: one parser for every use (routing, signatures, redirects, the app's SERVER_NAME) ---

_REG_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)*\.?")
_PORT = re.compile(r"[0-9]{1,5}")
MAX_HOST_LENGTH = 255


class BadHostError(ValueError):
    """The request's Host is missing, repeated or not a host name; the message is safe to show (HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class Host:
    """A request's validated Host.

    Attributes:
        name: Lower case without a trailing dot; an IPv6 literal keeps its brackets.
        port: The port the client named, or ``None``.
        raw: The value as the client sent it (checked, so safe to pass on and to put in a redirect).
    """

    name: str
    port: int | None
    raw: str

    def port_for(self, scheme: str) -> int:
        """The port the client connected to: the one it named, else the scheme's default."""
        return self.port if self.port is not None else (443 if scheme == "https" else 80)


@functools.lru_cache(maxsize=256)
def parse_host(value: str) -> Host:
    """The Host for one ``host[:port]`` value (RFC 9110 7.2), or :class:`BadHostError`.

    Kept for the latest values, as :func:`router.paths.parse_target` (a :class:`Host` is immutable).

    Only ASCII host names (letters, digits, ``-``, ``_``, dots), IPv4 addresses
    and bracketed IPv6 literals are accepted, so a name with spaces, control
    characters or non-ASCII characters (browsers send IDNA ``xn--`` names) never
    reaches routing, a signature check or a redirect.
    """
    if not value:
        raise BadHostError("the Host header is empty")
    if len(value) > MAX_HOST_LENGTH or not value.isascii() or not value.isprintable() or " " in value:
        raise BadHostError(f"the Host header {value[:80]!r} is not a host name")
    if value.startswith("["):
        literal, sep, rest = value[1:].partition("]")
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise BadHostError(f"the Host header {value!r} is not a host name") from None
        if not sep or (rest and not rest.startswith(":")):
            raise BadHostError(f"the Host header {value!r} is not a host name")
        name, port_text = f"[{literal.lower()}]", rest[1:] if rest else None
    else:
        name, sep, port = value.partition(":")
        port_text = port if sep else None
        name = name.lower()
        if not _REG_NAME.fullmatch(name):
            raise BadHostError(f"the Host header {value!r} is not a host name")
        name = name.rstrip(".")
    port_number = None
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 0 < int(port_text) <= 65535:
            raise BadHostError(f"the Host header's port {port_text!r} is not a port (1-65535)")
        port_number = int(port_text)
    return Host(name, port_number, value)


def request_host(values: list[str], authority: str | None) -> Host:
    """The Host of a request: the authority of an absolute-form target (RFC 9112 3.2.2), else the one Host header.

    Args:
        values: Every ``Host`` header the request carries (more than one is an error).
        authority: The ``host[:port]`` of an absolute-form request target, if it had one.
    """
    if len(values) > 1:
        raise BadHostError("the request has more than one Host header")
    if authority is not None:
        return parse_host(authority)
    if not values:
        raise BadHostError("the request has no Host header")
    return parse_host(values[0])
