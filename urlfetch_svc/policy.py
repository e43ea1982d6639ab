"""Where apps may fetch: App Engine's URL rules, and kiln's refusal of internal addresses.

App Engine lets an app fetch ``http`` and ``https`` URLs on ports 80-90,
440-450 and 1024-65535. kiln also refuses, by default, every destination that
is not on the public internet — loopback, link-local (cloud metadata
services), private, carrier-grade NAT, unique-local, multicast, reserved and
unspecified addresses, and any network the operator lists as cluster-internal
— because that is where kiln's own services and the cluster's machines live.
Each URL (the app's and every redirect's) is first normalised once by
:func:`parse_url` — WHATWG URL rules: IDNA/UTS-46 with NFKC for names, every
numeric form of an IPv4 address, compressed IPv6 — so the host checked is the
host connected to, whatever Unicode digits, dots or number bases spell it.
The check is made on that address, or on the addresses the name resolves
to, and the connection goes to the address that was checked (the fetcher
pins it), so a DNS answer that changes between check and connect
(rebinding) gains nothing. An operator can allow an app (or every
app, ``*``) specific internal networks.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence

import ada_url
import idna

from kiln.errors import ConfigError
from kiln_platform.config import HostPort

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_ALLOWED_PORTS = (range(80, 91), range(440, 451), range(1024, 65536))

# Not the public internet (beyond what ipaddress' is_private/is_global already say).
_INTERNAL = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "64:ff9b::/96")]
_AUTHORITY = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:)?//")  # what comes before the authority (host)
_ZONE = re.compile(r"\[([^\]%]*)%(?:25)?([^\]]*)\]")


class InvalidUrl(ValueError):
    """The URL is not one App Engine would fetch (scheme, host, port)."""


class ForbiddenDestination(ValueError):
    """The destination address is internal and the app is not allowed to reach it."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A URL as it will be fetched, after normalisation: what the policy decides on is what is connected to."""

    scheme: str
    host: str  # ASCII: an IDNA A-label name, a dotted-quad IPv4 address or an IPv6 address (without brackets)
    port: int
    url: str  # the URL to request: normalised, without credentials or fragment
    address: Address | None  # the host, when it is an IP address
    # Why the URL is invalid even where its destination is allowed (credentials, a zone id). It is raised only
    # after the destination was checked, so a URL naming a forbidden address is always refused as forbidden.
    invalid: str | None = None

    @property
    def name(self) -> str:
        """The host name to resolve: the host without the trailing dot of an absolute name."""
        return self.host[:-1] if self.host.endswith(".") else self.host

    def raise_if_invalid(self) -> None:
        if self.invalid:
            raise InvalidUrl(self.invalid)


def parse_url(url: str) -> Target:
    """Validate and normalise ``url``: the one place that decides which host a fetch goes to.

    The URL is read by the WHATWG URL rules (what browsers do, via ada): the host is mapped and checked by
    IDNA/UTS-46 (so NFKC folds full-width and circled digits and Unicode full stops to ASCII), percent-decoded,
    read as an IPv4 address in every numeric form (decimal, octal, hex, short) when it ends in a number, and
    written back in one canonical ASCII form. The fetch then uses exactly that host, so no later step of the HTTP
    client can turn a name that passed the policy into a different one. App Engine's own rules (an absolute
    http/https URL with a host, an allowed port) apply on top.

    Raises:
        InvalidUrl: the message says what is wrong.
    """
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidUrl("the URL contains spaces or control characters")
    url, zone = _without_zone(url)
    scheme, port = _split(url)
    try:
        parsed = ada_url.URL(url)
    except ValueError:
        raise InvalidUrl(_why_unparsable(url)) from None
    host = parsed.hostname.removeprefix("[").removesuffix("]")
    address = _address(host)
    if (other := _read_host(url)) != host:
        raise InvalidUrl(f"the URL's authority is ambiguous: it names the host {host!r} by the URL standard but "
                         f"{other!r} by RFC 3986")
    if int(parsed.port or port) != port:
        raise InvalidUrl(f"the URL's port is ambiguous: {parsed.port or 'default'} or {port}")
    invalid = None
    if parsed.username or parsed.password:
        invalid = "credentials in the URL are not allowed; send an Authorization header"
    elif zone:
        invalid = f"IPv6 zone ids (%{zone}) are not allowed"
    request = ada_url.URL(parsed.href)
    request.username = request.password = request.hash = ""
    return Target(scheme, host, port, request.href, address, invalid)


def join(base: str, location: str) -> str:
    """Where a redirect from ``base`` to ``location`` leads, read by the same rules as :func:`parse_url`.

    Raises:
        InvalidUrl: ``location`` does not make a valid URL.
    """
    bare, zone = _without_zone(location)
    try:
        joined = ada_url.URL(bare, base).href
    except ValueError:
        raise InvalidUrl(f"the redirect location {location!r} is not a valid URL") from None
    # The zone id goes back, for parse_url to refuse after the address was checked.
    return joined.replace("]", f"%25{urllib.parse.quote(zone)}]", 1) if zone else joined


def _split(url: str) -> tuple[str, int]:
    """App Engine's rules, read as Python's urllib reads the URL: the scheme and the port."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidUrl(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidUrl(f"the scheme must be http or https, got {parts.scheme or 'none'!r}")
    if not parts.hostname or not parts.netloc:
        raise InvalidUrl("the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    if not any(port in r for r in _ALLOWED_PORTS):
        raise InvalidUrl(f"port {port} is not allowed (App Engine allows 80-90, 440-450 and 1024-65535)")
    return scheme, port


def _read_host(url: str) -> str:
    """The host urllib reads in ``url``, normalised by the URL standard (for comparison with the standard's own
    reading: where they differ, an app that checked the URL with urllib would be misled)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        found = ada_url.URL(f"http://[{host}]/" if ":" in host else f"http://{host}/").hostname
    except ValueError:
        return host
    return found.removeprefix("[").removesuffix("]")


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: the URL standard has already read every numeric form as an address


def _without_zone(url: str) -> tuple[str, str]:
    """``url`` without the zone id of an IPv6 host (``[fe80::1%25eth0]``), which the URL standard does not
    allow, and the zone id; so that the address itself can be checked (and refused) like any other."""
    start = _AUTHORITY.match(url)
    if start is None:
        return url, ""
    rest = url[start.end():]
    end = min([i for i in (rest.find(c) for c in "/?#\\") if i >= 0] or [len(rest)])
    authority = rest[:end]
    found = _ZONE.search(authority)
    if found is None:
        return url, ""
    authority = authority[:found.start()] + f"[{found.group(1)}]" + authority[found.end():]
    return url[:start.end()] + authority + rest[end:], urllib.parse.unquote(found.group(2))


def _why_unparsable(url: str) -> str:
    """A precise reason for a URL the URL standard refuses (its host, nearly always)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if ":" in host:
        return f"the host {host!r} is not a valid IPv6 address"
    try:
        idna.encode(host, uts46=True)
    except idna.IDNAError as exc:
        return f"the host {host!r} does not normalise to a valid domain name (IDNA): {exc}"
    last = [label for label in host.split(".") if label][-1:] or [""]
    if re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]*", last[0]):
        return f"the host {host!r} ends in a number but is not a valid IPv4 address"
    return f"the host {host!r} is not a valid domain name or IP address"


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
    def parse(cls, allow: str, internal: Sequence[str], front_doors: Sequence[HostPort] = ()) -> Policies:
        """``allow``: ``app=CIDR;CIDR,app2=CIDR`` (``*`` for every app); ``internal``: CIDRs;
        ``front_doors``: IP:PORT addresses (the routers, reachable by every app even on internal addresses).

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
        for door in front_doors:
            try:
                doors.append((ipaddress.ip_address(door.host), door.port))
            except ValueError:
                raise ConfigError(f"front_doors: expected IP:PORT, got {str(door)!r} (not an IP address)") from None
        return cls(by_app, [_network(n, "internal_networks") for n in internal], doors)


def _network(text: str, setting: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}") from None
