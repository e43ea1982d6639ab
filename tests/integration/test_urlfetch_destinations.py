"""URL Fetch decides on the host and address the connection uses: every way of writing an internal address —
Unicode digits and dots that NFKC/IDNA fold to ASCII, numeric IPv4 forms, IPv6 forms, zone ids, trailing dots,
userinfo, names that resolve to loopback — is refused with FORBIDDEN_DESTINATION, on the first hop and on a
redirect hop, and a real HTTP server on loopback receives nothing. Against a real urlfetch_svc process whose
app 'fetcher' may reach only 127.0.0.2 (the "public" test server); 127.0.0.1 and ::1 stay forbidden to it."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from kiln.api import _rpc, urlfetch
from kiln_platform.supervisor import python_module
from tests.integration import webservers
from tests.integration.conftest import SECRET, service_env

pytestmark = pytest.mark.nats

PUBLIC = "127.0.0.2"

# Hosts (and userinfo) that all lead to the loopback sink: {p4} is its IPv4 port, {p6} its IPv6 port.
FORMS = [
    "①②⑦.0.0.1:{p4}",                      # circled digits
    "１２７.０.０.１:{p4}",                   # full-width digits
    "𝟏𝟐𝟕.𝟎.𝟎.𝟏:{p4}",                       # mathematical bold digits
    "127。0。0。1:{p4}",                      # ideographic full stop
    "127．0．0．1:{p4}",                      # full-width full stop
    "127｡0｡0｡1:{p4}",                         # halfwidth ideographic full stop
    "①②⑦。０．0｡1:{p4}",                     # all of them at once
    "%31%32%37.0.0.1:{p4}",                   # percent-encoded digits
    "%E2%91%A0%E2%91%A1%E2%91%A6.0.0.1:{p4}", # percent-encoded circled digits
    "2130706433:{p4}",                        # decimal
    "0177.0.0.1:{p4}",                        # octal
    "0x7f.1:{p4}",                            # hex, short
    "0x7f000001:{p4}",                        # hex, whole
    "127.1:{p4}",                             # short
    "127.0.0.1.:{p4}",                        # trailing dot
    "localhost:{p4}",                         # a name in /etc/hosts
    "localhost.:{p4}",                        # ... with a trailing dot
    "LOCALHOST:{p4}",                         # ... in capitals
    "ｌｏｃａｌｈｏｓｔ:{p4}",                # ... in full-width letters (NFKC)
    "local\u00adhost:{p4}",                   # ... with a soft hyphen IDNA maps to nothing
    "evil@127.0.0.1:{p4}",                    # userinfo
    "127.0.0.2:8080@127.0.0.1:{p4}",          # userinfo that looks like the allowed host
    "[::ffff:127.0.0.1]:{p4}",                # IPv4-mapped IPv6
    "[0:0:0:0:0:ffff:7f00:1]:{p4}",           # ... written out

    "[::1]:{p6}",                             # IPv6 loopback
    "[0:0:0:0:0:0:0:1]:{p6}",                 # ... written out
    "[::1%25lo]:{p6}",                        # ... with a zone id
]

@pytest.fixture(scope="module")
def service(supervisor):
    ready = supervisor.run_dir / "urlfetch-destinations.addr"
    child = supervisor.start("urlfetch-destinations", python_module(
        "urlfetch_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
        "--allow-internal", f"fetcher={PUBLIC}/32"), env=service_env(), ready_file=ready)
    return child.address

@pytest.fixture(scope="module")
def sinks():
    """HTTP servers on 127.0.0.1 and ::1 that count what they receive; checked to count before use."""
    with webservers.serving("127.0.0.1") as v4, webservers.serving("::1") as v6:
        for server in (v4, v6):
            with urllib.request.urlopen(server.base + "/", timeout=10) as resp:
                assert resp.status == 200
            assert server.seen == ["/"]
            server.seen.clear()
        yield v4, v6

@pytest.fixture(scope="module")
def public():
    with webservers.serving(PUBLIC) as server:
        yield server

@pytest.fixture
def as_fetcher(service, monkeypatch):
    from kiln_platform import auth
    monkeypatch.setenv("KILN_URLFETCH_ADDR", service)
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, "fetcher"))
    _rpc.reset()
    yield
    _rpc.reset()

def url_for(form: str, sinks) -> str:
    v4, v6 = sinks
    return "http://" + form.format(p4=v4.server_address[1], p6=v6.server_address[1]) + "/secret"

def received(sinks) -> list[str]:
    return [path for server in sinks for path in server.seen]

@pytest.mark.parametrize("form", FORMS)
def test_an_internal_address_in_any_form_is_forbidden_and_never_contacted(as_fetcher, sinks, form):
    with pytest.raises(urlfetch.ForbiddenDestinationError):
        urlfetch.fetch(url_for(form, sinks), deadline=5)
    assert received(sinks) == []

@pytest.mark.parametrize("form", FORMS)
def test_a_redirect_to_an_internal_address_in_any_form_is_forbidden_and_never_contacted(
        as_fetcher, sinks, public, form):
    start = public.base + "/redirect?to=" + urllib.parse.quote(url_for(form, sinks), safe="")
    public.seen.clear()
    with pytest.raises(urlfetch.ForbiddenDestinationError):
        urlfetch.fetch(start, deadline=5)
    assert len(public.seen) == 1 and public.seen[0].startswith("/redirect?")  # the first hop was made
    assert received(sinks) == []

def test_the_allowed_server_is_fetched_by_its_normalised_name(as_fetcher, public):
    port = public.server_address[1]
    result = urlfetch.fetch(f"http://①②⑦．０。0｡2:{port}/echo")
    assert result.status_code == 200
    assert json.loads(result.content)["headers"]["Host"] == f"127.0.0.2:{port}"

def test_a_redirect_to_the_allowed_server_in_unicode_form_is_followed(as_fetcher, public):
    port = public.server_address[1]
    start = public.base + "/redirect?to=" + urllib.parse.quote(f"http://１２７.0.0.２:{port}/echo", safe="")
    result = urlfetch.fetch(start)
    assert result.status_code == 200 and json.loads(result.content)["path"] == "/echo"


# TLS with the address pinned: the connection goes to the checked address, while the TLS handshake still sends the
# host name (SNI) and the certificate is still verified against it. A second service trusts the test certificates
# (SSL_CERT_FILE) and allows the app 'tls' 127.0.0.1, where 'localhost' resolves.

@pytest.fixture(scope="module")
def named_tls(tmp_path_factory):
    with webservers.serving("127.0.0.1", tls_dir=tmp_path_factory.mktemp("good"), cert_name="localhost") as good, \
            webservers.serving("127.0.0.1", tls_dir=tmp_path_factory.mktemp("bad"), cert_name="wrong.test") as bad:
        trusted = tmp_path_factory.mktemp("trust") / "trusted.pem"
        trusted.write_bytes(b"".join((d / "cert.pem").read_bytes() for d in (
            good.cert_dir, bad.cert_dir)))
        yield good, bad, trusted


@pytest.fixture(scope="module")
def tls_service(supervisor, named_tls):
    ready = supervisor.run_dir / "urlfetch-tls.addr"
    env = {**service_env(), "SSL_CERT_FILE": str(named_tls[2])}
    child = supervisor.start("urlfetch-tls", python_module(
        "urlfetch_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
        "--allow-internal", "tls=127.0.0.1/32"), env=env, ready_file=ready)
    return child.address


@pytest.fixture
def as_tls_app(tls_service, monkeypatch):
    from kiln_platform import auth
    monkeypatch.setenv("KILN_URLFETCH_ADDR", tls_service)
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, "tls"))
    _rpc.reset()
    yield
    _rpc.reset()


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST", "ｌｏｃａｌｈｏｓｔ", "localhost."])
def test_https_to_a_name_sends_and_verifies_the_normalised_name_on_the_checked_address(as_tls_app, named_tls, name):
    good = named_tls[0]
    good.server_names.clear()
    result = urlfetch.fetch(f"https://{name}:{good.server_address[1]}/?close=1", validate_certificate=True)
    assert result.content == b"hello from 127.0.0.1"
    assert good.server_names == ["localhost"]


def test_https_to_a_name_the_certificate_does_not_name_fails(as_tls_app, named_tls):
    bad = named_tls[1]
    bad.seen.clear()
    with pytest.raises(urlfetch.SSLCertificateError):
        urlfetch.fetch(f"https://localhost:{bad.server_address[1]}/", validate_certificate=True)
    assert bad.seen == []
