"""App Engine's request and response rules, through the real router, NATS and runtime (kiln dev)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import pathlib
import textwrap
import time
import urllib.parse

import pytest

from deploy.dev import DevOptions, DevServer

pytestmark = pytest.mark.nats

APP_YAML = r"""
runtime: python27
api_version: 1
threadsafe: true
default_expiration: 1h
error_handlers:
- error_code: timeout
  file: errors/timeout.html
handlers:
- url: /static
  static_dir: static
  expiration: 2d
  http_headers:
    X-Static: "yes"
- url: /img/(.*)\.png
  static_files: images/\1.png
  upload: images/.*\.png
- url: /plain/(.*)
  static_files: files/\1
  upload: files/.*
  mime_type: text/x-custom
- url: /secure/.*
  script: main.app
  secure: always
- url: /insecure/.*
  script: main.app
  secure: never
- url: /admin/.*
  script: main.app
  login: admin
- url: /account/.*
  script: main.app
  login: required
- url: /api/.*
  script: main.app
  login: required
  auth_fail_action: unauthorized
- url: /.*
  script: main.app
"""

MAIN = r'''
import json, os, time
from kiln.api import users

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.endswith("/whoami"):
        user = users.get_current_user()
        body = json.dumps({"email": user.email() if user else None, "admin": users.is_current_user_admin(),
                           "nickname": user.nickname() if user else None,
                           "auth_domain": user.auth_domain() if user else None,
                           "user_id": user.user_id() if user else None, "env_email": os.environ.get("USER_EMAIL"),
                           "login_url": users.create_login_url("/back"), "logout_url": users.create_logout_url("/")})
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body.encode()]
    if path == "/headers":
        keys = {k: v for k, v in environ.items() if k.startswith("HTTP_") or k in ("REMOTE_ADDR", "SERVER_NAME")}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(keys).encode()]
    if path == "/cookie":
        start_response("200 OK", [("Set-Cookie", "a=1"), ("Cache-Control", "public, max-age=300")])
        return [b"cookie"]
    if path == "/cookie-nostore":
        start_response("200 OK", [("Set-Cookie", "a=1"), ("Cache-Control", "no-store")])
        return [b"cookie"]
    if path == "/cached":
        start_response("200 OK", [("Cache-Control", "public, max-age=60")])
        return [b"cached"]
    if path == "/text":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello world " * 200]
    if path == "/binary":
        start_response("200 OK", [("Content-Type", "image/png")])
        return [b"\x89PNG" + b"\x00" * 2000]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"x" * 300000]
    if path == "/huge":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"x" * 2000000]
    if path == "/inject":
        start_response("200 OK", [("X-Good", "fine"), ("X-Bad", "a\r\nSet-Cookie: evil=1"), ("X-Caf\u00e9", "v"),
                                  ("X-Val", "caf\u00e9"), ("Connection", "close"), ("Server", "app"),
                                  ("Content-Encoding", "br")])
        return [b"ok"]
    if path == "/slow":
        end = time.monotonic() + 8
        while time.monotonic() < end:  # Python code: the request timer's exception lands here
            pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app:" + path.encode()]
'''


def _mmdb(path: pathlib.Path) -> None:
    import mmdb_writer
    from netaddr import IPSet
    writer = mmdb_writer.MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    writer.insert_network(IPSet(["81.2.69.0/24"]), {
        "country": {"iso_code": "GB"}, "subdivisions": [{"iso_code": "ENG"}], "city": {"names": {"en": "London"}},
        "location": {"latitude": 51.5142, "longitude": -0.0931}})
    writer.to_db_file(str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    app_dir = root / "probe"
    (app_dir / "static" / "css").mkdir(parents=True)
    (app_dir / "images").mkdir()
    (app_dir / "files").mkdir()
    (app_dir / "errors").mkdir()
    (app_dir / "app.yaml").write_text(textwrap.dedent(APP_YAML))
    (app_dir / "main.py").write_text(MAIN)
    (app_dir / "static" / "css" / "site.css").write_text("body { color: red }\n")
    (app_dir / "images" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (app_dir / "files" / "notes.txt").write_text("notes\n")
    (app_dir / "errors" / "timeout.html").write_text("<h1>Too slow, sorry</h1>")
    (root / "secret.txt").write_text("outside the app")
    _mmdb(root / "geo.mmdb")
    saved = dict(os.environ)
    os.environ.update({"KILN_ROUTER_GEOIP_DB": str(root / "geo.mmdb"), "KILN_ROUTER_TRUSTED_PROXIES": "127.0.0.2/32",
                       "KILN_ROUTER_MAX_RESPONSE_BYTES": "200000", "KILN_ROUTER_IDLE_TIMEOUT_SECONDS": "2"})
    srv = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=root / "data", request_deadline=1.0))
    try:
        srv.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield srv
    srv.stop()


def request(server, path, *, method="GET", headers=None, body=None, host=None, source="127.0.0.1"):
    """One raw HTTP request: (status, headers as a dict of lists, body bytes)."""
    address, _, port = server.addresses["router"].rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=30, source_address=(source, 0))
    try:
        all_headers = {"Host": host or f"localhost:{port}", **(headers or {})}
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        out: dict[str, list[str]] = {}
        for name, value in resp.getheaders():
            out.setdefault(name.lower(), []).append(value)
        return resp.status, out, resp.read()
    finally:
        conn.close()


def sign_in(server, email, admin=False):
    form = {"email": email, **({"admin": "True"} if admin else {})}
    status, headers, _ = request(server, "/_ah/login?continue=/x", method="POST",
                                 body=urllib.parse.urlencode(form),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302 and headers["location"] == ["/x"]
    return headers["set-cookie"][0].split(";")[0]


# --- handlers -----------------------------------------------------------------------------------


def test_static_dir_file_is_served_by_the_router_with_caching_headers(server):
    status, headers, body = request(server, "/static/css/site.css")
    assert status == 200 and body == b"body { color: red }\n"
    assert headers["content-type"][0].startswith("text/css")
    assert headers["cache-control"] == ["public, max-age=172800"]
    assert headers["x-static"] == ["yes"]
    assert "expires" in headers and headers["etag"][0].startswith('"')


def test_conditional_get_with_matching_etag_is_304(server):
    _, headers, _ = request(server, "/static/css/site.css")
    status, _, body = request(server, "/static/css/site.css", headers={"If-None-Match": headers["etag"][0]})
    assert status == 304 and body == b""


def test_static_files_back_reference_picks_the_file(server):
    status, headers, body = request(server, "/img/logo.png")
    assert status == 200 and body.startswith(b"\x89PNG")
    assert headers["content-type"] == ["image/png"]
    assert headers["cache-control"] == ["public, max-age=3600"]  # default_expiration


def test_mime_type_of_the_handler_wins(server):
    status, headers, _ = request(server, "/plain/notes.txt")
    assert status == 200 and headers["content-type"][0].startswith("text/x-custom")


def test_paths_leaving_the_static_directory_are_404(server):
    for path in ("/static/../main.py", "/static/%2e%2e/main.py", "/static/../../secret.txt",
                 "/plain/../main.py", "/static/css/missing.css"):
        status, _, body = request(server, path)
        assert status == 404, path
        assert b"outside the app" not in body and b"import" not in body


def test_script_handler_reaches_the_app(server):
    status, _, body = request(server, "/hello")
    assert status == 200 and body == b"app:/hello"


def test_secure_always_redirects_http_to_https(server):
    status, headers, _ = request(server, "/secure/page?x=1", host="example.test")
    assert status == 302 and headers["location"] == ["https://example.test/secure/page?x=1"]


def test_https_from_a_trusted_proxy_is_not_redirected(server):
    status, _, body = request(server, "/secure/page", headers={"X-Forwarded-Proto": "https"}, source="127.0.0.2")
    assert status == 200 and body == b"app:/secure/page"


def test_secure_never_redirects_https_to_http(server):
    status, headers, _ = request(server, "/insecure/page", host="example.test", headers={"X-Forwarded-Proto": "https"},
                                 source="127.0.0.2")
    assert status == 302 and headers["location"] == ["http://example.test/insecure/page"]


def test_forwarded_proto_from_an_untrusted_client_is_ignored(server):
    status, _, _ = request(server, "/secure/page", headers={"X-Forwarded-Proto": "https"})
    assert status == 302


def test_error_handler_page_is_served_on_timeout(server):
    status, _, body = request(server, "/slow")
    assert status == 500 and b"Too slow" in body


# --- users --------------------------------------------------------------------------------------


def test_login_required_redirects_to_the_sign_in_page(server):
    status, headers, _ = request(server, "/account/home")
    assert status == 302 and headers["location"] == ["/_ah/login?continue=%2Faccount%2Fhome"]


def test_auth_fail_action_unauthorized_gives_401(server):
    status, _, _ = request(server, "/api/data")
    assert status == 401


def test_signed_in_user_reaches_the_users_api(server):
    cookie = sign_in(server, "ann@example.com")
    status, _, body = request(server, "/account/whoami", headers={"Cookie": cookie})
    data = json.loads(body)
    assert status == 200
    assert data["email"] == data["env_email"] == "ann@example.com"
    assert data["admin"] is False and len(data["user_id"]) == 21
    assert data["login_url"] == "/_ah/login?continue=%2Fback"
    assert data["logout_url"] == "/_ah/logout?continue=%2F"
    assert data["nickname"] == "ann@example.com" and data["auth_domain"] == "gmail.com"


def test_admin_pages_refuse_signed_in_non_admins(server):
    cookie = sign_in(server, "bob@example.com")
    status, _, _ = request(server, "/admin/panel", headers={"Cookie": cookie})
    assert status == 403


def test_admin_pages_serve_admins(server):
    cookie = sign_in(server, "root@example.com", admin=True)
    status, _, body = request(server, "/admin/whoami", headers={"Cookie": cookie})
    assert status == 200 and json.loads(body)["admin"] is True


def test_administrators_get_resource_usage_headers(server):
    admin = sign_in(server, "root@example.com", admin=True)
    _, headers, _ = request(server, "/hello", headers={"Cookie": admin})
    assert headers["x-appengine-resource-usage"][0].startswith("ms=")
    assert "cpu_ms=" in headers["x-appengine-resource-usage"][0]
    assert headers["x-appengine-estimated-cpm-us-dollars"][0].startswith("$")
    user = sign_in(server, "bob@example.com")
    _, headers, _ = request(server, "/hello", headers={"Cookie": user})
    assert "x-appengine-resource-usage" not in headers


def test_forged_session_cookie_is_ignored(server):
    cookie = sign_in(server, "eve@example.com")
    name, _, value = cookie.partition("=")
    payload, _, mac = value.rpartition(".")
    import base64
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["admin"] = True
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=") + "." + mac
    status, _, _ = request(server, "/admin/panel", headers={"Cookie": f"{name}={forged}"})
    assert status == 302  # treated as not signed in


def test_dev_sign_in_cookie_is_host_only_short_lived_and_never_reaches_the_app(server):
    form = urllib.parse.urlencode({"email": "ann@example.com", "admin": "True"})
    _, headers, _ = request(server, "/_ah/login?continue=/x", method="POST", body=form,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    set_cookie = headers["set-cookie"][0]
    attributes = {a.strip().partition("=")[0].lower(): a.strip().partition("=")[2] for a in set_cookie.split(";")[1:]}
    assert "domain" not in attributes and attributes["max-age"] == "7200" and "httponly" in attributes
    cookie = set_cookie.split(";")[0]
    seen = json.loads(request(server, "/headers", headers={"Cookie": f"theme=dark; {cookie}; lang=en"})[2])
    assert seen["HTTP_COOKIE"] == "theme=dark; lang=en"
    assert json.loads(request(server, "/admin/whoami", headers={"Cookie": cookie})[2])["admin"] is True


def test_logout_ends_the_session(server):
    status, headers, _ = request(server, "/_ah/logout?continue=/bye")
    assert status == 302 and headers["location"] == ["/bye"]
    assert "kiln_login=" in headers["set-cookie"][0]


def test_login_continue_to_another_site_is_refused(server):
    status, headers, _ = request(server, "/_ah/logout?continue=https://evil.example/")
    assert headers["location"] == ["/"]


def test_client_cannot_forge_user_headers_or_cron(server):
    status, _, body = request(server, "/headers", headers={"X-AppEngine-Cron": "true",
                                                           "X-AppEngine-User-Email": "boss@example.com",
                                                           "X-AppEngine-Country": "FR"})
    seen = json.loads(body)
    assert "HTTP_X_APPENGINE_CRON" not in seen and "HTTP_X_APPENGINE_USER_EMAIL" not in seen
    assert seen["HTTP_X_APPENGINE_COUNTRY"] == "ZZ"


# --- request headers ----------------------------------------------------------------------------


def test_loopback_client_gets_country_zz(server):
    seen = json.loads(request(server, "/headers")[2])
    assert seen["HTTP_X_APPENGINE_COUNTRY"] == "ZZ"
    assert "HTTP_X_APPENGINE_CITY" not in seen


def test_geoip_headers_for_the_client_behind_a_trusted_proxy(server):
    seen = json.loads(request(server, "/headers", headers={"X-Forwarded-For": "81.2.69.160"}, source="127.0.0.2")[2])
    assert seen["HTTP_X_APPENGINE_COUNTRY"] == "GB"
    assert seen["HTTP_X_APPENGINE_REGION"] == "eng"
    assert seen["HTTP_X_APPENGINE_CITY"] == "london"
    assert seen["HTTP_X_APPENGINE_CITYLATLONG"] == "51.514200,-0.093100"
    assert seen["REMOTE_ADDR"] == "81.2.69.160"


def test_forwarded_for_from_an_untrusted_client_is_not_believed(server):
    seen = json.loads(request(server, "/headers", headers={"X-Forwarded-For": "81.2.69.160"})[2])
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["HTTP_X_APPENGINE_COUNTRY"] == "ZZ"


def test_hop_by_hop_request_headers_are_removed(server):
    seen = json.loads(request(server, "/headers", headers={
        "Accept-Encoding": "gzip", "TE": "trailers", "Proxy-Authorization": "Basic x", "Keep-Alive": "timeout=5",
        "Trailer": "X-T", "Connection": "keep-alive", "X-Custom": "kept"})[2])
    for name in ("ACCEPT_ENCODING", "TE", "PROXY_AUTHORIZATION", "KEEP_ALIVE", "TRAILER", "CONNECTION",
                 "TRANSFER_ENCODING"):
        assert f"HTTP_{name}" not in seen, name
    assert seen["HTTP_X_CUSTOM"] == "kept"
    assert len(seen["HTTP_X_APPENGINE_REQUEST_LOG_ID"]) == 32


# --- responses ----------------------------------------------------------------------------------


def test_response_setting_a_cookie_is_private_and_expires_now(server):
    _, headers, _ = request(server, "/cookie")
    assert headers["cache-control"] == ["private"]
    assert "expires" in headers


def test_stricter_cache_control_with_a_cookie_is_kept(server):
    _, headers, _ = request(server, "/cookie-nostore")
    assert headers["cache-control"] == ["no-store"]


def test_no_cache_control_from_the_app_gives_private_and_vary(server):
    _, headers, _ = request(server, "/hello")
    assert headers["cache-control"] == ["private"]
    assert headers["vary"] == ["Accept-Encoding"]


def test_app_cache_control_is_kept(server):
    _, headers, _ = request(server, "/cached")
    assert headers["cache-control"] == ["public, max-age=60"]


def test_text_is_gzipped_for_clients_that_accept_it(server):
    _, headers, body = request(server, "/text", headers={"Accept-Encoding": "gzip", "User-Agent": "test"})
    assert headers["content-encoding"] == ["gzip"]
    assert gzip.decompress(body) == b"hello world " * 200


def test_no_gzip_without_a_user_agent_or_for_binary_types(server):
    _, headers, _ = request(server, "/text", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in headers
    _, headers, _ = request(server, "/binary", headers={"Accept-Encoding": "gzip", "User-Agent": "test"})
    assert "content-encoding" not in headers


def test_response_over_the_limit_becomes_an_empty_500(server):
    status, _, body = request(server, "/big")
    assert status == 500 and body == b""


def test_response_too_large_for_a_nats_message_and_over_the_limit_becomes_an_empty_500(server):
    status, _, body = request(server, "/huge")
    assert status == 500 and body == b""
    assert request(server, "/hello")[0] == 200


def test_request_body_over_the_limit_gets_413_without_reaching_the_app(server):
    status, _, _ = request(server, "/echo", method="POST", body=b"x" * (33 * 1024 * 1024))
    assert status == 413


def test_injected_and_non_ascii_response_headers_are_dropped(server):
    status, headers, _ = request(server, "/inject")
    assert status == 200
    assert headers["x-good"] == ["fine"]
    assert "x-bad" not in headers and "x-val" not in headers
    assert "set-cookie" not in headers
    assert headers["server"] == ["kiln"]
    assert "content-encoding" not in headers


def test_default_content_type_is_text_html_and_date_is_set(server):
    _, headers, _ = request(server, "/cookie")
    assert headers["content-type"][0].startswith("text/html")
    assert "date" in headers and headers["content-length"] == ["6"]


# --- hosts in production mode (no kiln dev: a router with a domain, and one runtime) --------------

@pytest.fixture(scope="module")
def production(tmp_path_factory, supervisor, nats_url):
    from kiln_platform.supervisor import python_module
    from tests.integration.conftest import runtime_env, service_env
    app_dir = tmp_path_factory.mktemp("hostapp")
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    if environ['PATH_INFO'] == '/instance':\n"
        "        return [environ['INSTANCE_ID'].encode()]\n"
        "    return [(environ['SERVER_NAME'] + ' ' + environ['CURRENT_VERSION_ID']).encode()]\n")
    run = supervisor.run_dir
    env = service_env()
    for n in (1, 2):  # two instances of the version, so instance addressing has a choice to make
        supervisor.start(f"runtime-hosts-{n}", python_module(
            "runtime", "--app-dir", str(app_dir), "--app-id", "probe", "--version-id", "v1", "--nats-url", nats_url,
            "--listen", "127.0.0.1:0", "--ready-file", str(run / f"runtime-hosts-{n}.addr")), env=runtime_env("probe"),
            ready_file=run / f"runtime-hosts-{n}.addr")
    router = supervisor.start("router-hosts", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
        "--apps", "probe=v1", "--custom-domains", "www.probe.org=probe",
        "--ready-file", str(run / "router-hosts.addr")), env=env, ready_file=run / "router-hosts.addr")

    class Server:
        addresses = {"router": router.address}
    return Server()


@pytest.mark.parametrize(("host", "expected"), [
    ("probe.example.test", b"probe.example.test v1.1"),
    ("api.probe.example.test", b"api.probe.example.test v1.1"),
    ("v1-dot-probe.example.test", b"v1-dot-probe.example.test v1.1"),
    ("www.probe.org", b"www.probe.org v1.1"),
])
def test_hosts_reach_the_app_and_the_app_sees_which_host(production, host, expected):
    status, _, body = request(production, "/", host=host)
    assert status == 200 and body == expected


@pytest.mark.parametrize("host", ["other.org", "nope.example.test", "example.test"])
def test_unknown_host_is_404(production, host):
    status, _, body = request(production, "/", host=host)
    assert status == 404 and host.encode() in body


def test_unknown_version_is_404(production):
    status, _, body = request(production, "/", host="v9-dot-probe.example.test")
    assert status == 404 and b"v9" in body


# --- bad input ----------------------------------------------------------------------------------

def _raw(server, data: bytes) -> bytes:
    import socket
    address, _, port = server.addresses["router"].rpartition(":")
    with socket.create_connection((address, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_malformed_request_line_gets_400_and_the_router_keeps_serving(server):
    answer = _raw(server, b"THIS IS NOT HTTP\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert request(server, "/hello")[0] == 200


def test_oversized_header_gets_an_error_and_the_router_keeps_serving(server):
    answer = _raw(server, b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] in (b"400", b"431")
    assert request(server, "/hello")[0] == 200


def test_header_with_a_bare_newline_cannot_smuggle_a_second_header(server):
    answer = _raw(server, b"GET /headers HTTP/1.1\r\nHost: localhost\r\nX-A: 1\nX-AppEngine-Cron: true\r\n"
                          b"Connection: close\r\n\r\n")
    assert b"HTTP_X_APPENGINE_CRON" not in answer


def test_slow_client_trickling_headers_is_disconnected(server):
    import socket
    address, _, port = server.addresses["router"].rpartition(":")
    with socket.create_connection((address, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 8:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            sock.settimeout(0.5)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
        assert time.monotonic() - started < 6
    assert request(server, "/hello")[0] == 200


def test_malformed_host_header_is_a_clear_error(server):
    answer = _raw(server, b"GET / HTTP/1.1\r\nHost: bad host\x01\r\nConnection: close\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] in (b"400", b"404")
    assert request(server, "/hello")[0] == 200


def test_instance_dot_version_dot_app_always_reaches_that_instance(production):
    seen = {request(production, "/instance", host="probe.example.test")[2].decode() for _ in range(20)}
    assert len(seen) == 2  # the default route spreads requests over both instances
    instance = sorted(seen)[0]
    for _ in range(10):
        status, _, body = request(production, "/instance", host=f"{instance}-dot-v1-dot-probe.example.test")
        assert status == 200 and body.decode() == instance


def test_unknown_instance_is_404(production):
    status, _, body = request(production, "/", host=f"{'0' * 32}-dot-v1-dot-probe.example.test")
    assert status == 404 and b"Instance" in body


def test_an_instance_refuses_requests_for_another_version(production):
    instance = request(production, "/instance", host="probe.example.test")[2].decode()
    status, _, _ = request(production, "/instance", host=f"{instance}-dot-v2-dot-probe.example.test")
    assert status == 404
