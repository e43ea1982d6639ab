"""The ``dispatch.yaml`` model: an app's routing rules, sending requests to services by host and path::

    dispatch:
    - url: "*/favicon.ico"
      service: default
    - url: "api.example.com/*"
      service: api
    - url: "*/mobile/*"
      service: mobile-frontend      # or the older ``module:``

A rule's ``url`` is ``HOST/PATH``: HOST is an exact host name, or ``*`` followed by a suffix (``*``, ``*.example.com``,
``*example.com``); PATH starts with ``/`` and may end with ``*`` (a prefix), with no other ``*`` (App Engine's
documentation: glob characters only at the start and the end). At most :data:`MAX_RULES` rules; neither host nor
path longer than :data:`MAX_PART` characters. The first rule that matches a request decides its service; paths
under ``/_ah/`` are not dispatched (except :data:`DISPATCHED_AH_PREFIXES`), as on App Engine.

A malformed file — unknown fields, a url without a path, a ``*`` elsewhere, an IPv4 host, a service name App Engine
would refuse, both ``service`` and ``module`` — gives an error naming the file, line and field, as ``app.yaml``
errors do. Google's parser (``google.appengine.api.dispatchinfo``) is the reference: ``tests/fixtures/`` holds its
answers and a test compares (it accepts a ``*`` inside a path and more than 20 rules, which App Engine's deploy
refuses; kiln refuses them when parsing).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import re

from kiln_platform.appyaml import _check_keys, _Map, _str, top_level_list

__all__ = ["DISPATCHED_AH_PREFIXES", "MAX_PART", "MAX_RULES", "Rule", "dispatched", "load", "match", "parse"]

MAX_RULES = 20  # App Engine's limit per app
MAX_PART = 100  # characters of a rule's host or path
# /_ah/ paths App Engine still dispatches (devappserver2's list, kept in sync with production's).
DISPATCHED_AH_PREFIXES = ("/_ah/queue/deferred", "/_ah/api")

_URL = re.compile(r"^([^/]+)(/.*)$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_EXACT_HOST = re.compile(rf"^(?:{_LABEL}\.)*{_LABEL}$")
# What may follow a leading '*': nothing, the end of a label, or '.'/a label's end and then whole labels.
_SUFFIX = re.compile(rf"^(?:|[a-z0-9-]*[a-z0-9]|(?:\.|[a-z0-9-]*[a-z0-9]\.)(?:{_LABEL}\.)*{_LABEL})$")
SERVICE_RE = re.compile(r"^(?!-)[a-z0-9-]{0,62}[a-z0-9]$")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One ``dispatch:`` entry.

    Attributes:
        url: The pattern as written.
        host: The host without its leading ``*``; a suffix when ``host_exact`` is false.
        path: The path without its trailing ``*``; a prefix when ``path_exact`` is false.
        service: The service that serves what the rule matches.
    """

    url: str
    host: str
    host_exact: bool
    path: str
    path_exact: bool
    service: str

    def matches(self, host: str, path: str) -> bool:
        """Whether a request for ``host`` (lower case, no port) and ``path`` matches the rule."""
        if self.host_exact:
            if host != self.host:
                return False
        elif not host.endswith(self.host):
            return False
        return path == self.path if self.path_exact else path.startswith(self.path)


def dispatched(path: str) -> bool:
    """Whether dispatch rules apply to ``path`` (App Engine leaves ``/_ah/`` to the serving version, but a few)."""
    return not path.startswith("/_ah/") or path.startswith(DISPATCHED_AH_PREFIXES)


def match(rules: tuple[Rule, ...] | list[Rule], host: str, path: str) -> str | None:
    """The service of the first rule matching ``host`` and ``path``, or ``None`` (default routing)."""
    if not dispatched(path):
        return None
    for rule in rules:
        if rule.matches(host, path):
            return rule.service
    return None


def parse_url(url: str) -> Rule:
    """The host and path parts of a rule's ``url`` (service left empty); ValueError says what is wrong."""
    found = _URL.match(url)
    if found is None:
        raise ValueError(f"expected HOST/PATH (e.g. '*/api/*' or 'www.example.com/*'), got {url!r}")
    host_pattern, path_pattern = found.groups()
    host_exact = not host_pattern.startswith("*")
    host = host_pattern if host_exact else host_pattern[1:]
    if host_exact:
        if not _EXACT_HOST.match(host):
            raise ValueError(f"the host {host_pattern!r} is not a host name (lower-case letters, digits, hyphens "
                             "and dots; '*' only as its first character)")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            pass
        else:
            raise ValueError(f"the host may not be an IPv4 address, got {host!r}")
    elif not _SUFFIX.match(host):
        raise ValueError(f"the host pattern {host_pattern!r} is not '*' followed by a host name's end ('*', "
                         "'*.example.com', '*example.com'; '*' only as its first character)")
    path_exact = not path_pattern.endswith("*")
    path = path_pattern if path_exact else path_pattern[:-1]
    if "*" in path:
        raise ValueError(f"the path {path_pattern!r} may hold '*' only as its last character")
    if len(host_pattern) > MAX_PART or len(path_pattern) > MAX_PART:
        raise ValueError(f"neither the host nor the path may be longer than {MAX_PART} characters")
    return Rule(url=url, host=host, host_exact=host_exact, path=path, path_exact=path_exact, service="")


def parse(text: str, *, filename: str = "dispatch.yaml") -> list[Rule]:
    """Parse dispatch.yaml text.

    Raises:
        AppYamlError: the message names the file, line and field.
    """
    ctx, data, entries = top_level_list(text, filename, "dispatch", {"application", "dispatch"}, "a dispatch list")
    if len(entries) > MAX_RULES:
        raise ctx.fail(data, "dispatch", "dispatch", f"at most {MAX_RULES} rules, got {len(entries)}")
    rules: list[Rule] = []
    for i, entry in enumerate(entries):
        where = f"dispatch[{i}]"
        if not isinstance(entry, _Map):
            raise ctx.fail(entries, i, where, "must be a mapping with url and service")
        _check_keys(ctx, entry, {"url", "service", "module"}, where)
        url = _str(ctx, entry, "url", where + ".", required=True) or ""
        try:
            parsed = parse_url(url)
        except ValueError as exc:
            raise ctx.fail(entry, "url", where + ".url", str(exc)) from None
        if entry.get("service") is not None and entry.get("module") is not None:
            raise ctx.fail(entry, "module", where + ".module", "give service or its older name module, not both")
        key = "module" if entry.get("module") is not None else "service"
        service = _str(ctx, entry, key, where + ".")
        if service is None:
            raise ctx.fail(entry, None, where + ".service", "required field is missing")
        if not SERVICE_RE.match(service):
            raise ctx.fail(entry, key, f"{where}.{key}", "must be a service name (1 to 63 lower-case letters, "
                                                          f"digits and hyphens, not starting or ending with a hyphen), "
                                                          f"got {service!r}")
        rules.append(dataclasses.replace(parsed, service=service))
    return rules


def load(path: pathlib.Path) -> list[Rule]:
    """Parse a dispatch.yaml file; a missing file declares no rules."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return parse(text, filename=str(path))
