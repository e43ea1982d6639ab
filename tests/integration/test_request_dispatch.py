"""How an instance hands requests to its request threads and answers them, under concurrency: through router, NATS
and runtime, with one instance (runtime.app: one hop to a request thread, one back; one request timer for all)."""

from __future__ import annotations

import concurrent.futures
import json
import textwrap

import pytest

from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

ONE_INSTANCE = ("runtime: python27\napi_version: 1\nthreadsafe: {threadsafe}\n"
                "automatic_scaling:\n  max_instances: 1\n"
                "handlers:\n- url: /.*\n  script: main.app\n")

MAIN = textwrap.dedent('''
    import json, os, threading, time

    # Four requests must be inside the app at once before any of them answers: proof they run concurrently.
    TOGETHER = threading.Barrier(4)
    LOCK = threading.Lock()
    STATE = {"inside": 0, "most": 0}

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        body = {}
        if path == "/together":
            body["waited"] = TOGETHER.wait(20) is not None
        elif path == "/count":
            with LOCK:
                STATE["inside"] += 1
                STATE["most"] = max(STATE["most"], STATE["inside"])
            time.sleep(0.02)  # the app's own work: long enough for another request to arrive meanwhile
            with LOCK:
                STATE["inside"] -= 1
        elif path == "/most":
            body["most"] = STATE["most"]
        elif path == "/overrun":
            spin(30)
        body.update({"query": environ["QUERY_STRING"], "env_query": os.environ["QUERY_STRING"],
                     "log_id": environ["REQUEST_LOG_ID"], "header": environ.get("HTTP_X_TEST", ""),
                     "length": environ["CONTENT_LENGTH"], "body": environ["wsgi.input"].read().decode()})
        start_response("200 OK", [("Content-Type", "application/json"), ("X-Echo", environ["QUERY_STRING"])])
        return [json.dumps(body).encode()]
''')


@pytest.fixture(scope="module")
def threadsafe(tmp_path_factory):
    with running(tmp_path_factory.mktemp("dispatch"), {"main.py": MAIN},
                 app_yaml=ONE_INSTANCE.format(threadsafe="true")) as srv:
        yield srv


@pytest.fixture(scope="module")
def short_deadline(tmp_path_factory):
    with running(tmp_path_factory.mktemp("dispatch-deadline"), {"main.py": MAIN}, request_deadline=1.0,
                 app_yaml=ONE_INSTANCE.format(threadsafe="true")) as srv:
        yield srv


@pytest.fixture(scope="module")
def single_threaded(tmp_path_factory):
    with running(tmp_path_factory.mktemp("dispatch-single"), {"main.py": MAIN},
                 app_yaml=ONE_INSTANCE.format(threadsafe="false")) as srv:
        yield srv


def call(server, path, data=None, headers=None):
    return apps.request(server, path, method="POST" if data is not None else "GET", headers=headers, body=data)


def test_concurrent_requests_to_a_threadsafe_app_each_get_their_own_answer_and_environment(threadsafe):
    def one(i):
        return call(threadsafe, f"/together?n={i}", data=f"body {i}".encode(), headers={"X-Test": f"h{i}"})

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    log_ids = set()
    for i, (status, headers, raw) in enumerate(results):
        assert status == 200, raw
        body = json.loads(raw)
        assert body["waited"] is True  # four at a time were inside the app together
        assert (body["query"], body["env_query"], body["header"]) == (f"n={i}", f"n={i}", f"h{i}")
        assert (body["body"], body["length"]) == (f"body {i}", str(len(f"body {i}")))
        assert headers["x-echo"] == f"n={i}"
        log_ids.add(body["log_id"])
    assert len(log_ids) == 32


def test_a_non_threadsafe_app_never_runs_two_requests_at_once(single_threaded):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = [status for status, _, _ in pool.map(lambda i: call(single_threaded, f"/count?n={i}"), range(32))]
    assert statuses == [200] * 32
    status, _, raw = call(single_threaded, "/most")
    assert status == 200
    assert json.loads(raw)["most"] == 1


def test_requests_past_their_deadline_get_the_deadline_error_while_the_others_are_answered(short_deadline):
    def one(i):
        return call(short_deadline, "/overrun" if i % 4 == 0 else f"/quick?n={i}")

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    for i, (status, _, raw) in enumerate(results):
        if i % 4 == 0:
            assert status == 500, raw  # each of the three overrunning requests got its own deadline error
        else:
            assert status == 200 and json.loads(raw)["query"] == f"n={i}", raw
    status, _, raw = call(short_deadline, "/quick?n=after")
    assert status == 200 and json.loads(raw)["query"] == "n=after"  # the instance serves on
