"""Background threads (App Engine's background_thread API): they outlive requests on manual scaling, are refused
on automatic scaling, and run under the sandbox. Through router, NATS, the instance manager and the runtime."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.integration import apps
from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import json, os, threading, time
    from kiln.api import background_thread

    TICKS = []
    SEEN = {}

    def ticker():
        SEEN["request_id"] = os.environ.get("REQUEST_LOG_ID")
        try:
            open("/tmp/kiln-background-escape.txt", "w")
            SEEN["write"] = "escaped"
        except Exception as exc:
            SEEN["write"] = type(exc).__name__
        while len(TICKS) < 1000:
            TICKS.append(time.time())
            time.sleep(0.05)

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/start":
            try:
                background_thread.start_new_background_thread(ticker, [])
                body = {"started": True}
            except background_thread.Error as exc:
                body = {"error": type(exc).__name__}
        elif path == "/limit":
            errors = []
            for _ in range(12):
                try:
                    background_thread.start_new_background_thread(time.sleep, [5])
                except background_thread.BackgroundThreadLimitReachedError:
                    errors.append("limit")
            body = {"refused": len(errors)}
        else:
            body = {"ticks": len(TICKS), **SEEN}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')


def app_yaml(scaling: str) -> str:
    return ("runtime: python27\napi_version: 1\nthreadsafe: true\n" + scaling +
            "handlers:\n- url: /.*\n  script: main.app\n")


def get(server, path):
    status, _, body = fetch(server, path)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
    with running(tmp_path_factory.mktemp("backend"), {"main.py": MAIN},
                 app_yaml=app_yaml("manual_scaling:\n  instances: 1\n")) as srv:
        yield srv


def test_a_background_thread_outlives_the_request_that_started_it(manual):
    assert get(manual, "/start") == {"started": True}
    first = get(manual, "/ticks")["ticks"]
    apps.wait_for(lambda: get(manual, "/ticks")["ticks"] > first + 5, 10)


def test_a_background_thread_has_no_request_environment_and_is_sandboxed(manual):
    apps.wait_for(lambda: "write" in get(manual, "/ticks"), 60)  # the ticker's first write, on a loaded machine
    seen = get(manual, "/ticks")
    assert seen["request_id"] is None and seen["write"] == "SandboxError"


def test_an_instance_runs_at_most_ten_background_threads(manual):
    assert get(manual, "/limit")["refused"] >= 2  # the ticker may still run: 10 - 1 fit


def test_automatic_scaling_refuses_background_threads(tmp_path):
    with running(tmp_path / "frontend", {"main.py": MAIN}, app_yaml=app_yaml("")) as srv:
        assert get(srv, "/start") == {"error": "FrontendsNotSupported"}
