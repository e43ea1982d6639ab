"""Cluster mode's address and cookie rules (console/signin.py), without sockets: which hosts are the console's,
where a sign-in may continue, and which cookies count as a sign-in."""

from __future__ import annotations

import time

import pytest
from aiohttp.test_utils import make_mocked_request

from console.config import ConsoleConfig
from console.signin import COOKIE, SignIn
from kiln_platform import signing
from kiln_platform.config import HostPort, Secret

KEY = "unit-session-secret"


@pytest.fixture
def signin() -> SignIn:
    return SignIn(ConsoleConfig(oidc_issuer="https://id.example.com", oidc_client_id="console",
                                oidc_client_secret=Secret("s"), public_url="https://console.example.com",
                                admins="shop=ann@example.com", session_secret=Secret(KEY),
                                gateway=HostPort("control", 7000), gateway_token=Secret("t")))


@pytest.mark.parametrize(("host", "app"), [("shop.console.example.com", "shop"), ("Shop.Console.Example.com", "shop"),
                                           ("a.b.console.example.com", None),
                                           ("shop.console.example.com.evil.example", None),
                                           ("shopconsole.example.com", None), ("-x.console.example.com", None)])
def test_the_app_is_the_first_label_of_an_app_host(signin, host, app):
    assert signin.app_of(host) == app
    assert signin.host_ok(host) == (app is not None)


def test_the_pickers_host_is_answered(signin):
    assert signin.host_ok("console.example.com") and not signin.host_ok("evil.example")


@pytest.mark.parametrize(("value", "url"), [
    ("shop.console.example.com/datastore?kind=A", "https://shop.console.example.com/datastore?kind=A"),
    ("console.example.com/", "https://console.example.com/"),
    ("evil.example/datastore", "https://console.example.com/"),
    ("shop.console.example.com//evil.example/", "https://console.example.com/"),
    ("shop.console.example.com/\\evil.example/", "https://console.example.com/"),
    ("shop.console.example.com", "https://console.example.com/"),
])
def test_a_sign_in_continues_only_to_the_consoles_own_addresses(signin, value, url):
    assert signin._continue(value) == url


def _identity(signin: SignIn, cookie: str) -> str | None:
    return signin.identity(make_mocked_request("GET", "/", headers={"Cookie": f"{COOKIE}={cookie}"}))


def test_a_signed_unexpired_cookie_is_a_sign_in(signin):
    assert _identity(signin, signing.seal(KEY, "console-signin", {"e": "ann@example.com",
                                                                  "x": int(time.time()) + 60})) == "ann@example.com"


@pytest.mark.parametrize("cookie", [
    signing.seal(KEY, "console-signin", {"e": "ann@example.com", "x": int(time.time()) - 1}),  # expired
    signing.seal("another-key", "console-signin", {"e": "ann@example.com", "x": int(time.time()) + 60}),  # forged
    signing.seal(KEY, "oidc-state", {"e": "ann@example.com", "x": int(time.time()) + 60}),  # another purpose
    signing.seal(KEY, "console-signin", {"e": "ann@example.com", "x": "9999999999"}),  # expiry not a number
    signing.seal(KEY, "console-signin", {"e": ["ann@example.com"], "x": int(time.time()) + 60}),
    "", "x.y", "\u00e9" * 80,
])
def test_any_other_cookie_is_no_sign_in(signin, cookie):
    assert _identity(signin, cookie) is None
