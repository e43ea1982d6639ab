"""The console in cluster mode (console/signin.py): OpenID Connect sign-in through a real provider (NAV's
mock-oauth2-server, interactive login), each app's pages only for its administrators, services reached through a
real control plane's gateway; plain HTTP, as a browser's requests."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import grpc
import pytest
from playwright.sync_api import expect, sync_playwright

from console.values import encode_key
from deploy import upload
from kiln.pb.datastore.v1 import datastore_pb2 as ds
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.memcache.v1 import memcache_pb2 as mc
from kiln.pb.memcache.v1 import memcache_pb2_grpc
from kiln_platform import signing
from kiln_platform.supervisor import free_port, python_module
from tests.integration.apps import wait_for
from tests.integration.conftest import ROOT, app_metadata, service_env
from tests.integration.consolekit import CHROMIUM
from tests.integration.test_control_plane import start_control, token, write_app

pytestmark = pytest.mark.nats

ANN, BOB = "ann@example.com", "bob@example.com"
SESSION_SECRET = "console-signin-test-secret"
COOKIE, NONCE_COOKIE = "kiln_console_signin", "kiln_console_oidc"


class Cluster:
    """The console's address, its public host (the picker's), and the two apps: A (ann's) and B (bob's)."""

    def __init__(self, port: int, provider_port: int, datastore: str, memcache: str) -> None:
        self.port, self.provider_port, self.datastore, self.memcache = port, provider_port, datastore, memcache
        self.control = ""  # the control plane's address (its gateway's too)
        self.root = f"console.test:{port}"
        suffix = uuid.uuid4().hex[:6]
        self.app_a, self.app_b = f"cona{suffix}", f"conb{suffix}"
        self.gateway_token = token("*", name="console")  # an admin token of every app, kept by the console

    def host(self, app: str) -> str:
        return f"{app}.{self.root}"


def start_console(supervisor, cluster: Cluster, name: str, issuer: str, gateway: str, *extra: str) -> None:
    """``python -m console`` in cluster mode at ``cluster.port``, ann administering app A and bob app B."""
    ready = supervisor.run_dir / f"{name}.addr"
    env = {**service_env(), "KILN_CONSOLE_OIDC_CLIENT_SECRET": "console-client-secret",
           "KILN_CONSOLE_SESSION_SECRET": SESSION_SECRET, "KILN_CONSOLE_GATEWAY_TOKEN": cluster.gateway_token}
    supervisor.start(name, python_module(
        "console", "--listen", f"127.0.0.1:{cluster.port}", "--ready-file", str(ready), "--oidc-issuer", issuer,
        "--oidc-client-id", "kiln-console", "--public-url", f"http://{cluster.root}", "--gateway", gateway,
        "--admins", f"{cluster.app_a}={ANN},{cluster.app_b}={BOB}", *extra), env=env, ready_file=ready)


def start_cluster(supervisor, tmp_path_factory, nats_url: str, name: str, datastore: str, memcache: str,
                  *control_args: str, console_args: tuple[str, ...] = ()) -> Cluster:
    """A real OpenID Connect provider, a control plane (its gateway given ``control_args``) and a cluster-mode
    console over it (given ``console_args``); ``name`` keeps the processes of several modules apart."""
    provider_port = free_port()
    supervisor.start(f"oidc-provider-{name}", ["bash", str(ROOT / "tests" / "oidc" / "provider.sh"), "run",
                                               str(provider_port)],
                     env={**service_env(), "JSON_CONFIG": json.dumps({"interactiveLogin": True})},
                     ready_port=provider_port, timeout=300)
    control = start_control(supervisor, tmp_path_factory, nats_url, f"control-{name}", *control_args)
    out = Cluster(free_port(), provider_port, datastore, memcache)
    out.control = control
    start_console(supervisor, out, f"console-{name}", f"http://127.0.0.1:{provider_port}/default", control,
                  *console_args)
    return out


class MetricsPages:
    """A real HTTP server on loopback answering /metrics with :attr:`text` (a router's page, as the test sets it)."""

    def __init__(self) -> None:
        self.text = ""
        pages = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = pages.text.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def metrics_pages() -> Iterator[MetricsPages]:
    pages = MetricsPages()
    yield pages
    pages.close()


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory, nats_url, grpc_services, metrics_pages):
    return start_cluster(supervisor, tmp_path_factory, nats_url, "console", grpc_services["datastore"],
                         grpc_services["memcache"], "--datastore-addr", grpc_services["datastore"],
                         "--memcache-addr", grpc_services["memcache"],
                         console_args=("--metrics-addrs", metrics_pages.address, "--metrics-scrape-seconds", "0.5"))


class Visitor:
    """A browser's requests, by hand: every request goes to 127.0.0.1 with the Host it names; cookies kept."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cookies: dict[str, str] = {}
        self.set_cookies: dict[str, str] = {}  # the last response's Set-Cookie headers, whole, by name
        self.signed_in_by: dict[str, str] = {}  # the sign-in callback's Set-Cookie headers

    def request(self, method: str, url: str, *, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Status, Location and body of one request to ``url`` (http://HOST/PATH)."""
        parts = urllib.parse.urlsplit(url)
        port = self.cluster.provider_port if parts.hostname == "127.0.0.1" else self.cluster.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sent = {"Host": parts.netloc, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}", body=body,
                         headers=sent)
            resp = conn.getresponse()
            self.set_cookies = {}
            for name, value in resp.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    self.set_cookies[key] = value
                    cookie_value = rest.split(";", 1)[0]
                    if cookie_value and "max-age=0" not in value.lower():
                        self.cookies[key] = cookie_value
                    else:
                        self.cookies.pop(key, None)
            return resp.status, resp.getheader("Location") or "", resp.read().decode()
        finally:
            conn.close()

    def sign_in(self, email: str, url: str) -> tuple[int, str, str]:
        """Ask for ``url`` and sign in at the provider as ``email``; the answer to ``url`` afterwards."""
        status, location, _ = self.request("GET", url)
        assert status == 302 and location.startswith(f"http://127.0.0.1:{self.cluster.provider_port}/default/")
        status, _, _ = self.request("GET", location)
        assert status == 200  # the provider's login form
        status, callback, _ = self.request("POST", location, form={
            "username": email.partition("@")[0], "claims": json.dumps({"email": email, "email_verified": True})})
        assert status == 302 and callback.startswith(f"http://{self.cluster.root}/_console/callback?")
        status, destination, body = self.request("GET", callback)
        assert status == 302, body
        self.signed_in_by = self.set_cookies
        assert destination == url
        return self.request("GET", destination)

    def csrf_token(self, url: str) -> str:
        status, _, body = self.request("GET", url)
        assert status == 200
        return body.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def put_note(cluster: Cluster, app: str, name: str) -> ds.Key:
    """An entity of kind Note in ``app``, straight to the datastore as that app."""
    key = ds.Key(path=[ds.PathElement(kind="Note", name=name)])
    with grpc.insecure_channel(cluster.datastore) as channel:
        datastore_pb2_grpc.DatastoreServiceStub(channel).Put(ds.PutRequest(entities=[ds.Entity(key=key)]),
                                                             metadata=app_metadata(app), timeout=30)
    return key


def note_exists(cluster: Cluster, app: str, key: ds.Key) -> bool:
    with grpc.insecure_channel(cluster.datastore) as channel:
        reply = datastore_pb2_grpc.DatastoreServiceStub(channel).Get(ds.GetRequest(keys=[key]),
                                                                     metadata=app_metadata(app), timeout=30)
    return reply.results[0].HasField("entity")


def test_a_page_without_sign_in_redirects_to_the_provider_with_state_nonce_and_pkce(cluster):
    visitor = Visitor(cluster)
    status, location, _ = visitor.request("GET", f"http://{cluster.host(cluster.app_a)}/datastore")
    assert status == 302
    url = urllib.parse.urlsplit(location)
    assert f"{url.scheme}://{url.netloc}" == f"http://127.0.0.1:{cluster.provider_port}"
    query = urllib.parse.parse_qs(url.query)
    assert query["redirect_uri"] == [f"http://{cluster.root}/_console/callback"]
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["state"][0] and query["nonce"] == [visitor.cookies[NONCE_COOKIE]]
    nonce_cookie = visitor.set_cookies[NONCE_COOKIE].lower()
    assert "httponly" in nonce_cookie and "samesite=lax" in nonce_cookie and "path=/_console/callback" in nonce_cookie


def test_an_administrator_signs_in_and_sees_the_apps_entities_through_the_gateway(cluster):
    put_note(cluster, cluster.app_a, "hello-a")
    put_note(cluster, cluster.app_b, "hello-b")
    visitor = Visitor(cluster)
    status, _, body = visitor.sign_in(ANN, f"http://{cluster.host(cluster.app_a)}/datastore?kind=Note")
    assert status == 200
    assert "hello-a" in body and "hello-b" not in body
    assert ANN in body and "Sign out" in body
    assert cluster.gateway_token not in body and cluster.gateway_token not in str(visitor.cookies)


def test_an_htmx_request_without_sign_in_is_told_to_sign_in_in_place(cluster):
    status, _, body = Visitor(cluster).request("GET", f"http://{cluster.host(cluster.app_a)}/datastore?kind=Note",
                                               headers={"HX-Request": "true"})
    assert status == 401 and "sign in first" in body and "<html" not in body


def test_the_sign_in_cookie_is_httponly_lax_and_reaches_the_app_hosts(cluster):
    visitor = Visitor(cluster)
    visitor.sign_in(ANN, f"http://{cluster.host(cluster.app_a)}/datastore")
    cookie = visitor.signed_in_by[COOKIE].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "domain=console.test" in cookie
    assert "secure" not in cookie  # public_url is http here; https would add Secure
    assert NONCE_COOKIE not in visitor.cookies  # used once


def test_an_administrator_of_one_app_asking_for_another_gets_403(cluster):
    put_note(cluster, cluster.app_b, "secret-b")
    visitor = Visitor(cluster)
    visitor.sign_in(ANN, f"http://{cluster.host(cluster.app_a)}/datastore")
    status, _, body = visitor.request("GET", f"http://{cluster.host(cluster.app_b)}/datastore?kind=Note")
    assert status == 403
    assert f"{ANN} does not administer app {cluster.app_b}" in body
    assert "secret-b" not in body


def test_the_picker_lists_only_the_apps_the_identity_administers(cluster):
    visitor = Visitor(cluster)
    status, _, body = visitor.sign_in(BOB, f"http://{cluster.root}/")
    assert status == 200
    assert f"http://{cluster.host(cluster.app_b)}/" in body
    assert cluster.app_a not in body


def test_a_forged_session_cookie_sends_back_to_sign_in(cluster):
    visitor = Visitor(cluster)
    visitor.sign_in(ANN, f"http://{cluster.host(cluster.app_a)}/datastore")
    payload, _, mac = visitor.cookies[COOKIE].partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["e"] == ANN
    claims["e"] = BOB  # ann's signature over bob's name
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    visitor.cookies[COOKIE] = f"{forged}.{mac}"
    status, location, _ = visitor.request("GET", f"http://{cluster.host(cluster.app_b)}/datastore")
    assert status == 302 and location.startswith(f"http://127.0.0.1:{cluster.provider_port}/default/")


def test_an_expired_session_cookie_sends_back_to_sign_in(cluster):
    visitor = Visitor(cluster)
    url = f"http://{cluster.host(cluster.app_a)}/datastore"
    visitor.cookies[COOKIE] = signing.seal(SESSION_SECRET, "console-signin", {"e": ANN, "x": int(time.time()) + 600})
    assert visitor.request("GET", url)[0] == 200  # the same cookie, unexpired, is a sign-in
    visitor.cookies[COOKIE] = signing.seal(SESSION_SECRET, "console-signin", {"e": ANN, "x": int(time.time()) - 1})
    status, location, _ = visitor.request("GET", url)
    assert status == 302 and location.startswith(f"http://127.0.0.1:{cluster.provider_port}/default/")


def test_an_action_without_sign_in_is_refused_and_deletes_nothing(cluster):
    key = put_note(cluster, cluster.app_a, "keep-me")
    visitor = Visitor(cluster)
    visitor.sign_in(ANN, f"http://{cluster.host(cluster.app_a)}/datastore?kind=Note")
    token = visitor.csrf_token(f"http://{cluster.host(cluster.app_a)}/datastore?kind=Note")
    del visitor.cookies[COOKIE]  # the page's CSRF session and token, but no sign-in
    status, _, body = visitor.request("POST", f"http://{cluster.host(cluster.app_a)}/datastore/delete",
                                      form={"csrf_token": token, "key": encode_key(key)})
    assert status == 401 and "sign in first" in body
    assert note_exists(cluster, cluster.app_a, key)


def test_sign_out_removes_the_sign_in(cluster):
    visitor = Visitor(cluster)
    url = f"http://{cluster.host(cluster.app_a)}/datastore"
    visitor.sign_in(ANN, url)
    token = visitor.csrf_token(url)
    status, _, body = visitor.request("POST", f"http://{cluster.host(cluster.app_a)}/_console/signout",
                                      form={"csrf_token": token})
    assert status == 200 and "signed out" in body
    assert COOKIE not in visitor.cookies and "max-age=0" in visitor.set_cookies[COOKIE].lower()
    status, location, _ = visitor.request("GET", url)
    assert status == 302 and location.startswith(f"http://127.0.0.1:{cluster.provider_port}/default/")


def test_the_memcache_page_reaches_the_apps_cache_through_the_gateway(cluster):
    for app, value in ((cluster.app_a, b"cached-for-a"), (cluster.app_b, b"cached-for-b")):
        with grpc.insecure_channel(cluster.memcache) as channel:
            memcache_pb2_grpc.MemcacheServiceStub(channel).Set(
                mc.SetRequest(items=[mc.Item(key=b"greeting", value=value, flags=1)]),  # flags 1: a str
                metadata=app_metadata(app), timeout=30)
    status, _, body = Visitor(cluster).sign_in(ANN, f"http://{cluster.host(cluster.app_a)}/memcache?key=greeting")
    assert status == 200
    assert "cached-for-a" in body and "cached-for-b" not in body


def test_the_versions_page_shows_the_apps_versions_from_the_control_plane(cluster, tmp_path):
    shown, hidden = "annsonlyversion", "bobsonlyversion"
    for app, version in ((cluster.app_a, shown), (cluster.app_b, hidden)):
        with grpc.insecure_channel(cluster.control) as channel:
            upload.deploy(channel, token(app), write_app(tmp_path / app), app, version, promote=True,
                          host_check=False)
    status, _, body = Visitor(cluster).sign_in(ANN, f"http://{cluster.host(cluster.app_a)}/versions")
    assert status == 200
    assert shown in body and hidden not in body


def test_the_dashboard_of_an_app_plots_that_apps_versions_only(cluster, metrics_pages):
    metrics_pages.text = "".join(
        f'kiln_router_requests_total{{app="{app}",version="{version}",status_class="2xx"}} 5\n'
        for app, version in ((cluster.app_a, "annsversion"), (cluster.app_b, "bobsversion")))
    visitor = Visitor(cluster)
    status, _, _ = visitor.sign_in(ANN, f"http://{cluster.host(cluster.app_a)}/dashboard")
    assert status == 200

    def data() -> dict:
        status, _, body = visitor.request("GET", f"http://{cluster.host(cluster.app_a)}/dashboard/data")
        assert status == 200
        return json.loads(body)
    wait_for(lambda: data()["versions"], 30)
    assert data()["versions"] == ["annsversion"]


def test_a_page_whose_service_the_control_plane_was_not_given_names_the_setting(cluster):
    visitor = Visitor(cluster)
    status, _, body = visitor.sign_in(ANN, f"http://{cluster.host(cluster.app_a)}/mail")
    assert status == 412
    assert "does not forward calls to mail_svc: its operator sets --mail-addr" in body


def test_in_chromium_an_administrator_signs_in_sees_the_app_and_signs_out(cluster):
    put_note(cluster, cluster.app_a, "seen-in-chromium")
    url = f"http://{cluster.host(cluster.app_a)}/datastore?kind=Note"
    resolve = "MAP console.test 127.0.0.1, MAP *.console.test 127.0.0.1"  # the picker's and the apps' hosts
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[f"--host-resolver-rules={resolve}"])
        try:
            tab = chromium.new_page()
            refused: list[str] = []
            tab.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
            tab.goto(url)
            assert tab.url.startswith(f"http://127.0.0.1:{cluster.provider_port}/default/authorize")
            tab.fill("input[name=username]", "ann")
            tab.fill("textarea[name=claims]", json.dumps({"email": ANN, "email_verified": True}))
            tab.click("input[type=submit]")
            expect(tab).to_have_url(url)
            expect(tab.get_by_role("link", name="seen-in-chromium")).to_be_visible()
            tab.get_by_role("button", name="Sign out").click()
            expect(tab.get_by_role("heading", name="You are signed out")).to_be_visible()
            tab.goto(url)
            assert tab.url.startswith(f"http://127.0.0.1:{cluster.provider_port}/default/authorize")
            assert refused == [], "a console page broke its own Content-Security-Policy"
        finally:
            chromium.close()


def test_a_provider_that_cannot_be_reached_is_a_clear_502(supervisor, cluster):
    down = Cluster(free_port(), free_port(), cluster.datastore, cluster.memcache)  # nothing listens at its provider
    start_console(supervisor, down, "console-provider-down", f"http://127.0.0.1:{down.provider_port}/default",
                  "127.0.0.1:1")
    visitor = Visitor(down)
    status, _, body = visitor.request("GET", f"http://{down.host(down.app_a)}/datastore")
    assert status == 502 and "sign-in is unavailable" in body
    assert NONCE_COOKIE not in visitor.cookies
