"""Threads an app starts during a request belong to it (App Engine's rule), through router, NATS and runtime."""

from __future__ import annotations

import textwrap
import time
import urllib.request

import pytest

from deploy.dev import DevOptions, DevServer

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent('''
    import os, threading, time
    DONE = []

    def work(tag):
        time.sleep(0.6)
        DONE.append((tag, os.environ.get("PATH_INFO")))

    def app(environ, start_response):
        if environ["PATH_INFO"].startswith("/start/"):
            threading.Thread(target=work, args=(environ["PATH_INFO"],)).start()
            start_response("200 OK", [])
            return [b"started"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(DONE).encode()]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("threads")
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text(MAIN)
    srv = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data"))
    srv.start()
    yield srv
    srv.stop()


def fetch(server, path):
    with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=30) as resp:
        return resp.read()


def test_request_finishes_only_after_the_threads_it_started(server):
    started = time.monotonic()
    assert fetch(server, "/start/one") == b"started"
    assert time.monotonic() - started >= 0.6
    assert "('/start/one', '/start/one')" in fetch(server, "/done").decode()


def test_threads_see_the_environment_of_the_request_that_started_them(server):
    fetch(server, "/start/two")
    assert "('/start/two', '/start/two')" in fetch(server, "/done").decode()
