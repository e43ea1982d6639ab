"""router.headers, runtime.wsgi and kiln_platform.httpfields: header lines between client, router and app."""

import pytest

from kiln.pb.runtime.v1 import http_pb2
from kiln_platform.httpfields import response_problem
from router.headers import from_client, received, repeated_single
from runtime.wsgi import (BadResponseHeaderError, InstanceInfo, build_environ, call_app, parse_cgi_output,
                          request_environ, string_variables)

TRUSTED = ["X-AppEngine-Cron", "X-AppEngine-User-Email", "X-AppEngine-User-Id", "X-AppEngine-User-Nickname",
           "X-AppEngine-User-Is-Admin", "X-AppEngine-User-Organization", "X-AppEngine-Inbound-AppId",
           "X-AppEngine-QueueName", "X-AppEngine-TaskName", "X-AppEngine-TaskRetryCount",
           "X-AppEngine-TaskExecutionCount", "X-AppEngine-TaskETA", "X-AppEngine-TaskPreviousResponse",
           "X-AppEngine-Country", "X-AppEngine-Region", "X-AppEngine-City", "X-AppEngine-CityLatLong",
           "X-AppEngine-Request-Log-Id", "X-AppEngine-Default-Version-Hostname", "X-AppEngine-Https",
           "X-Kiln-Platform", "X-Kiln-Platform-Signature", "X-Kiln-Inbound-Signature"]


def _spellings(name: str) -> list[str]:
    return [name, name.upper(), name.lower(), name.replace("-", "_"), name.replace("-", "_").lower(),
            name.replace("-", "_", 1), "_".join(name.rsplit("-", 1))]


@pytest.mark.parametrize("name", TRUSTED)
def test_every_spelling_of_a_trusted_header_is_dropped(name):
    assert from_client([(spelling, "forged") for spelling in _spellings(name)]) == []


@pytest.mark.parametrize("name", ["Foo_Bar", "X.Custom", "X Custom", "X-Custom\u0131"])
def test_names_other_than_letters_digits_and_hyphens_are_dropped(name):
    assert from_client([(name, "v")]) == []


def test_hop_by_hop_proxy_and_consumed_headers_are_dropped():
    kept = from_client([("Connection", "x"), ("Proxy", "http://evil"), ("X_Forwarded_For", "1.2.3.4"),
                        ("X-Forwarded-For", "1.2.3.4"), ("Content-Length", "3"), ("X-Ok", "1")],
                       consumed=("x-forwarded-for",))
    assert kept == [("X-Ok", "1")]


def _environ(*headers: tuple[str, str | bytes]) -> dict[str, object]:
    req = http_pb2.HttpRequest(method="GET", path="/", host="a.test")
    for name, value in headers:
        req.headers.add(name=name, value=value if isinstance(value, bytes) else value.encode())
    info = InstanceInfo(app_id="a", version_id="v", minor_version=1, instance_id="i", auth_domain="gmail.com",
                        default_hostname="a.test", dev=False, env_variables={})
    return build_environ(req, info)


def test_the_runtime_never_lets_an_underscore_name_share_a_variable():
    environ = _environ(("Foo-Bar", "dash"), ("Foo_Bar", "underscore"), ("X_AppEngine_Cron", "true"))
    assert environ["HTTP_FOO_BAR"] == "dash"
    assert "HTTP_X_APPENGINE_CRON" not in environ


def test_the_runtime_joins_repeats_of_one_header():
    assert _environ(("X-A", "1"), ("x-a", "2"))["HTTP_X_A"] == "1,2"


@pytest.mark.parametrize(("cookies", "joined"), [
    (["a=1", "b=2"], "a=1; b=2"), (["a=1; b=2", "c=3"], "a=1; b=2; c=3"), (["a=1", "b=2", "c=3"], "a=1; b=2; c=3")])
def test_the_runtime_joins_several_cookie_headers_with_a_semicolon(cookies, joined):
    assert _environ(*(("Cookie", c) for c in cookies))["HTTP_COOKIE"] == joined


@pytest.mark.parametrize(("raw", "text"), [
    (b"\xff", "\xff"), (b"caf\xc3\xa9", "caf\u00c3\u00a9"), (b"caf\xe9", "caf\u00e9"), (b"a\tb", "a\tb"),
    (b"\x80\x81\xfe", "\x80\x81\xfe")])
def test_header_bytes_reach_the_app_as_iso_8859_1_text(raw, text):
    environ = _environ(("X-Foo", raw), ("Cookie", b"v=" + raw), ("Content-Type", b"text/plain; x=" + raw))
    assert environ["HTTP_X_FOO"] == text and environ["HTTP_COOKIE"] == "v=" + text
    assert environ["CONTENT_TYPE"] == "text/plain; x=" + text
    assert environ["HTTP_X_FOO"].encode("latin-1") == raw  # PEP 3333: the bytes, one character each


def test_received_keeps_every_byte_of_every_line_in_order():
    assert received([(b"X-A", b"\xff"), (b"Cookie", b"a=\xe9"), (b"X-A", b"2")]) == [
        ("X-A", "\xff"), ("Cookie", "a=\xe9"), ("X-A", "2")]


@pytest.mark.parametrize("names", [("Content-Type", "content-type"), ("Authorization", "AUTHORIZATION"),
                                   ("Origin", "Origin"), ("Range", "range"), ("User-Agent", "User-Agent")])
def test_a_repeated_one_value_field_is_found(names):
    assert repeated_single([(names[0], "a"), ("X-Other", "b"), (names[1], "c")]) == names[1]


def test_repeated_list_fields_are_not_refused():
    assert repeated_single([("Cookie", "a=1"), ("Cookie", "b=2"), ("Accept", "a"), ("Accept", "b"),
                            ("Content-Type", "text/plain")]) is None


def test_set_cookie_never_reaches_the_app_from_a_request():
    assert from_client([("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("X-Ok", "1")]) == [("X-Ok", "1")]


@pytest.mark.parametrize(("name", "value"), [
    ("X-A", b"a\r\nSet-Cookie: x=1"), ("X-A", b"a\nb"), ("X-A", b"a\rb"), ("X-A", b"a\x00b"), ("X-A", b"\x1b[31m"),
    ("X-A", b"a\x7fb"), ("X-A", b"caf\xe9"), ("X-A", b"\xff"), ("X-A", "a\u0085b".encode()),
    ("X-A", "a\u2028b".encode()), ("X-Caf\u00e9", b"v"), ("X A", b"v"), ("X:A", b"v"), ("", b"v")])
def test_response_headers_http_cannot_carry_are_refused(name, value):
    assert response_problem(name, value) is not None


@pytest.mark.parametrize("value", [b"plain", b"a\tb", "caf\u00e9".encode(), "\u20ac 5".encode(), b""])
def test_ascii_and_utf_8_response_header_values_are_sent(value):
    assert response_problem("X-A", value) is None


def _respond_with(headers):
    def app(environ, start_response):
        start_response("200 OK", headers)
        return [b"ok"]
    return app


@pytest.mark.parametrize("headers", [[("X-A", "a\r\nSet-Cookie: x=1")], [("X-A", "\u20ac")], [("X-A", "a\x00")],
                                     [("X-A", "caf\u00e9")], [("X Bad", "v")], [("X-Ok", "1"), ("X-A", "\n")]])
def test_the_runtime_refuses_a_wsgi_response_header_http_cannot_carry(headers):
    with pytest.raises(BadResponseHeaderError, match="response header"):
        call_app(_respond_with(headers), {})


def test_the_runtime_sends_wsgi_header_values_as_their_iso_8859_1_bytes():
    resp = call_app(_respond_with([("X-A", "plain"), ("X-B", "caf\u00c3\u00a9")]), {})
    assert [(h.name, h.value) for h in resp.headers] == [("X-A", b"plain"), ("X-B", "caf\u00e9".encode())]


@pytest.mark.parametrize("output", [b"X-A: a\rb\n\nbody", b"X-A: \x00\n\nbody", b"X-A: caf\xe9\n\nbody"])
def test_the_runtime_refuses_a_cgi_header_http_cannot_carry(output):
    with pytest.raises(BadResponseHeaderError):
        parse_cgi_output(output)


def _request_environ(*headers: tuple[str, str], env: dict[str, str] | None = None) -> tuple[dict[str, object], bool]:
    req = http_pb2.HttpRequest(method="POST", path="/task", host="a.test")
    for name, value in headers:
        req.headers.add(name=name, value=value.encode())
    info = InstanceInfo(app_id="a", version_id="v", minor_version=1, instance_id="i", auth_domain="gmail.com",
                        default_hostname="a.test", dev=False, env_variables=env or {})
    return request_environ(req, info)


@pytest.mark.parametrize("name", ["X-AppEngine-QueueName", "x-appengine-queuename", "X-APPENGINE-QUEUENAME"])
def test_the_environs_header_pass_says_a_queue_name_header_makes_a_push_task(name):
    environ, task = _request_environ(("Host", "a.test"), (name, "default"))
    assert task is True
    assert environ["HTTP_X_APPENGINE_QUEUENAME"] == "default"


def test_a_request_without_a_queue_name_header_is_not_a_task_whatever_its_app_variables_say():
    environ, task = _request_environ(("X-AppEngine-TaskName", "t1"), ("X_AppEngine_QueueName", "forged"),
                                     env={"HTTP_X_APPENGINE_QUEUENAME": "from-app-yaml"})
    assert task is False
    assert environ["HTTP_X_APPENGINE_QUEUENAME"] == "from-app-yaml"


def test_a_requests_os_environ_holds_exactly_the_string_values_of_its_wsgi_environ_in_a_dict_of_its_own():
    req = http_pb2.HttpRequest(method="POST", path="/a%20b", host="a.test", scheme="https", body=b"x=1",
                               user=http_pb2.SignedInUser(email="u@example.com", user_id="1", is_admin=True, proof="p"))
    for name, value in (("Cookie", "a=1"), ("Cookie", "b=2"), ("X-AppEngine-QueueName", "q"), ("Content-Type", "t")):
        req.headers.add(name=name, value=value.encode())
    info = InstanceInfo(app_id="a", version_id="v", minor_version=1, instance_id="i", auth_domain="gmail.com",
                        default_hostname="a.test", dev=True, env_variables={"MODE": "x", "wsgi.run_once": "shadow"})
    environ, _ = request_environ(req, info)
    environ["HTTP_X_APPENGINE_API_TICKET"] = "ticket"  # the runtime adds its ticket before the request scope
    variables = string_variables(environ, info)
    assert variables == {k: v for k, v in environ.items() if isinstance(v, str)}
    assert list(variables) == [k for k, v in environ.items() if isinstance(v, str)]
    variables["MODE"] = "changed"
    assert environ["MODE"] == "x"
