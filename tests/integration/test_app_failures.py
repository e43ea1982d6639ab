"""Apps that fail in App Engine's usual ways get a correct HTTP error, a log line, and harm nobody else."""

from __future__ import annotations

import textwrap

import pytest

from tests.integration import apps
from tests.integration.apps import running

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
    files = {"main.py": MAIN, "broken.py": "import this_module_does_not_exist\n"}
    with running(tmp_path_factory.mktemp("failures"), files, app_yaml=APP_YAML) as srv:
        yield srv


def fetch(server, path):
    status, _, body = apps.fetch(server, path)
    return status, body


def runtime_log(server):
    return "".join(p.read_text() for p in server.instances_dir.glob("instance-*.log"))


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
