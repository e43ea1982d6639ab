"""URL Fetch's URL rules and address policy, without the network."""

from __future__ import annotations

import pytest

from kiln.errors import ConfigError
from urlfetch_svc.policy import ForbiddenDestination, InvalidUrl, Policies, Policy, parse_url


def test_a_plain_url_splits_with_default_ports():
    assert parse_url("https://example.com/x").port == 443
    assert parse_url("http://example.com:8080/x").port == 8080


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "scheme must be http or https"),
    ("gopher://example.com/", "scheme must be http or https"),
    ("http://example.com:25/", "port 25 is not allowed"),
    ("http://example.com:91/", "port 91 is not allowed"),
    ("http://:80/", "no host"),
    ("http://a b.com/", "spaces or control characters"),
    ("http://u:p@example.com/", "credentials"),
])
def test_urls_app_engine_would_not_fetch_are_invalid(url, message):
    with pytest.raises(InvalidUrl, match=message):
        parse_url(url)


@pytest.mark.parametrize("port", [80, 90, 440, 450, 1024, 65535])
def test_app_engines_port_ranges_are_allowed(port):
    assert parse_url(f"http://example.com:{port}/").port == port


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:10.0.0.1",
                                     "224.0.0.1", "255.255.255.255"])
def test_internal_addresses_are_forbidden_by_default(address):
    with pytest.raises(ForbiddenDestination):
        Policy().check(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    Policy().check(address)


def test_an_apps_allowance_opens_only_its_networks():
    policies = Policies.parse("app1=127.0.0.2/32;10.0.0.0/8,app2=192.168.0.0/16", "")
    policies.for_app("app1").check("10.9.9.9")
    policies.for_app("app1").check("127.0.0.2")
    with pytest.raises(ForbiddenDestination):
        policies.for_app("app1").check("127.0.0.1")
    with pytest.raises(ForbiddenDestination):
        policies.for_app("app3").check("10.9.9.9")


def test_an_allowance_for_every_app_applies_to_all():
    policies = Policies.parse("*=127.0.0.0/8", "")
    policies.for_app("anyone").check("127.0.0.5")


def test_operator_networks_count_as_internal_even_when_public():
    policy = Policies.parse("", "203.0.113.0/24").for_app("a")
    with pytest.raises(ForbiddenDestination):
        policy.check("203.0.113.7")
    policy.check("8.8.8.8")


@pytest.mark.parametrize("allow, internal", [("app1", ""), ("=10.0.0.0/8", ""), ("a=10.0.0.300/8", ""),
                                             ("", "nonsense")])
def test_malformed_settings_are_config_errors(allow, internal):
    with pytest.raises(ConfigError):
        Policies.parse(allow, internal)


def test_the_routers_front_door_is_reachable_but_not_other_ports_on_its_address():
    policy = Policies.parse("", "", "127.0.0.1:8080").for_app("a")
    policy.check("127.0.0.1", 8080)
    with pytest.raises(ForbiddenDestination):
        policy.check("127.0.0.1", 50051)
