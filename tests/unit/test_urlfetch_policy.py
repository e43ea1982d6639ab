"""URL Fetch's URL rules and address policy, without the network."""

from __future__ import annotations

import pytest

from kiln.errors import ConfigError
from kiln_platform.config import HostPort
from urlfetch_svc.policy import ForbiddenDestination, InvalidUrl, Policies, Policy, join, parse_url


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
    policies = Policies.parse("app1=127.0.0.2/32;10.0.0.0/8,app2=192.168.0.0/16", ())
    policies.for_app("app1").check("10.9.9.9")
    policies.for_app("app1").check("127.0.0.2")
    with pytest.raises(ForbiddenDestination):
        policies.for_app("app1").check("127.0.0.1")
    with pytest.raises(ForbiddenDestination):
        policies.for_app("app3").check("10.9.9.9")


def test_an_allowance_for_every_app_applies_to_all():
    policies = Policies.parse("*=127.0.0.0/8", ())
    policies.for_app("anyone").check("127.0.0.5")


def test_operator_networks_count_as_internal_even_when_public():
    policy = Policies.parse("", ["203.0.113.0/24"]).for_app("a")
    with pytest.raises(ForbiddenDestination):
        policy.check("203.0.113.7")
    policy.check("8.8.8.8")


@pytest.mark.parametrize("allow, internal", [("app1", ()), ("=10.0.0.0/8", ()), ("a=10.0.0.300/8", ()),
                                             ("", ["nonsense"])])
def test_malformed_settings_are_config_errors(allow, internal):
    with pytest.raises(ConfigError):
        Policies.parse(allow, internal)


def test_the_routers_front_door_is_reachable_but_not_other_ports_on_its_address():
    policy = Policies.parse("", (), [HostPort("127.0.0.1", 8080)]).for_app("a")
    policy.check("127.0.0.1", 8080)
    with pytest.raises(ForbiddenDestination):
        policy.check("127.0.0.1", 50051)


# The host normaliser: parse_url decides the host the connection will use, so every spelling of an address must
# come out as that address.

LOOPBACK_SPELLINGS = [
    "①②⑦.0.0.1", "１２７.０.０.１", "𝟏𝟐𝟕.𝟎.𝟎.𝟏", "127。0。0。1", "127．0．0．1", "127｡0｡0｡1", "①②⑦。０．0｡1",
    "%31%32%37.0.0.1", "%E2%91%A0%E2%91%A1%E2%91%A6.0.0.1", "%EF%BC%91%EF%BC%92%EF%BC%97.0.0.1",
    "2130706433", "0177.0.0.1", "0177.0.0.01", "0x7f.1", "0x7F.0.0.1", "0x7f000001", "017700000001", "127.1",
    "127.0.1", "127.0.0.0x1", "127.0.0.1.", "１２７．１", "０ｘ７ｆ.1", "2130706433.",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_an_ipv4_address_normalises_to_it(host):
    target = parse_url(f"http://{host}:8080/x")
    assert (target.host, str(target.address), target.port) == ("127.0.0.1", "127.0.0.1", 8080)
    assert target.url == "http://127.0.0.1:8080/x"


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS + ["[::1]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]",
                                                       "[0:0:0:0:0:ffff:7f00:1]", "[::ffff:7f00:1]", "0", "0.0.0.0",
                                                       "0x0", "[::]", "169.254.169.254", "0xa9fea9fe",
                                                       "２５４.169.254.169", "10.1", "0300.0250.1.1"])
def test_every_spelling_of_an_internal_address_is_forbidden_by_the_policy(host):
    target = parse_url(f"http://{host}/")
    assert target.address is not None
    with pytest.raises(ForbiddenDestination):
        Policy().check(str(target.address), target.port)


@pytest.mark.parametrize("host, expected", [
    ("[::1]", "::1"), ("[0:0:0:0:0:0:0:1]", "::1"), ("[::FFFF:127.0.0.1]", "::ffff:7f00:1"),
    ("[0:0:0:0:0:ffff:7f00:1]", "::ffff:7f00:1"), ("[2606:4700:4700:0:0:0:0:1111]", "2606:4700:4700::1111"),
])
def test_ipv6_addresses_normalise_to_their_compressed_form(host, expected):
    target = parse_url(f"http://{host}:8080/")
    assert (target.host, str(target.address)) == (expected, expected)
    assert target.url == f"http://[{expected}]:8080/"


@pytest.mark.parametrize("name, expected", [
    ("münchen.de", "xn--mnchen-3ya.de"), ("MÜNCHEN.DE", "xn--mnchen-3ya.de"), ("faß.de", "xn--fa-hia.de"),
    ("пример.рф", "xn--e1afmkfd.xn--p1ai"), ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ("ελλάδα.gr", "xn--hxakic4aa.gr"), ("xn--mnchen-3ya.de", "xn--mnchen-3ya.de"),
    ("ｅｘａｍｐｌｅ．ｃｏｍ", "example.com"), ("Ⓔxample。com", "example.com"), ("exam\u00adple.com", "example.com"),
    ("Example.COM", "example.com"), ("%65xample.com", "example.com"),
])
def test_non_ascii_public_names_normalise_to_their_ascii_form(name, expected):
    target = parse_url(f"https://{name}/p?q=1#frag")
    assert (target.host, target.address, target.port) == (expected, None, 443)
    assert target.url == f"https://{expected}/p?q=1"


def test_a_trailing_dot_is_kept_in_the_host_and_dropped_for_resolving():
    target = parse_url("http://localhost./")
    assert (target.host, target.name) == ("localhost.", "localhost")


@pytest.mark.parametrize("url, message", [
    ("http://foo.0x7f/", "ends in a number but is not a valid IPv4 address"),
    ("http://1.2.3.4.5/", "ends in a number"),
    ("http://4294967296/", "ends in a number"),
    ("http://256.0.0.1/", "ends in a number"),
    ("http://a%2fb.com/", "does not normalise to a valid domain name"),
    ("http://exa%00mple.com/", "does not normalise to a valid domain name"),
    ("http://[::ffff:７f00:1]/", "IPv4 or IPv6 address"),
    ("http://[1::2::3]/", "IPv4 or IPv6 address"),
    ("http://127.0.0.2:8080\\@127.0.0.1/", "ambiguous"),
])
def test_hosts_that_do_not_normalise_cleanly_are_invalid_with_the_reason(url, message):
    with pytest.raises(InvalidUrl, match=message):
        parse_url(url)


@pytest.mark.parametrize("url, host", [("http://evil@127.0.0.1/", "127.0.0.1"),
                                       ("http://u:p@example.com/", "example.com"),
                                       ("http://127.0.0.2:8080@①②⑦.0.0.1/", "127.0.0.1")])
def test_credentials_are_refused_only_once_the_destination_is_known(url, host):
    target = parse_url(url)
    assert target.host == host and "@" not in target.url
    with pytest.raises(InvalidUrl, match="credentials"):
        target.raise_if_invalid()


@pytest.mark.parametrize("url, address", [("http://[::1%25lo]/", "::1"), ("http://[fe80::1%eth0]:8080/", "fe80::1"),
                                          ("http://[::ffff:127.0.0.1%251]/", "::ffff:7f00:1")])
def test_a_zone_id_is_refused_once_the_address_is_known(url, address):
    target = parse_url(url)
    assert str(target.address) == address and "%" not in target.url
    with pytest.raises(InvalidUrl, match="zone ids"):
        target.raise_if_invalid()


@pytest.mark.parametrize("location, expected", [
    ("/next", "http://a.example/next"), ("//①②⑦.0.0.1:8080/x", "http://127.0.0.1:8080/x"),
    ("http://０x7f.1/", "http://127.0.0.1/"), ("https://münchen.de/", "https://xn--mnchen-3ya.de/"),
    ("//[::1%25lo]/", "http://[::1%25lo]/"),
])
def test_redirect_locations_are_joined_by_the_same_rules(location, expected):
    assert join("http://a.example/start", location) == expected
