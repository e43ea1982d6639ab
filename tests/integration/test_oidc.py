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
        "    return [json.dumps({'email': user.email() if user else None,\n"
        "                        'admin': users.is_current_user_admin()}).encode()]\n")
    run = supervisor.run_dir
    env = service_env()
    supervisor.start("runtime-oidc", python_module(
        "runtime", "--app-dir", str(app_dir), "--app-id", "signin", "--version-id", "v1", "--nats-url", nats_url,
        "--listen", "127.0.0.1:0", "--ready-file", str(run / "runtime-oidc.addr")), env=runtime_env("signin"),
        ready_file=run / "runtime-oidc.addr")
    router = supervisor.start("router-oidc", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
        "--apps", "signin=v1", "--app-dirs", f"signin/v1={app_dir}", "--admins", "signin=ann@example.com",
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
    assert json.loads(body) == {"email": "ann@example.com", "admin": True}


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
