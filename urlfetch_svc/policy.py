"""Where apps may fetch: App Engine's URL rules, and kiln's refusal of internal addresses.

App Engine lets an app fetch ``http`` and ``https`` URLs on ports 80-90,
440-450 and 1024-65535. kiln also refuses, by default, every destination that
is not on the public internet — loopback, link-local (cloud metadata
services), private, carrier-grade NAT, unique-local, multicast, reserved and
unspecified addresses, and any network the operator lists as cluster-internal
— because that is where kiln's own services and the cluster's machines live.
The check is made on the addresses a host name resolves to, for every
connection (so also after each redirect), and the connection goes to the
address that was checked, so a DNS answer that changes between check and
connect (rebinding) gains nothing. An operator can allow an app (or every
app, ``*``) specific internal networks.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from collections.abc import Iterable, Mapping

from kiln.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_ALLOWED_PORTS = (range(80, 91), range(440, 451), range(1024, 65536))

# Not the public internet (beyond what ipaddress' is_private/is_global already say).
_INTERNAL = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "64:ff9b::/96")]


class InvalidUrl(ValueError):
    """The URL is not one App Engine would fetch (scheme, host, port)."""


class ForbiddenDestination(ValueError):
    """The destination address is internal and the app is not allowed to reach it."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A validated URL, split."""

    scheme: str
    host: str
    port: int
    url: str


def parse_url(url: str) -> Target:
    """Validate ``url`` as App Engine did (absolute http/https, a host, an allowed port).

    Raises:
        InvalidUrl: the message says what is wrong.
    """
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidUrl("the URL contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidUrl(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidUrl(f"the scheme must be http or https, got {parts.scheme or 'none'!r}")
    host = parts.hostname or ""
    if not host:
        raise InvalidUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidUrl("credentials in the URL are not allowed; send an Authorization header")
    port = port or (443 if scheme == "https" else 80)
    if not any(port in r for r in _ALLOWED_PORTS):
        raise InvalidUrl(f"port {port} is not allowed (App Engine allows 80-90, 440-450 and 1024-65535)")
    return Target(scheme, host, port, url)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The internal networks one app may reach (none by default), and the operator's extra internal networks."""

    allowed: tuple[Network, ...] = ()
    internal: tuple[Network, ...] = ()
    front_doors: frozenset[tuple[Address, int]] = frozenset()  # the routers: how apps reach apps

    def check(self, address: str, port: int | None = None) -> None:
        """Raise :class:`ForbiddenDestination` unless ``address`` (and ``port``) may be connected to."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not self.is_internal(ip) or (ip, port) in self.front_doors:
            return
        if any(ip in net for net in self.allowed):
            return
        raise ForbiddenDestination(f"{ip} is a loopback, private, link-local or cluster-internal address; apps may "
                                   "not fetch from it unless the operator allows it for the app")

    def is_internal(self, ip: Address) -> bool:
        return (not ip.is_global or any(ip in net for net in _INTERNAL) or
                any(ip.version == net.version and ip in net for net in self.internal))


class Policies:
    """Each app's :class:`Policy`, from the service's configuration."""

    def __init__(self, allow: Mapping[str, tuple[Network, ...]], internal: Iterable[Network] = (),
                 front_doors: Iterable[tuple[Address, int]] = ()) -> None:
        self._internal = tuple(internal)
        doors = frozenset(front_doors)
        everyone = allow.get("*", ())
        self._default = Policy(everyone, self._internal, doors)
        self._by_app = {app: Policy(nets + everyone, self._internal, doors)
                        for app, nets in allow.items() if app != "*"}

    def for_app(self, app_id: str) -> Policy:
        return self._by_app.get(app_id, self._default)

    @classmethod
    def parse(cls, allow: str, internal: str, front_doors: str = "") -> Policies:
        """``allow``: ``app=CIDR;CIDR,app2=CIDR`` (``*`` for every app); ``internal``: ``CIDR,CIDR``;
        ``front_doors``: ``IP:PORT,IP:PORT`` (the routers, reachable by every app even on internal addresses).

        Raises:
            ConfigError: a malformed entry, named.
        """
        by_app: dict[str, tuple[Network, ...]] = {}
        for entry in filter(None, (e.strip() for e in allow.split(","))):
            app, sep, nets = entry.partition("=")
            if not sep or not app.strip():
                raise ConfigError(f"allow_internal: expected app=CIDR[;CIDR], got {entry!r}")
            by_app[app.strip()] = by_app.get(app.strip(), ()) + tuple(
                _network(n, "allow_internal") for n in nets.split(";") if n.strip())
        doors = []
        for entry in filter(None, (e.strip() for e in front_doors.split(","))):
            host, sep, port = entry.rpartition(":")
            try:
                doors.append((ipaddress.ip_address(host.strip("[]")), int(port)))
            except ValueError:
                raise ConfigError(f"front_doors: expected IP:PORT, got {entry!r}") from None
        return cls(by_app, [_network(n, "internal_networks") for n in internal.split(",") if n.strip()], doors)


def _network(text: str, setting: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}") from None
