"""Production sign-in through a real OpenID Connect provider (NAV's mock-oauth2-server, on loopback)."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

from kiln_platform.supervisor import free_port, python_module
from tests.integration.conftest import ROOT, runtime_env, service_env

pytestmark = pytest.mark.nats

HOST = "signin.example.test"  # an app id of its own: runtimes of other test modules share NATS
OTHER_HOST = "signinb.example.test"  # a second app behind the same router
PROVIDER_CONFIG = json.dumps({"interactiveLogin": False, "tokenCallbacks": [{
    "issuerId": "default", "tokenExpiry": 120,
    "requestMappings": [{"requestParam": "client_id", "match": "*",
                         "claims": {"sub": "ann-sub", "email": "ann@example.com", "email_verified": True}}]}]})


@pytest.fixture(scope="module")
def stack(tmp_path_factory, supervisor, nats_url):
    port = free_port()
    supervisor.start("oidc-provider", ["bash", str(ROOT / "tests" / "oidc" / "provider.sh"), "run", str(port)],
                     env={**service_env(), "JSON_CONFIG": PROVIDER_CONFIG}, ready_port=port, timeout=300)
    issuer = f"http://127.0.0.1:{port}/default"
    app_dir = tmp_path_factory.mktemp("oidcapp")
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n"
                                      "- url: /admin/.*\n  script: main.app\n  login: admin\n"
                                      "- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text(
        "import json\nfrom kiln.api import users\n"
        "def app(environ, start_response):\n"
        "    user = users.get_current_user()\n"
        "    start_response('200 OK', [('Content-Type', 'application/json')])\n"
        "    return [json.dumps({'email': user.email() if user else None, 'admin': users.is_current_user_admin(),\n"
        "                        'cookie': environ.get('HTTP_COOKIE')}).encode()]\n")
    run = supervisor.run_dir
    env = service_env()
    for app in ("signin", "signinb"):
        supervisor.start(f"runtime-oidc-{app}", python_module(
            "runtime", "--app-dir", str(app_dir), "--app-id", app, "--version-id", "v1", "--nats-url", nats_url,
            "--listen", "127.0.0.1:0", "--ready-file", str(run / f"runtime-oidc-{app}.addr")), env=runtime_env(app),
            ready_file=run / f"runtime-oidc-{app}.addr")
    router = supervisor.start("router-oidc", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
        "--apps", "signin=v1,signinb=v1", "--app-dirs", f"signin/v1={app_dir},signinb/v1={app_dir}",
        "--admins", "signin=ann@example.com;bob@example.com,signinb=ann@example.com",
        "--oidc-issuer", issuer, "--oidc-client-id", "kiln-test", "--oidc-client-secret", "not-so-secret",
        "--ready-file", str(run / "router-oidc.addr")), env=env, ready_file=run / "router-oidc.addr")
    return router.address, port


def get(address, path, *, host=HOST, cookies=None):
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    headers = {"Host": host}
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        set_cookies = {}
        for name_, value in resp.getheaders():
            if name_.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                set_cookies[key] = rest.split(";", 1)[0]
        return resp.status, resp.getheader("Location"), set_cookies, resp.read()
    finally:
        conn.close()


def sign_in(stack, continue_to="/admin/page"):
    """Follow the redirects of a sign-in as a browser would; returns the router's cookies."""
    router, provider_port = stack
    status, location, _, _ = get(router, continue_to)
    assert status == 302 and location.startswith("/_ah/login?")
    status, location, cookies, _ = get(router, location)
    assert status == 302 and location.startswith(f"http://127.0.0.1:{provider_port}/default/authorize?")
    authorize = urllib.parse.urlsplit(location)
    status, location, _, _ = get(f"127.0.0.1:{provider_port}", f"{authorize.path}?{authorize.query}",
                                 host=f"127.0.0.1:{provider_port}")
    assert status == 302 and location.startswith(f"http://{HOST}/_ah/login/callback?")
    callback = urllib.parse.urlsplit(location)
    return get(router, f"{callback.path}?{callback.query}", cookies=cookies), cookies, callback


def test_sign_in_through_the_provider_reaches_an_admin_page(stack):
    (status, location, cookies, _), _, _ = sign_in(stack)
    assert status == 302 and location == "/admin/page"
    status, _, _, body = get(stack[0], "/admin/page", cookies=cookies)
    assert status == 200
    assert json.loads(body) == {"email": "ann@example.com", "admin": True, "cookie": None}


def test_callback_from_another_browser_is_refused(stack):
    _, _, callback = sign_in(stack)
    status, _, cookies, body = get(stack[0], f"{callback.path}?{callback.query}")  # no nonce cookie
    assert status == 400 and b"not started in this browser" in body
    assert "kiln_login" not in cookies


def test_tampered_state_is_refused(stack):
    _, nonce_cookies, callback = sign_in(stack)
    query = urllib.parse.parse_qs(callback.query)
    state = query["state"][0]
    forged = state[:-1] + ("0" if state[-1] != "0" else "1")
    path = f"{callback.path}?{urllib.parse.urlencode({'code': query['code'][0], 'state': forged})}"
    status, _, cookies, body = get(stack[0], path, cookies=nonce_cookies)
    assert status == 400 and b"invalid sign-in state" in body
    assert "kiln_login" not in cookies


def test_session_from_the_provider_is_not_signed_in_on_another_app(stack):
    # ann@ administers both apps, yet a sign-in to one is not a sign-in to the other.
    (status, _, cookies, _), _, _ = sign_in(stack)
    assert status == 302
    status, location, _, _ = get(stack[0], "/admin/page", host=OTHER_HOST, cookies=cookies)
    assert status == 302 and location.startswith("/_ah/login?")
    status, _, _, body = get(stack[0], "/", host=OTHER_HOST, cookies=cookies)
    assert status == 200 and json.loads(body)["email"] is None


def test_app_never_sees_the_session_or_nonce_cookie(stack):
    (_, _, session_cookies, _), nonce_cookies, _ = sign_in(stack)
    cookies = {"before": "1", **nonce_cookies, **session_cookies, "after": "2"}
    assert set(cookies) == {"before", "kiln_oidc", "kiln_login", "after"}
    status, _, _, body = get(stack[0], "/page", cookies=cookies)
    assert status == 200
    assert json.loads(body) == {"email": "ann@example.com", "admin": True, "cookie": "before=1; after=2"}


def test_callback_on_another_apps_host_is_refused(stack):
    _, nonce_cookies, callback = sign_in(stack)
    status, _, cookies, body = get(stack[0], f"{callback.path}?{callback.query}", host=OTHER_HOST,
                                   cookies=nonce_cookies)
    assert status == 400 and b"started for another app" in body
    assert "kiln_login" not in cookies


@pytest.mark.parametrize("tail", ["%C3%A9" * 64, "%EF%BC%90" * 64, "%D9%A3" * 64, "%FF" * 64, "0" * 63 + "%00"])
def test_non_ascii_state_mac_is_refused_not_an_error(stack, tail):
    _, nonce_cookies, callback = sign_in(stack)
    query = urllib.parse.parse_qs(callback.query)
    encoded = query["state"][0].rpartition(".")[0]
    path = f"{callback.path}?code={urllib.parse.quote(query['code'][0])}&state={encoded}.{tail}"
    status, _, cookies, body = get(stack[0], path, cookies=nonce_cookies)
    assert status == 400 and b"invalid sign-in state" in body
    assert "kiln_login" not in cookies


@pytest.mark.parametrize("nonce", ["\u00e9" * 32, "\uff10" * 32])
def test_non_ascii_nonce_cookie_is_refused_not_an_error(stack, nonce):
    _, _, callback = sign_in(stack)
    name, _, port = stack[0].rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.putrequest("GET", f"{callback.path}?{callback.query}", skip_host=True)
        conn.putheader("Host", HOST)
        conn.putheader("Cookie", b"kiln_oidc=" + nonce.encode())  # raw UTF-8 bytes on the wire
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 400 and b"not started in this browser" in resp.read()
    finally:
        conn.close()
