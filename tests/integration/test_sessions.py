"""Sign-in sessions through a real router serving two apps, each with a real runtime instance.

A session is bound to the app it was started on, never reaches the app's code,
ends when idle or too old, and is renewed while in use.
"""

from __future__ import annotations

import http.client
import json
import socket
import textwrap
import time

import pytest

from kiln_platform.supervisor import python_module
from router.users import IDLE_SECONDS, MAX_SECONDS, RENEW_AFTER_SECONDS, Session, Sessions
from tests.integration.conftest import runtime_env, service_env

pytestmark = pytest.mark.nats

APPS = ("sessa", "sessb")  # app ids of their own: runtimes of other test modules share NATS
SECRET = service_env()["KILN_ROUTER_SESSION_SECRET"]
APP_YAML = """
runtime: python27
api_version: 1
threadsafe: true
handlers:
- url: /static
  static_dir: static
  expiration: 1d
- url: /admin/.*
  script: main.app
  login: admin
- url: /account/.*
  script: main.app
  login: required
- url: /.*
  script: main.app
"""
MAIN = r'''
import json, os
from kiln.api import users

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/set-cookies":
        start_response("200 OK", [("Set-Cookie", "kiln_login=stolen; Domain=example.test; Path=/"),
                                  ("Set-Cookie", "kiln_oidc=n; Path=/_ah/login/callback"),
                                  ("Set-Cookie", "theirs=1; Path=/")])
        return [b"set"]
    if path == "/public":
        start_response("200 OK", [("Cache-Control", "public, max-age=600")])
        return [b"public"]
    user = users.get_current_user()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"app": os.environ["APPLICATION_ID"], "email": user.email() if user else None,
                        "admin": users.is_current_user_admin(), "cookie": environ.get("HTTP_COOKIE")}).encode()]
'''


@pytest.fixture(scope="module")
def router(tmp_path_factory, supervisor, nats_url):
    app_dir = tmp_path_factory.mktemp("sessionapp")
    (app_dir / "app.yaml").write_text(textwrap.dedent(APP_YAML))
    (app_dir / "main.py").write_text(MAIN)
    (app_dir / "static").mkdir()
    (app_dir / "static" / "site.css").write_text("body {}\n")
    run = supervisor.run_dir
    for app in APPS:
        supervisor.start(f"runtime-{app}", python_module(
            "runtime", "--app-dir", str(app_dir), "--app-id", app, "--version-id", "v1", "--nats-url", nats_url,
            "--listen", "127.0.0.1:0", "--ready-file", str(run / f"runtime-{app}.addr")), env=runtime_env(app),
            ready_file=run / f"runtime-{app}.addr")
    started = supervisor.start("router-sessions", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
        "--apps", ",".join(f"{app}=v1" for app in APPS),
        "--app-dirs", ",".join(f"{app}/v1={app_dir}" for app in APPS),
        "--custom-domains", "www.sessa.org=sessa", "--admins", "sessa=boss@example.com;root@example.com",
        "--ready-file", str(run / "router-sessions.addr")), env=service_env(), ready_file=run / "router-sessions.addr")
    return started.address


def mint(app, email, *, admin=False, issued=None, expires=None):
    """A session cookie as the router makes it (the test knows the router's secret)."""
    now = int(time.time())
    issued = now if issued is None else issued
    expires = issued + IDLE_SECONDS if expires is None else expires
    value = Sessions(SECRET, auth_domain="gmail.com").encode(
        Session(app=app, email=email, admin=admin, issued=issued, expires=expires))
    return f"kiln_login={value}"


def request(address, path, *, host, cookies=()):
    """GET with each of ``cookies`` as a Cookie header of its own: (status, headers as lists, body)."""
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        for cookie in cookies:
            conn.putheader("Cookie", cookie)
        conn.endheaders()
        resp = conn.getresponse()
        headers: dict[str, list[str]] = {}
        for key, value in resp.getheaders():
            headers.setdefault(key.lower(), []).append(value)
        return resp.status, headers, resp.read()
    finally:
        conn.close()


def whoami(address, host, *cookies):
    status, _, body = request(address, "/whoami", host=host, cookies=cookies)
    assert status == 200
    return json.loads(body)


def raw(address, data: bytes) -> bytes:
    name, _, port = address.rpartition(":")
    with socket.create_connection((name, int(port)), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


# --- bound to one app ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["sessa.example.test", "v1-dot-sessa.example.test", "api.sessa.example.test",
                                  "www.sessa.org", "sessa.example.test.", "SESSA.Example.Test"])
def test_session_is_good_on_every_host_of_its_app(router, host):
    seen = whoami(router, host, mint("sessa", "ann@example.com"))
    assert seen["app"] == "sessa" and seen["email"] == "ann@example.com"


@pytest.mark.parametrize("host", ["sessb.example.test", "v1-dot-sessb.example.test", "api.sessb.example.test"])
def test_session_of_one_app_is_not_signed_in_on_another(router, host):
    cookie = mint("sessa", "ann@example.com", admin=True)
    seen = whoami(router, host, cookie)
    assert seen["app"] == "sessb" and seen["email"] is None and seen["admin"] is False
    status, headers, _ = request(router, "/account/home", host=host, cookies=[cookie])
    assert status == 302 and headers["location"][0].startswith("/_ah/login?")


def test_admin_session_of_one_app_does_not_open_another_apps_admin_pages(router):
    admin_of_a = mint("sessa", "root@example.com", admin=True)
    assert request(router, "/admin/x", host="sessa.example.test", cookies=[admin_of_a])[0] == 200
    status, headers, _ = request(router, "/admin/x", host="sessb.example.test", cookies=[admin_of_a])
    assert status == 302 and "location" in headers


def test_an_administrator_of_one_app_is_a_plain_user_on_another(router):
    # boss@ is configured as sessa's administrator; signed in to sessb, boss is just a user there.
    assert whoami(router, "sessa.example.test", mint("sessa", "boss@example.com"))["admin"] is True
    on_b = mint("sessb", "boss@example.com")
    assert whoami(router, "sessb.example.test", on_b) == {"app": "sessb", "email": "boss@example.com",
                                                          "admin": False, "cookie": None}
    assert request(router, "/admin/x", host="sessb.example.test", cookies=[on_b])[0] == 403


def test_with_several_session_cookies_the_one_for_this_app_counts(router):
    seen = whoami(router, "sessb.example.test", mint("sessa", "ann@example.com"), mint("sessb", "bob@example.com"))
    assert seen["email"] == "bob@example.com"


# --- never seen by the app ----------------------------------------------------------------------

@pytest.mark.parametrize(("cookies", "app_sees"), [
    (["SESSION"], None),
    (["a=1; SESSION; b=2"], "a=1; b=2"),
    (["SESSION; a=1; SESSION; kiln_login=junk; b=2; SESSION"], "a=1; b=2"),
    (["a=1;SESSION;b=2"], "a=1;b=2"),
    (["a=1;  kiln_login  =  VALUE ;b=2"], "a=1;b=2"),
    (['a="quoted value"; kiln_login="junk"; SESSION'], 'a="quoted value"'),
    (['a="x; SESSION; b=y"'], 'a="x; b=y"'),
    (["Kiln_Login=1; KILN_LOGIN=2; SESSION; kiln_Oidc=3"], "Kiln_Login=1; KILN_LOGIN=2; kiln_Oidc=3"),
    (["kiln_oidc=nonce; a=1; SESSION"], "a=1"),
    (["a=1; SESSION", "kiln_oidc=n; b=2", "SESSION"], None),
])
def test_app_never_sees_the_router_cookies_and_sees_every_other_cookie(router, cookies, app_sees):
    session = mint("sessa", "ann@example.com")
    sent = [c.replace("SESSION", session).replace("VALUE", session.partition("=")[2]) for c in cookies]
    seen = whoami(router, "sessa.example.test", *sent)
    assert seen["email"] == "ann@example.com"
    if len(cookies) > 1:  # several Cookie headers: each loses the router's cookies; the app may see them joined
        assert seen["cookie"] is not None
        pairs = [p.strip() for part in seen["cookie"].split(",") for p in part.split(";")]
        assert sorted(p for p in pairs if p) == ["a=1", "b=2"]
    else:
        assert seen["cookie"] == app_sees
    assert "kiln_login" not in (seen["cookie"] or "") and "kiln_oidc" not in (seen["cookie"] or "")


def test_app_cannot_set_the_router_cookies(router):
    status, headers, _ = request(router, "/set-cookies", host="sessa.example.test")
    assert status == 200
    assert headers["set-cookie"] == ["theirs=1; Path=/"]


# --- lifetime -----------------------------------------------------------------------------------

@pytest.mark.parametrize("times", [
    {"issued": -IDLE_SECONDS - 60, "expires": -60},                          # idle for longer than allowed
    {"issued": -MAX_SECONDS - 60, "expires": -60},                           # past the absolute limit
    {"issued": -MAX_SECONDS + 600, "expires": MAX_SECONDS},                  # signed to outlive the limit
    {"issued": 3600, "expires": 3600 + IDLE_SECONDS},                        # issued in the future
    {"issued": -1, "expires": -1},                                           # ends now
])
def test_expired_or_out_of_bounds_session_is_not_signed_in(router, times):
    now = int(time.time())
    cookie = mint("sessa", "ann@example.com", admin=True, issued=now + times["issued"],
                  expires=now + times["expires"])
    assert whoami(router, "sessa.example.test", cookie)["email"] is None
    assert request(router, "/account/x", host="sessa.example.test", cookies=[cookie])[0] == 302


def _set_session(headers):
    found = [c for c in headers.get("set-cookie", []) if c.startswith("kiln_login=")]
    assert len(found) <= 1
    return found[0] if found else None


def _decode(set_cookie):
    value = set_cookie.split(";", 1)[0].partition("=")[2]
    return Sessions(SECRET, auth_domain="gmail.com").decode(value, app="sessa")


@pytest.mark.parametrize(("path", "expected"), [
    ("/whoami", 200),               # the app's answer
    ("/public", 200),               # the app's answer, publicly cacheable as the app sent it
    ("/static/site.css", 200),      # a static file the router serves
    ("/static/missing.css", 404),   # the router's own error
    ("/admin/x", 403),              # refused by login: admin
])
def test_session_in_use_is_renewed_on_any_response(router, path, expected):
    now = int(time.time())
    issued = now - 2 * RENEW_AFTER_SECONDS
    cookie = mint("sessa", "ann@example.com", issued=issued)
    status, headers, _ = request(router, path, host="sessa.example.test", cookies=[cookie])
    assert status == expected
    renewal = _set_session(headers)
    assert renewal is not None
    attributes = {a.strip().split("=", 1)[0].lower() for a in renewal.split(";")[1:]}
    assert {"httponly", "max-age", "path", "samesite"} <= attributes and "domain" not in attributes
    renewed = _decode(renewal)
    assert renewed is not None and renewed.issued == issued and renewed.email == "ann@example.com"
    assert renewed.expires >= now + IDLE_SECONDS
    # A response carrying a session is never shared: private, whatever else the app or the static handler said.
    directives = [d.strip() for d in headers["cache-control"][0].split(",")]
    assert len(headers["cache-control"]) == 1 and "private" in directives and "public" not in directives


def test_fresh_session_is_not_renewed(router):
    _, headers, _ = request(router, "/whoami", host="sessa.example.test", cookies=[mint("sessa", "ann@example.com")])
    assert _set_session(headers) is None


def test_renewal_stops_at_the_absolute_limit(router):
    now = int(time.time())
    issued = now - MAX_SECONDS + 600
    capped = mint("sessa", "ann@example.com", issued=issued, expires=issued + MAX_SECONDS)
    _, headers, _ = request(router, "/whoami", host="sessa.example.test", cookies=[capped])
    assert _set_session(headers) is None
    near = mint("sessa", "ann@example.com", issued=issued, expires=now + 60)
    _, headers, _ = request(router, "/whoami", host="sessa.example.test", cookies=[near])
    renewed = _decode(_set_session(headers))
    assert renewed is not None and renewed.expires == issued + MAX_SECONDS


def test_renewed_cookie_keeps_the_visitor_signed_in(router):
    cookie = mint("sessa", "ann@example.com", issued=int(time.time()) - 2 * RENEW_AFTER_SECONDS)
    _, headers, _ = request(router, "/whoami", host="sessa.example.test", cookies=[cookie])
    renewed = _set_session(headers).split(";", 1)[0]
    assert whoami(router, "v1-dot-sessa.example.test", renewed)["email"] == "ann@example.com"
    assert whoami(router, "sessb.example.test", renewed)["email"] is None


def test_no_renewal_for_another_apps_session(router):
    cookie = mint("sessa", "ann@example.com", issued=int(time.time()) - 2 * RENEW_AFTER_SECONDS)
    _, headers, _ = request(router, "/whoami", host="sessb.example.test", cookies=[cookie])
    assert _set_session(headers) is None


# --- any bytes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mac", [
    "é".encode("latin-1") * 64,                   # a Latin-1 byte
    "é".encode() * 64,                            # UTF-8
    "０".encode() * 64,                           # full-width digits
    b"0" * 63 + b"\xff",                          # not UTF-8 at all
    "٣".encode() * 64,                            # Arabic-Indic digits
    b"0" * 32 + "\u2028".encode() + b"0" * 31,    # a line separator
])
@pytest.mark.parametrize("path", [b"/whoami", b"/account/x"])
def test_non_ascii_session_mac_is_signed_out_not_an_error(router, mac, path):
    session = mint("sessa", "ann@example.com").encode()
    forged = session.rpartition(b".")[0] + b"." + mac
    answer = raw(router, b"GET " + path + b" HTTP/1.1\r\nHost: sessa.example.test\r\nCookie: a=1; " + forged +
                 b"\r\nConnection: close\r\n\r\n")
    status = answer.split(b"\r\n", 1)[0].split(b" ")[1]
    if path == b"/whoami":
        assert status == b"200" and b'"email": null' in answer
    else:
        assert status == b"302" and b"/_ah/login?" in answer


@pytest.mark.parametrize("payload", ["é".encode(), b"\xff\xfe", "ｅｙＪ".encode()])
def test_non_ascii_session_payload_is_signed_out_not_an_error(router, payload):
    session = mint("sessa", "ann@example.com").encode()
    forged = b"kiln_login=" + payload + session.partition(b"=")[2]
    answer = raw(router, b"GET /whoami HTTP/1.1\r\nHost: sessa.example.test\r\nCookie: " + forged +
                 b"\r\nConnection: close\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"200" and b'"email": null' in answer
