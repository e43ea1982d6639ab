"""Apps that fail in App Engine's usual ways get a correct HTTP error, a log line, and harm nobody else."""

from __future__ import annotations

import textwrap
import urllib.error
import urllib.request

import pytest

from deploy.dev import DevOptions, DevServer

pytestmark = pytest.mark.nats

APP_YAML = """
runtime: python27
api_version: 1
threadsafe: true
inbound_services:
- warmup
handlers:
- url: /broken/.*
  script: broken.app
- url: /.*
  script: main.app
"""

MAIN = textwrap.dedent('''
    import os
    WARMED = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/_ah/warmup":
            WARMED.append(environ["REQUEST_LOG_ID"])
            start_response("200 OK", [])
            return [b"warm"]
        if path == "/warmed":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(len(WARMED)).encode()]
        if path == "/none":
            start_response("200 OK", [])
            return None
        if path == "/bad-status":
            start_response("OK", [])
            return [b"x"]
        if path == "/text-chunks":
            start_response("200 OK", [])
            return ["not bytes"]
        if path == "/no-start-response":
            return [b"x"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fine"]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("failures")
    (app_dir / "app.yaml").write_text(APP_YAML)
    (app_dir / "main.py").write_text(MAIN)
    (app_dir / "broken.py").write_text("import this_module_does_not_exist\n")
    srv = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data"))
    srv.start()
    yield srv
    srv.stop()


def fetch(server, path):
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def runtime_log(server):
    return "".join(p.read_text() for p in server.run_dir.glob("runtime*.log"))


def test_warmup_request_runs_before_the_first_user_request(server):
    assert fetch(server, "/warmed") == (200, b"1")


@pytest.mark.parametrize("path", ["/none", "/bad-status", "/text-chunks", "/no-start-response"])
def test_wsgi_mistakes_give_500_and_the_instance_keeps_serving(server, path):
    status, body = fetch(server, path)
    assert status == 500 and b"Traceback" not in body
    assert fetch(server, "/ok") == (200, b"fine")


def test_module_that_fails_to_import_gives_500_with_the_traceback_in_the_log(server):
    status, body = fetch(server, "/broken/page")
    assert status == 500 and b"this_module_does_not_exist" not in body
    assert "ModuleNotFoundError: No module named 'this_module_does_not_exist'" in runtime_log(server)
    assert fetch(server, "/ok") == (200, b"fine")
