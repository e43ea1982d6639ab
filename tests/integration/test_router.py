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
    if path == "/front-end-headers":
        start_response("200 OK", [("X-Good", "fine"), ("Connection", "close"), ("Server", "app"),
                                  ("Content-Encoding", "br"), ("Set-Cookie", "kiln_login=forged")])
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
                       "KILN_ROUTER_MAX_RESPONSE_BYTES": "200000", "KILN_ROUTER_IDLE_TIMEOUT_SECONDS": "2",
                       "KILN_ROUTER_HEADER_TIMEOUT_SECONDS": "1", "KILN_ROUTER_BODY_GRACE_SECONDS": "1",
                       "KILN_ROUTER_BODY_MIN_BYTES_PER_SECOND": "100"})
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


def test_paths_climbing_out_of_a_static_directory_never_serve_a_file_outside_it(server):
    # The path is normalised before handler matching, so these reach the handler of the path they name (the
    # script), never a file; what is left inside a static directory and missing is 404.
    for path, answer in (("/static/../main.py", b"app:/main.py"), ("/static/%2e%2e/main.py", b"app:/main.py"),
                         ("/static/../../secret.txt", b"app:/secret.txt"), ("/plain/../main.py", b"app:/main.py"),
                         ("/plain/..%2f..%2fsecret.txt", b"app:/secret.txt"), ("/img/..%2F..%2Fsecret.png",
                                                                                b"app:/secret.png")):
        status, _, body = request(server, path)
        assert (status, body) == (200, answer), path
    assert request(server, "/static/css/missing.css")[0] == 404


@pytest.mark.parametrize("path", ["/static/css/missing.css", "/img/missing.png", "/plain/missing.txt"])
def test_missing_static_file_is_an_empty_404_without_a_type(server, path):
    status, headers, body = request(server, path)
    assert (status, body) == (404, b"")
    assert "content-type" not in headers and headers["content-length"] == ["0"]


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


def test_response_setting_a_cookie_is_private_keeps_max_age_and_expires_now(server):
    _, headers, _ = request(server, "/cookie")
    assert headers["cache-control"] == ["max-age=300, private"]  # public dropped, the rest kept (App Engine)
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


def test_front_end_owned_response_headers_and_router_cookies_from_the_app_are_dropped(server):
    status, headers, _ = request(server, "/front-end-headers")
    assert status == 200
    assert headers["x-good"] == ["fine"]
    assert "set-cookie" not in headers
    assert headers["server"] == ["kiln"]
    assert "content-encoding" not in headers


def test_default_content_type_is_text_html_and_date_is_set(server):
    _, headers, _ = request(server, "/cookie")
    assert headers["content-type"][0].startswith("text/html")
    assert "date" in headers and headers["content-length"] == ["6"]


# --- hosts in production mode (no kiln dev: a router with a domain, and one runtime) --------------

# Response headers a WSGI app may try that HTTP cannot carry (kiln_platform.httpfields).
BAD_RESPONSE_HEADERS = [("X-Bad", "a\r\nSet-Cookie: evil=1"), ("X-Bad", "a\nb"), ("X-Bad", "a\rb"), ("X-Bad", "a\x00b"),
                        ("X-Bad", "\x1b[2J"), ("X-Bad", "caf\u00e9"), ("X-Bad", "\u20ac"), ("X-Caf\u00e9", "v"),
                        ("X Bad", "v"), ("X-Bad:", "v")]


@pytest.fixture(scope="module")
def production(tmp_path_factory, supervisor, nats_url):
    from kiln_platform.supervisor import python_module
    from tests.integration.conftest import runtime_env, service_env
    app_dir = tmp_path_factory.mktemp("hostapp")
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text(
        "import json\n"
        f"BAD_HEADERS = {BAD_RESPONSE_HEADERS!a}\n"
        "def app(environ, start_response):\n"
        "    path = environ['PATH_INFO']\n"
        "    if path.startswith('/bad-header/'):\n"
        "        start_response('200 OK', [('X-Fine', 'yes'), tuple(BAD_HEADERS[int(path.rsplit('/', 1)[1])])])\n"
        "        return [b'sent']\n"
        "    if path == '/utf-8-header':\n"
        "        start_response('200 OK', [('X-Name', 'caf\\u00c3\\u00a9 \\u00e2\\u0082\\u00ac')])\n"
        "        return [b'sent']\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    if path == '/length':\n"
        "        return [str(len(environ['wsgi.input'].read())).encode()]\n"
        "    if path == '/instance':\n"
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
        "--apps", "probe=v1", "--custom-domains", "www.probe.org=probe", "--header-timeout-seconds", "1",
        "--body-grace-seconds", "1", "--body-min-bytes-per-second", "100",
        "--ready-file", str(run / "router-hosts.addr")), env=env, ready_file=run / "router-hosts.addr")

    class Server:
        addresses = {"router": router.address}
        nats = nats_url
        router_log = run / "router-hosts.log"
        runtime_logs = [run / f"runtime-hosts-{n}.log" for n in (1, 2)]
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


def test_expect_100_continue_is_answered_before_the_body_is_sent(server):
    import socket
    address, _, port = server.addresses["router"].rpartition(":")
    with socket.create_connection((address, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
                     b"Connection: close\r\n\r\n")
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello")
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert (interim + rest).split(b"\r\n\r\n", 1)[1].startswith(b"HTTP/1.1 200 ")


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
    with _connect(server) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        answer = _dribble_until_closed(sock, within=15)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert request(server, "/hello")[0] == 200


def test_a_keep_alive_connection_busy_for_several_header_timeouts_is_never_cut_off(server):
    # The header deadline's one timer per connection fires while requests come and go; it must only ever close a
    # connection whose current request's headers are late (the server fixture's header timeout is 1 s).
    address, _, port = server.addresses["router"].rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=30)
    served = 0
    end = time.monotonic() + 3.5
    try:
        while time.monotonic() < end:
            conn.request("GET", "/hello", headers={"Host": f"localhost:{port}"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200 and not resp.will_close
            served += 1
    finally:
        conn.close()
    assert served > 3


def test_malformed_host_header_is_a_clear_error(server):
    answer = _raw(server, b"GET / HTTP/1.1\r\nHost: bad host\x01\r\nConnection: close\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
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


# --- issue 14: attacks that must fail (raw bytes: an HTTP client library would clean most of them up) -----------

def _send(server, head: bytes, body: bytes = b"") -> tuple[int, dict[str, list[str]], bytes]:
    """One request written byte for byte (``head`` is the request line and headers); the router closes after it."""
    answer = _raw(server, head + b"Connection: close\r\n\r\n" + body)
    status_line, _, rest = answer.partition(b"\r\n")
    head_out, _, body_out = rest.partition(b"\r\n\r\n")
    headers: dict[str, list[str]] = {}
    for line in head_out.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(status_line.split(b" ")[1]), headers, body_out


def _get(server, target: str | bytes, *lines: str | bytes, host: bytes = b"localhost"):
    encode = (lambda v: v if isinstance(v, bytes) else v.encode())
    head = b"GET " + encode(target) + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
    return _send(server, head + b"".join(encode(line) + b"\r\n" for line in lines))


# Hole 9: one normalised path for handler matching, login checks, static files and the app.

ADMIN_PATH_VARIANTS = ["//admin/panel", "/./admin/panel", "/x/../admin/panel", "/%2e%2e/admin/panel",
                       "/x/%2E%2E/admin/panel", "/x%2F..%2Fadmin/panel", "/%2Fadmin/panel", "///admin//panel",
                       "/admin/./panel", "/admin/x/../panel", "/static/../admin/panel", "/x/%2e%2E/admin/panel",
                       "http://localhost//x/../admin/panel"]


@pytest.fixture(scope="module")
def non_admin(server):
    return sign_in(server, "bob@example.com")


@pytest.mark.parametrize("target", ADMIN_PATH_VARIANTS)
def test_path_variants_of_an_admin_page_are_refused_to_non_administrators(server, non_admin, target):
    status, _, body = _get(server, target, f"Cookie: {non_admin}")
    assert status == 403, body


@pytest.mark.parametrize("target", ADMIN_PATH_VARIANTS)
def test_path_variants_of_an_admin_page_send_anonymous_visitors_to_sign_in(server, target):
    status, headers, _ = _get(server, target)
    assert status == 302 and headers["location"][0].startswith("/_ah/login?continue=")


@pytest.mark.parametrize(("target", "seen"), [
    ("/hello/../x//y", b"app:/x/y"), ("/a/%2e%2e/b%2Fc", b"app:/b/c"), ("/./q/.", b"app:/q/"),
    ("/%2541dmin/panel", b"app:/%41dmin/panel"),  # decoded once: the runtime does not decode it again
])
def test_the_app_sees_the_path_the_router_matched(server, target, seen):
    status, _, body = _get(server, target)
    assert (status, body) == (200, seen)


def test_static_files_are_found_by_the_normalised_path(server):
    status, _, body = _get(server, "/x/..//static/./css/site.css")
    assert (status, body) == (200, b"body { color: red }\n")


@pytest.mark.parametrize("target", ["/admin;x/panel", "/ADMIN/panel", "/Admin/panel", "/admin%3Bx/panel",
                                    "/admin..;/panel", "/admin"])
def test_path_parameters_and_case_variants_are_other_paths_to_the_app_too(server, target):
    # Not the admin handler's paths, and the app is given exactly the path that was matched, so it cannot serve
    # its admin page for them either.
    status, _, body = _get(server, target)
    assert status == 200 and body.startswith(b"app:/") and not body.startswith(b"app:/admin/")


@pytest.mark.parametrize("target", [b"/admin\\panel", b"/x\\..\\admin/panel", b"/%5c..%5cadmin/panel",
                                    b"/%5C%2e%2e%5Cadmin/panel", b"/admin%00/panel", b"/admin/%0d%0aX-A:%20b",
                                    b"/a%7f", b"ftp://localhost/admin/panel", b"*"])
def test_ambiguous_request_paths_get_400(server, target):
    status, headers, _ = _get(server, target)
    assert status == 400 and headers["server"] == ["kiln"]
    assert request(server, "/hello")[0] == 200


# Hole 9: bad Host values are 400, never 500, in every mode.

BAD_HOSTS = [b"bad host", b"bad\x01host", b"caf\xc3\xa9.test", b"\xff", b"", b"localhost:99999", b"localhost:0",
             b"localhost:8o", b"localhost:80:80", b"[::1", b"[zz::1]", b"a..b", b"a/b"]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_bad_host_values_get_400_in_development(server, host):
    status, headers, body = _get(server, "/hello", host=host)
    assert status == 400 and b"Host" in body and headers["server"] == ["kiln"]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_bad_host_values_get_400_in_production(production, host):
    status, _, body = _get(production, "/", host=host)
    assert status == 400 and b"Host" in body


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: probe.example.test\r\nHost: other.test\r\n",
    b"GET / HTTP/1.1\r\n",
    b"GET http://bad%20host/ HTTP/1.1\r\nHost: probe.example.test\r\n",
    b"GET http://probe.example.test:0/ HTTP/1.1\r\nHost: probe.example.test\r\n",
])
def test_several_missing_or_bad_absolute_hosts_get_400(production, head):
    status, headers, _ = _send(production, head)
    assert status == 400 and headers["server"] == ["kiln"]
    assert request(production, "/", host="probe.example.test")[0] == 200


# Hole 9: non-ASCII platform and inbound signatures are bad signatures, not crashes.

def _non_ascii_signatures() -> list[bytes]:
    now = str(int(time.time())).encode()
    return [now + b"." + "\u00e9".encode() * 64, now + b".\xff\xfe", "\u0661\u0667\u0660\u0660.abc".encode(),
            "\u00b2\u00b3.abc".encode(), now + ".\u0661".encode(), "\u03a9".encode(), b"\xff." + now]


# Named, not shown: the signatures hold the time, and pytest-xdist's workers must collect the same test ids.
NON_ASCII_SIGNATURE_IDS = ["e-acute-digest", "ff-fe-digest", "arabic-time", "superscript-time", "arabic-digest",
                           "omega", "ff-time"]


@pytest.mark.parametrize("signature", _non_ascii_signatures(), ids=NON_ASCII_SIGNATURE_IDS)
def test_non_ascii_platform_signature_does_not_pass_login_admin(server, signature):
    status, _, _ = _get(server, "/admin/panel", "X-Kiln-Platform: cron", b"X-Kiln-Platform-Signature: " + signature)
    assert status == 302  # an anonymous visitor, sent to sign in


@pytest.mark.parametrize("signature", _non_ascii_signatures(), ids=NON_ASCII_SIGNATURE_IDS)
def test_non_ascii_platform_signature_cannot_deliver_mail(server, signature):
    status, _, body = _send(server, b"POST /_ah/mail/a@probe.test HTTP/1.1\r\nHost: localhost\r\n"
                                    b"X-Kiln-Platform: mail\r\nX-Kiln-Platform-Signature: " + signature +
                                    b"\r\nContent-Length: 2\r\n", b"hi")
    assert status == 403 and b"mail service only" in body


@pytest.mark.parametrize("signature", _non_ascii_signatures(), ids=NON_ASCII_SIGNATURE_IDS)
def test_non_ascii_inbound_signature_gives_no_inbound_app_id(server, signature):
    status, _, body = _get(server, "/headers", "X-AppEngine-Inbound-AppId: probe",
                           b"X-Kiln-Inbound-Signature: " + signature)
    assert status == 200 and "HTTP_X_APPENGINE_INBOUND_APPID" not in json.loads(body)


def test_non_ascii_caller_names_are_not_callers(server):
    now = str(int(time.time())).encode()
    status, _, _ = _get(server, "/admin/panel", "X-Kiln-Platform: cr\u00f6n".encode(),
                        b"X-Kiln-Platform-Signature: " + now + b".abc")
    assert status == 302


# Hole 9: no Python or aiohttp version on any response.

def test_router_made_responses_say_server_kiln(server, non_admin):
    answers = [request(server, "/_ah/login"), request(server, "/_ah/logout"), request(server, "/static/css/site.css"),
               request(server, "/account/home"), request(server, "/api/data"), request(server, "/static/css/gone.css"),
               request(server, "/admin/panel", headers={"Cookie": non_admin}), request(server, "/_ah/kiln/healthz"),
               request(server, "/_ah/login", method="POST", body=b"email=",
                       headers={"Content-Type": "application/x-www-form-urlencoded"}),
               _get(server, "/hello", host=b"bad host"), _send(server, b"GET / HTTP/1.1\r\n"),
               _send(server, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n"), _send(server, b"THIS IS NOT HTTP\r\n"),
               _send(server, b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-\xc3\xa9: 1\r\n")]
    _, etagged, _ = request(server, "/static/css/site.css")
    answers.append(request(server, "/static/css/site.css", headers={"If-None-Match": etagged["etag"][0]}))
    statuses = [status for status, _, _ in answers]
    assert {200, 302, 304, 400, 401, 403, 404} <= set(statuses)
    for status, headers, _ in answers:
        assert headers["server"] == ["kiln"], status


def test_unknown_host_page_says_server_kiln(production):
    status, headers, _ = request(production, "/", host="nope.example.test")
    assert status == 404 and headers["server"] == ["kiln"]


# Hole 9: slow-header clients (slowloris) are closed by the header deadline (1 s in these fixtures; the production
# router's idle limit is the default 30 s, so only the header deadline can close them within the wait below).

def _dribble_until_closed(sock, *, within: float) -> bytes:
    """Send one more byte of a header line that never ends until the router closes; what it answered."""
    received = b""
    sock.settimeout(0.2)  # paces the bytes: a recv that waits, not a sleep
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            sock.sendall(b"a")
        except OSError:
            return received
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the router kept a slow-header connection open for {within} s")


def _connect(server):
    import socket
    address, _, port = server.addresses["router"].rpartition(":")
    return socket.create_connection((address, int(port)), timeout=10)


@pytest.mark.parametrize("start", [b"GET /", b"GET / HTTP/1.1\r\nX-Slow: ",
                                   b"GET / HTTP/1.1\r\nHost: probe.example.test\r\nX-Slow: ",
                                   b"POST / HTTP/1.1\r\nHost: probe.example.test\r\nContent-Length: 5\r\nX-Slow: "])
def test_a_client_that_never_finishes_its_headers_gets_408_and_is_closed(production, start):
    with _connect(production) as sock:
        sock.sendall(start)
        answer = _dribble_until_closed(sock, within=15)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"Server: kiln\r\n" in answer
    assert request(production, "/", host="probe.example.test")[0] == 200


def test_a_client_that_connects_and_sends_nothing_gets_408_and_is_closed(production):
    with _connect(production) as sock:
        sock.settimeout(15)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_keep_alive_client_that_never_finishes_its_next_request_is_closed(production):
    with _connect(production) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: probe.example.test\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"v1.1"):
            chunk = sock.recv(4096)
            assert chunk, "the router closed before answering the first request"
            first += chunk
        assert first.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: probe.example.test\r\nX-Slow: ")
        assert _dribble_until_closed(sock, within=15) == b""


# Hole 2: App Engine's and kiln's trusted headers in any spelling never come from the client.

TRUSTED_HEADERS = ["X-AppEngine-Cron", "X-AppEngine-User-Email", "X-AppEngine-User-Id", "X-AppEngine-User-Nickname",
                   "X-AppEngine-User-Is-Admin", "X-AppEngine-User-Organization", "X-AppEngine-Inbound-AppId",
                   "X-AppEngine-QueueName", "X-AppEngine-TaskName", "X-AppEngine-TaskRetryCount",
                   "X-AppEngine-TaskExecutionCount", "X-AppEngine-TaskETA", "X-AppEngine-TaskPreviousResponse",
                   "X-AppEngine-Country", "X-AppEngine-Region", "X-AppEngine-City", "X-AppEngine-CityLatLong",
                   "X-AppEngine-Request-Log-Id", "X-AppEngine-Default-Version-Hostname", "X-AppEngine-Https",
                   "X-Kiln-Platform", "X-Kiln-Platform-Signature", "X-Kiln-Inbound-Signature"]


@pytest.mark.parametrize("spell", [lambda n: n.replace("-", "_"), lambda n: n.replace("-", "_").lower(),
                                   lambda n: n.upper(), lambda n: n.replace("-", "_", 1),
                                   lambda n: "_".join(n.rsplit("-", 1))],
                         ids=["underscores", "lower-underscores", "upper", "first-underscore", "last-underscore"])
def test_spellings_of_trusted_headers_never_reach_the_app(server, spell):
    status, _, body = _get(server, "/headers", *(f"{spell(name)}: forged" for name in TRUSTED_HEADERS))
    seen = json.loads(body)
    assert status == 200 and b"forged" not in body
    assert not any(name.startswith("HTTP_X_KILN") for name in seen)
    assert seen["HTTP_X_APPENGINE_COUNTRY"] == "ZZ" and len(seen["HTTP_X_APPENGINE_REQUEST_LOG_ID"]) == 32


def test_a_header_and_its_underscore_spelling_never_share_a_variable(server):
    for lines in (["Foo-Bar: dash", "Foo_Bar: under"], ["Foo_Bar: under", "Foo-Bar: dash"],
                  ["foo_bar: under", "FOO-BAR: dash"]):
        seen = json.loads(_get(server, "/headers", *lines)[2])
        assert seen["HTTP_FOO_BAR"] == "dash", lines


def test_names_with_underscores_dots_and_the_proxy_header_are_dropped(server):
    seen = json.loads(_get(server, "/headers", "X_Custom: a", "X.Custom: b", "Proxy: http://evil.test",
                           "X-Custom-Ok: c")[2])
    assert "HTTP_X_CUSTOM" not in seen and "HTTP_X.CUSTOM" not in seen and "HTTP_PROXY" not in seen
    assert seen["HTTP_X_CUSTOM_OK"] == "c"


# Header values are bytes: any byte a client may send reaches the app as ISO-8859-1 text (PEP 3333), never a 500.

@pytest.mark.parametrize(("raw", "text"), [
    (b"\xff", "\xff"), (b"caf\xc3\xa9", "caf\u00c3\u00a9"), (b"caf\xe9", "caf\u00e9"),
    (b"\x80\x81\xfe\xff", "\x80\x81\xfe\xff"), (b"\xed\xa0\x80", "\xed\xa0\x80"), (b"a\tb \xc3", "a\tb \xc3")])
def test_header_bytes_that_are_not_utf_8_reach_the_app_exactly_as_iso_8859_1(server, raw, text):
    status, _, body = _get(server, "/headers", b"X-Foo: " + raw, b"Accept-Language: " + raw)
    seen = json.loads(body)
    assert status == 200 and seen["HTTP_X_FOO"] == text and seen["HTTP_ACCEPT_LANGUAGE"] == text


@pytest.mark.parametrize("raw", [b"\xff", b"caf\xe9", b"\xc3\xa9", b"\"\xfe\""])
def test_an_app_cookie_holding_any_bytes_reaches_the_app_beside_a_session(server, raw):
    session = sign_in(server, "ann@example.com").encode()
    status, _, body = _get(server, "/headers", b"Cookie: theme=" + raw + b"; " + session + b"; lang=en")
    assert status == 200 and json.loads(body)["HTTP_COOKIE"] == "theme=" + raw.decode("latin-1") + "; lang=en"


@pytest.mark.parametrize("name", [b"Referer", b"User-Agent", b"Cookie", b"Accept", b"Authorization"])
def test_non_utf_8_bytes_in_headers_the_router_reads_itself_are_not_a_500(server, name):
    status, _, body = _send(server, b"POST /headers HTTP/1.1\r\nHost: localhost\r\n" + name + b": x\xff\xe9\r\n"
                                    b"Content-Length: 0\r\n")
    assert status == 200 and "x\xff\xe9" in json.loads(body).values()


@pytest.mark.parametrize("forwarded", [b"\xff", b"81.2.69.160\xff", b"not-an-address", b"81.2.69.160, \xfe\xff"])
def test_a_forwarded_for_that_is_not_an_address_is_not_believed(server, forwarded):
    status, _, body = _send(server, b"GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: " + forwarded +
                            b"\r\n")
    assert status == 200 and json.loads(body)["REMOTE_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\x01b", b"a\x1b[2Jb", b"a\x7fb", b"a\x0bb"])
@pytest.mark.parametrize("name", [b"X-Foo", b"Cookie", b"User-Agent"])
def test_control_characters_in_request_header_values_get_400(server, name, value):
    status, headers, _ = _get(server, "/headers", name + b": " + value)
    assert status == 400 and headers["server"] == ["kiln"]
    assert request(server, "/hello")[0] == 200


@pytest.mark.parametrize("target", ["/_ah/logout?continue=/a%00b", "/_ah/logout?continue=/a%0d%0aSet-Cookie:x=1",
                                    "/_ah/logout?continue=/a%0bb", "/_ah/logout?continue=/%ff%fe",
                                    "/_ah/logout?continue=/a?q=%00%7f", "/_ah/login?continue=/a%1b"])
def test_a_continue_target_with_controls_or_odd_bytes_redirects_without_a_500(server, target):
    status, headers, _ = _get(server, target)
    assert status in (200, 302)
    location = "".join(headers.get("location", []))
    assert location.isascii() and location.isprintable() and "Set-Cookie" not in headers.get("set-cookie", [""])[0]


# Several Cookie headers are one cookie list ("; "), never "a=1,b=2"; one-value fields come once.

@pytest.mark.parametrize(("lines", "cookie"), [
    ([b"Cookie: a=1", b"Cookie: b=2"], "a=1; b=2"),
    ([b"Cookie: a=1; b=2", b"Cookie: c=3", b"Cookie: d=4"], "a=1; b=2; c=3; d=4"),
    ([b"cookie: a=1", b"COOKIE: b=2"], "a=1; b=2"),
])
def test_several_cookie_headers_reach_the_app_joined_by_semicolons(server, lines, cookie):
    status, _, body = _get(server, "/headers", *lines)
    assert status == 200 and json.loads(body)["HTTP_COOKIE"] == cookie


def test_the_session_cookie_in_its_own_cookie_header_is_removed_and_the_others_joined(server):
    session = sign_in(server, "ann@example.com").encode()
    status, _, body = _get(server, "/headers", b"Cookie: a=1", b"Cookie: " + session, b"Cookie: b=2")
    assert status == 200 and json.loads(body)["HTTP_COOKIE"] == "a=1; b=2"


def test_set_cookie_sent_by_a_client_never_reaches_the_app(server):
    seen = json.loads(_get(server, "/headers", b"Set-Cookie: a=1", b"set-cookie: b=2", b"X-Ok: 1")[2])
    assert "HTTP_SET_COOKIE" not in seen and seen["HTTP_X_OK"] == "1"


@pytest.mark.parametrize("lines", [
    [b"Content-Type: text/plain", b"Content-Type: application/json"],
    [b"Content-Type: text/plain", b"content-type: text/plain"],
    [b"Authorization: Basic YTpi", b"Authorization: Basic Yzpk"],
    [b"authorization: Bearer x", b"AUTHORIZATION: Bearer x"],
    [b"Origin: https://a.test", b"Origin: https://b.test"],
    [b"Range: bytes=0-1", b"Range: bytes=5-9"],
    [b"Referer: https://a.test/", b"Referer: https://b.test/"],
    [b"If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT", b"if-modified-since: Sun, 02 Jan 2000 00:00:00 GMT"],
])
def test_a_repeated_one_value_header_gets_400(server, lines):
    status, headers, body = _get(server, "/headers", *lines)
    assert status == 400 and lines[0].split(b":")[0].lower() in body.lower() and headers["server"] == ["kiln"]


@pytest.mark.parametrize("lines", [
    b"Content-Length: 3\r\nContent-Length: 4\r\n", b"Content-Length: 3\r\nContent-Length: 3\r\n",
    b"Content-Length: 3, 3\r\n", b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: +3\r\n", b"Content-Length: 0x3\r\n",
])
def test_repeated_listed_or_contradicted_content_lengths_get_400(server, lines):
    status, headers, _ = _send(server, b"POST /headers HTTP/1.1\r\nHost: localhost\r\n" + lines, b"abcd")
    assert status == 400 and headers["server"] == ["kiln"]
    assert request(server, "/hello")[0] == 200


# Response headers HTTP cannot carry: the runtime answers 500 and says why in the app's log; the router, which
# trusts no runtime, checks again.

def _wait_for_line(paths: list[pathlib.Path], needle: str, *, within: float = 20) -> str:
    end = time.monotonic() + within
    while time.monotonic() < end:
        for path in paths:
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needle!r} in {[p.name for p in paths]}")


@pytest.mark.parametrize("index", range(len(BAD_RESPONSE_HEADERS)))
def test_a_response_header_http_cannot_carry_becomes_a_500_with_a_log_line(production, index):
    status, headers, body = _get(production, f"/bad-header/{index}", host=b"probe.example.test")
    assert status == 500 and b"sent" not in body and "x-fine" not in headers and "evil=1" not in str(headers)
    line = _wait_for_line(production.runtime_logs, f"/bad-header/{index}: the app's response header")
    assert "answering 500" in line
    assert request(production, "/", host="probe.example.test")[0] == 200


def test_a_response_header_of_utf_8_bytes_reaches_the_client_exactly(production):
    answer = _raw(production, b"GET /utf-8-header HTTP/1.1\r\nHost: probe.example.test\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and "X-Name: café €\r\n".encode() in answer


@pytest.mark.parametrize(("name", "value"), [
    ("X-Bad", b"a\r\nSet-Cookie: evil=1"), ("X-Bad", b"a\nb"), ("X-Bad", b"\x00"), ("X-Bad", b"caf\xe9"),
    ("X-Bad", b"\xff\xfe"), ("X-Bad", "a\u0085b".encode()), ("X Bad", b"v"), ("X-Caf\u00e9", b"v"),
    ("Set-Cookie\r\nX-Injected", b"1")])
async def test_the_router_refuses_bad_response_headers_from_a_hostile_runtime(production, name, value):
    # An app controls its runtime's process, so it can answer the router with any HttpResponse at all.
    import asyncio
    import nats as nats_client
    from kiln.pb.runtime.v1 import http_pb2
    nc = await nats_client.connect(production.nats)

    async def answer(msg):
        resp = http_pb2.HttpResponse(status=200, body=b"sent", instance_id="hostile")
        resp.headers.add(name="X-Fine", value=b"yes")
        resp.headers.add(name=name, value=value)
        await msg.respond(resp.SerializeToString())

    sub = await nc.subscribe("kiln.http.probe.hostile", cb=answer)
    await nc.flush()
    try:
        status, headers, body = await asyncio.to_thread(_get, production, "/", host=b"hostile-dot-probe.example.test")
    finally:
        await sub.unsubscribe()
        await nc.close()
    assert status == 500 and body != b"sent" and "x-fine" not in headers
    line = _wait_for_line([production.router_log], "(instance hostile")
    assert "the app's response header cannot be sent" in line and "answering 500" in line
    assert request(production, "/", host="probe.example.test")[0] == 200


# Slow request bodies: a client must keep a minimum rate (1 s grace, then 100 bytes a second in these fixtures).

def _closed_within(sock, within: float) -> bytes:
    """Everything the router sends until it closes the connection, or AssertionError after ``within`` seconds."""
    sock.settimeout(within)
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


@pytest.mark.parametrize(("head", "start"), [
    (b"POST /length HTTP/1.1\r\nHost: probe.example.test\r\nContent-Length: 100000\r\n\r\n", b""),
    (b"POST /length HTTP/1.1\r\nHost: probe.example.test\r\nContent-Length: 100000\r\n\r\n", b"x" * 150),
    (b"PUT /length HTTP/1.1\r\nHost: probe.example.test\r\nTransfer-Encoding: chunked\r\n\r\n", b"10000\r\n"),
    (b"POST / HTTP/1.1\r\nHost: probe.example.test\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n", b""),
])
def test_a_client_that_dribbles_its_request_body_gets_408_and_is_closed(production, head, start):
    with _connect(production) as sock:
        sock.sendall(head + start)
        answer = _dribble_until_closed(sock, within=15)
    assert b"HTTP/1.1 408 " in answer and b"Server: kiln\r\n" in answer and b"bytes a second" in answer
    assert request(production, "/", host="probe.example.test")[0] == 200


def test_a_client_that_sends_headers_and_no_body_gets_408_and_is_closed(production):
    with _connect(production) as sock:
        sock.sendall(b"POST /length HTTP/1.1\r\nHost: probe.example.test\r\nContent-Length: 10\r\n\r\n")
        try:
            answer = _closed_within(sock, 15)
        except TimeoutError:
            raise AssertionError("the router kept a connection with a missing body open for 15 s") from None
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_slow_body_to_the_routers_own_sign_in_form_gets_408(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /_ah/login HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 5000\r\n\r\nemail=")
        answer = _dribble_until_closed(sock, within=15)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert request(server, "/hello")[0] == 200


@pytest.mark.parametrize("size", [200_000, 6 * 1024 * 1024])
def test_big_uploads_at_a_normal_rate_still_reach_the_app(production, size):
    status, _, body = request(production, "/length", method="POST", body=b"u" * size, host="probe.example.test")
    assert (status, body) == (200, str(size).encode())


def test_a_chunked_upload_sent_in_pieces_reaches_the_app(production):
    chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b"c" * 1000) for _ in range(50)) + b"0\r\n\r\n"
    status, _, body = _send(production, b"POST /length HTTP/1.1\r\nHost: probe.example.test\r\n"
                                        b"Transfer-Encoding: chunked\r\n", chunks)
    assert (status, body) == (200, b"50000")


@pytest.mark.parametrize(("content_type", "form"), [
    (b"application/x-www-form-urlencoded", b"email=\xff@x.test"),
    (b"application/x-www-form-urlencoded; charset=no-such-charset", b"email=a@x.test"),
    (b"multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n\xff@x.test\r\n"
                                         b"--B--\r\n"),
    (b"multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name=\"email\"\r\n"
                                         b"Content-Type: application/octet-stream\r\n\r\na@x.test\r\n--B--\r\n"),
])
def test_a_sign_in_form_that_is_not_text_gets_400(server, content_type, form):
    status, headers, _ = _send(server, b"POST /_ah/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: " +
                               content_type + b"\r\nContent-Length: %d\r\n" % len(form), form)
    assert status == 400 and "set-cookie" not in headers
    assert request(server, "/hello")[0] == 200


# --- the HTTP layer's contract: what the router's front door keeps, whichever HTTP server it runs on -------------

def _responses(answer: bytes, methods: list[bytes]) -> list[tuple[int, bytes]]:
    """Status and body of each response on one connection, read by their ``Content-Length`` (a ``HEAD``'s has no
    body whatever its length says); fails when bytes are left over or a response is missing."""
    out = []
    for method in methods:
        head, separator, answer = answer.partition(b"\r\n\r\n")
        assert separator, f"a response is missing: {out}"
        lines = head.split(b"\r\n")
        lengths = [int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:")]
        length = 0 if method == b"HEAD" else lengths[0]
        out.append((int(lines[0].split(b" ")[1]), answer[:length]))
        answer = answer[length:]
    assert answer == b"", answer
    return out


def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    requests = [b"GET /p%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % n for n in range(3)]
    answer = _raw(server, b"".join(requests) + b"GET /p3 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert _responses(answer, [b"GET"] * 4) == [(200, b"app:/p%d" % n) for n in range(4)]


def test_a_head_answer_sends_no_body_and_the_next_request_on_the_connection_is_read_whole(server):
    answer = _raw(server, b"HEAD /first HTTP/1.1\r\nHost: localhost\r\n\r\n"
                          b"GET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert _responses(answer, [b"HEAD", b"GET"]) == [(200, b""), (200, b"app:/second")]


def test_a_chunked_request_body_over_the_limit_gets_413(server):
    chunk = b"x" * (1024 * 1024)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(33)) + b"0\r\n\r\n"
    status, headers, _ = _send(server, b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n",
                               body)
    assert status == 413 and headers["server"] == ["kiln"]


@pytest.mark.parametrize("lines", [
    b"X-Folded: one\r\n two\r\n",  # obsolete line folding (RFC 9112 5.2: reject or replace by spaces)
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\x0bchunked\r\n",
    b"Content-Length: 4\r\nTransfer-Encoding: identity\r\n",
])
def test_ambiguous_framing_and_folded_headers_get_400_and_never_reach_the_app(server, lines):
    # A request whose body's end two servers could see differently (request smuggling) is refused, as is a folded
    # header a proxy before the router could read as two.
    status, headers, body = _send(server, b"POST /headers HTTP/1.1\r\nHost: localhost\r\n" + lines,
                                  b"4\r\nabcd\r\n0\r\n\r\n")
    assert status in (400, 501) and b"HTTP_" not in body and headers["server"] == ["kiln"]
    assert request(server, "/hello")[0] == 200
