"""The router's own cookies: their names, reading them, and keeping them away from apps.

The sign-in session (``kiln_login``) and the OpenID Connect nonce
(``kiln_oidc``) belong to the router. An app must never read them (its owner
could replay a visitor's session) nor set them (it could sign visitors in as
someone else, or, with ``Domain=``, toss a cookie at another app's hosts), so
they are removed from the ``Cookie`` headers forwarded to apps and from the
``Set-Cookie`` headers apps answer with.

A ``Cookie`` header is split at *every* ``;``: browsers never put one inside
a value (it ends the value in ``Set-Cookie``), and splitting as a quoting-aware
parser would lets an app wrap the router's cookie inside a quoted value of its
own (``a="x; kiln_login=...; b=y"`` from cookies ``a="x`` and ``b=y"``). Names
are compared after trimming whitespace and case-sensitively, as browsers and
RFC 6265 do: ``Kiln_Login`` is an app's cookie and reaches the app untouched.
Every pair that is not the router's keeps its exact text.
"""

from __future__ import annotations

from collections.abc import Iterable

SESSION = "kiln_login"
NONCE = "kiln_oidc"
ROUTER_COOKIES = frozenset({SESSION, NONCE})


def _name(pair: str) -> str:
    return pair.partition("=")[0].strip()


def values(headers: Iterable[str], name: str) -> list[str]:
    """Every value of cookie ``name`` in these ``Cookie`` header values, in order (quotes kept)."""
    found = []
    for header in headers:
        for pair in header.split(";"):
            if "=" in pair and _name(pair) == name:
                found.append(pair.partition("=")[2].strip())
    return found


def without_router_cookies(header: str) -> str:
    """A ``Cookie`` header value without the router's cookies; the other pairs keep their exact text."""
    kept = [pair for pair in header.split(";") if _name(pair) not in ROUTER_COOKIES]
    return ";".join(kept).strip(" \t")


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Request headers bound for an app, with the router's cookies removed from every ``Cookie`` header.

    A ``Cookie`` header left with no cookie is dropped altogether; other headers pass as they are.
    """
    out = []
    for name, value in headers:
        if name.lower() == "cookie":
            value = without_router_cookies(value)
            if not value.strip(" \t;"):
                continue
        out.append((name, value))
    return out


def sets_router_cookie(set_cookie: str) -> bool:
    """Whether a ``Set-Cookie`` header value sets (or deletes) one of the router's cookies."""
    return _name(set_cookie.split(";", 1)[0]) in ROUTER_COOKIES
