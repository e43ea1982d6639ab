"""router.hosts: Host header to app and version."""

from router.hosts import Target, resolve

VERSIONS = {"guestbook": "v1"}


def test_app_domain_reaches_default_version():
    assert resolve("guestbook.example.com", domain="example.com", versions=VERSIONS, dev_app=None) == Target("guestbook", "v1")


def test_any_subdomain_reaches_the_app():
    assert resolve("www.guestbook.example.com", domain="example.com", versions=VERSIONS, dev_app=None) == Target("guestbook", "v1")


def test_version_dot_app_reaches_that_version():
    assert resolve("v2-dot-guestbook.example.com", domain="example.com", versions=VERSIONS,
                   dev_app=None) == Target("guestbook", "v2", explicit_version=True)


def test_sub_dot_version_dot_app_reaches_that_version():
    assert resolve("api-dot-v3-dot-guestbook.example.com", domain="example.com", versions=VERSIONS,
                   dev_app=None) == Target("guestbook", "v3", explicit_version=True)


def test_unknown_app_or_domain_is_none():
    assert resolve("nope.example.com", domain="example.com", versions=VERSIONS, dev_app=None) is None
    assert resolve("guestbook.other.org", domain="example.com", versions=VERSIONS, dev_app=None) is None


def test_dev_mode_routes_every_host_to_the_app():
    assert resolve("anything", domain="example.com", versions=VERSIONS, dev_app="guestbook") == Target("guestbook", "v1")


def test_instance_dot_version_dot_app_reaches_that_instance():
    instance = "0123456789abcdef0123456789abcdef"
    assert resolve(f"{instance}-dot-v1-dot-guestbook.example.com", domain="example.com", versions=VERSIONS,
                   dev_app=None) == Target("guestbook", "v1", explicit_version=True, instance_id=instance)


# --- parse_host / request_host: the one Host parser ------------------------------------------------------

import pytest  # noqa: E402

from router.hosts import BadHostError, Host, parse_host, request_host  # noqa: E402


@pytest.mark.parametrize(("raw", "name", "port"), [
    ("Probe.Example.Test", "probe.example.test", None),
    ("probe.example.test.:8080", "probe.example.test", 8080),
    ("localhost:1", "localhost", 1),
    ("127.0.0.1:65535", "127.0.0.1", 65535),
    ("[::1]", "[::1]", None),
    ("[2001:DB8::1]:443", "[2001:db8::1]", 443),
    ("xn--caf-dma.test", "xn--caf-dma.test", None),
])
def test_valid_hosts_are_normalised(raw, name, port):
    assert parse_host(raw) == Host(name, port, raw)


@pytest.mark.parametrize("raw", ["", "bad host", "bad\x01host", "tab\thost", "caf\u00e9.test", "host:", "host:0",
                                 "host:65536", "host:99999999", "host:-1", "host:8o", "host:80:81", ":80", "a..b",
                                 ".a", "-a.test", "[::1", "[zz::1]", "[::1]x", "[::1]:", "a/b", "a@b", "x" * 300])
def test_bad_hosts_are_refused(raw):
    with pytest.raises(BadHostError):
        parse_host(raw)


def test_several_host_headers_are_refused():
    with pytest.raises(BadHostError):
        request_host(["a.test", "b.test"], None)


def test_a_missing_host_header_is_refused():
    with pytest.raises(BadHostError):
        request_host([], None)


def test_an_absolute_form_authority_wins_over_the_host_header():
    assert request_host(["a.test"], "b.test:81") == Host("b.test", 81, "b.test:81")


def test_the_port_defaults_to_the_schemes():
    assert (parse_host("a.test").port_for("https"), parse_host("a.test").port_for("http")) == (443, 80)


def test_a_host_is_parsed_once_and_a_refused_one_every_time():
    parse_host.cache_clear()
    first = parse_host("Cached.Test:8080")
    assert parse_host("Cached.Test:8080") is first
    for _ in range(2):
        with pytest.raises(BadHostError):
            parse_host("bad host")
    info = parse_host.cache_info()
    assert (info.hits, info.currsize) == (1, 1)
