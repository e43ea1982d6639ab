"""An app's outbound HTTP on kiln, as on App Engine: kiln.api.urlfetch, and the standard library's urllib and
http.client carried by the URL Fetch service (the app's process opens no socket). Through router, NATS, the
runtime and urlfetch_svc, against real local HTTP and HTTPS servers."""

from __future__ import annotations

import json
import textwrap
import urllib.parse

import pytest

from tests.integration import webservers
from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import http.client, json, urllib.error, urllib.parse, urllib.request
    from kiln.api import urlfetch

    def run(action, target):
        if action == "urlfetch":
            result = urlfetch.fetch(target, headers={"X-From": "app"})
            return {"status": result.status_code, "body": result.content.decode()}
        if action == "urllib":
            with urllib.request.urlopen(target) as resp:
                return {"status": resp.status, "body": resp.read().decode(), "type": resp.headers["Content-Type"]}
        if action == "urllib-post":
            with urllib.request.urlopen(urllib.request.Request(target, data=b"a=1")) as resp:
                return {"status": resp.status, "body": resp.read().decode()}
        if action == "urllib-404":
            try:
                urllib.request.urlopen(target)
            except urllib.error.HTTPError as exc:
                return {"status": exc.code, "body": exc.read().decode()}
        if action == "http-client":
            parts = urllib.parse.urlsplit(target)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            out = []
            for _ in range(2):  # the connection object is reusable, as a real one is
                conn.request("PUT", parts.path, body=b"payload", headers={"X-Run": "1"})
                resp = conn.getresponse()
                out.append({"status": resp.status, "body": resp.read().decode()})
            conn.close()
            return out
        if action == "urlfetch-refused":
            try:
                urlfetch.fetch(target)
            except urlfetch.Error as exc:
                return {"error": type(exc).__name__}
        if action == "urllib-https-untrusted":
            try:
                urllib.request.urlopen(target)
            except urllib.error.URLError as exc:
                return {"error": str(exc.reason)}
        raise ValueError(action)

    def app(environ, start_response):
        query = dict(urllib.parse.parse_qsl(environ["QUERY_STRING"]))
        action = environ["PATH_INFO"].strip("/")
        if action == "caller":
            body = {"caller": environ.get("HTTP_X_APPENGINE_INBOUND_APPID")}
        elif action == "call-self":
            own = "http://" + environ["DEFAULT_VERSION_HOSTNAME"] + "/caller"
            result = urlfetch.fetch(own, follow_redirects=query["follow"] == "1")
            body = json.loads(result.content)
        else:
            body = run(action, query["url"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    with webservers.serving("127.0.0.2") as plain, \
            webservers.serving("127.0.0.2", tls_dir=tmp_path_factory.mktemp("tls")) as tls:
        yield plain.base, tls.base


@pytest.fixture(scope="module")
def loopback():
    """A server on 127.0.0.1 (forbidden to the app) that records what it receives."""
    with webservers.serving("127.0.0.1") as sink:
        yield sink


@pytest.fixture(scope="module")
def server(tmp_path_factory, targets):
    with running(tmp_path_factory.mktemp("outbound"), {"main.py": MAIN},
                 urlfetch_allow_internal="127.0.0.2/32") as srv:
        yield srv


def call(server, action, url):
    status, _, body = fetch(server, f"/{action}?url={urllib.parse.quote(url, safe='')}")
    assert status == 200, body
    return json.loads(body)


def test_kiln_api_urlfetch_fetches_for_the_app(server, targets):
    result = call(server, "urlfetch", targets[0] + "/echo")
    echoed = json.loads(result["body"])
    assert result["status"] == 200 and echoed["headers"]["X-From"] == "app"
    assert echoed["headers"]["User-Agent"].endswith(f"appid: {server.app_id})")


def test_urllib_get_goes_through_url_fetch(server, targets):
    result = call(server, "urllib", targets[0] + "/")
    assert result == {"status": 200, "body": "hello from 127.0.0.2", "type": "text/plain"}


def test_urllib_post_sends_its_body(server, targets):
    result = call(server, "urllib-post", targets[0] + "/echo")
    assert json.loads(result["body"])["method"] == "POST" and json.loads(result["body"])["body"] == "a=1"


def test_urllib_follows_redirects_itself(server, targets):
    result = call(server, "urllib", targets[0] + "/redirect?to=/status?code=200")
    assert result["body"] == "status 200"


def test_urllib_error_statuses_are_http_errors(server, targets):
    assert call(server, "urllib-404", targets[0] + "/status?code=404") == {"status": 404, "body": "status 404"}


def test_http_client_connection_sends_requests_through_url_fetch(server, targets):
    results = call(server, "http-client", targets[0] + "/echo")
    assert [r["status"] for r in results] == [200, 200]
    assert [json.loads(r["body"])["body"] for r in results] == ["payload", "payload"]


def test_urllib_https_validates_the_certificate(server, targets):
    assert "SSLCertificateError" in call(server, "urllib-https-untrusted", targets[1] + "/")["error"]


def test_an_app_calling_an_app_through_the_router_is_named_by_x_appengine_inbound_appid(server):
    status, _, body = fetch(server, "/call-self?follow=0")
    assert status == 200 and json.loads(body) == {"caller": server.app_id}


def test_inbound_appid_is_not_sent_when_redirects_are_followed(server):
    status, _, body = fetch(server, "/call-self?follow=1")
    assert status == 200 and json.loads(body) == {"caller": None}


def test_a_client_cannot_forge_inbound_appid(server):
    import urllib.request
    req = urllib.request.Request(server.url + "caller", headers={
        "X-AppEngine-Inbound-AppId": "someone", "X-Kiln-Inbound-Signature": "9999999999.deadbeef"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.loads(resp.read()) == {"caller": None}


@pytest.mark.parametrize("host", ["①②⑦.0.0.1", "１２７。０。０。１", "127．0．0．1", "0x7f.1", "2130706433", "localhost",
                                  "[::ffff:127.0.0.1]"])
def test_an_app_cannot_reach_loopback_through_any_spelling_of_it(server, targets, loopback, host):
    url = f"http://{host}:{loopback.server_address[1]}/secret"
    assert call(server, "urlfetch-refused", url) == {"error": "ForbiddenDestinationError"}
    redirect = targets[0] + "/redirect?to=" + urllib.parse.quote(url, safe="")
    assert call(server, "urlfetch-refused", redirect) == {"error": "ForbiddenDestinationError"}
    assert loopback.seen == []
