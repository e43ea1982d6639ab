"""A python27-style app on Google's SDK uses ``google.appengine.api.taskqueue`` (push queues) under kiln dev,
unmodified: the SDK's Add/BulkAdd/Delete/PurgeQueue/FetchQueueStats go through kiln's API proxy to taskqueue_svc, the
tasks come back through the router to the app's ``login: admin`` handler with App Engine's headers, and the SDK
raises its own exceptions for kiln's errors."""

from __future__ import annotations

import json
import textwrap
import time
import urllib.parse

import pytest

from tests.integration.apps import fetch, running, wait_for

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import json, urllib.parse
    from google.appengine.api import memcache, taskqueue

    def run(query):
        op = query["op"]
        try:
            if op == "add":
                task = taskqueue.add(url="/work/" + query["path"], params={"n": query.get("n", "1")},
                                     name=query.get("name", ""), queue_name=query.get("queue", "default"),
                                     countdown=float(query.get("countdown", 0)))
                return {"name": task.name, "enqueued": task.was_enqueued}
            if op == "bulk":
                tasks = [taskqueue.Task(url="/work/bulk", payload="p%d" % i, method="PUT") for i in range(3)]
                taskqueue.Queue("mail").add(tasks)
                return {"names": [t.name for t in tasks]}
            if op == "delete":
                task = taskqueue.Queue(query.get("queue", "default")).delete_tasks_by_name(query["name"])
                return {"deleted": task.was_deleted}
            if op == "stats":
                stats = taskqueue.Queue(query.get("queue", "default")).fetch_statistics()
                return {"tasks": stats.tasks, "oldest_eta_usec": stats.oldest_eta_usec}
            if op == "purge":
                taskqueue.Queue(query.get("queue", "default")).purge()
                return {}
        except taskqueue.Error as exc:
            return {"error": type(exc).__name__, "message": str(exc)}

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        query = dict(urllib.parse.parse_qsl(environ["QUERY_STRING"]))
        if path.startswith("/work/"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            record = {"queue": environ.get("HTTP_X_APPENGINE_QUEUENAME"),
                      "name": environ.get("HTTP_X_APPENGINE_TASKNAME"), "method": environ["REQUEST_METHOD"],
                      "body": environ["wsgi.input"].read(length).decode()}
            n = memcache.incr("count" + path, initial_value=0)
            memcache.set("seen%s#%d" % (path, n), json.dumps(record))
            body = {}
        elif path == "/seen":
            body = {"value": memcache.get(query["key"])}
        else:
            body = run(query)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')

APP_YAML = ("application: sdktasks\nruntime: python27\napi_version: 1\nthreadsafe: true\n"
            "handlers:\n- url: /work/.*\n  script: main.app\n  login: admin\n- url: /.*\n  script: main.app\n")
QUEUE_YAML = "queue:\n- name: mail\n  rate: 50/s\n- name: held\n  rate: 0\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("sdktasks")
    (app_dir / "queue.yaml").write_text(QUEUE_YAML)
    with running(app_dir, {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
        yield srv


def call(server, **query):
    status, _, body = fetch(server, "/?" + urllib.parse.urlencode(query))
    assert status == 200, body
    return json.loads(body)


def seen(server, key):
    status, _, body = fetch(server, "/seen?" + urllib.parse.urlencode({"key": key}))
    assert status == 200, body
    value = json.loads(body)["value"]
    return json.loads(value) if isinstance(value, str) else value


def test_the_sdks_add_reaches_the_handler_with_the_task_headers_and_params(server):
    added = call(server, op="add", path="hello", n="7")
    assert added.get("enqueued"), added and added["name"]
    wait_for(lambda: seen(server, "seen/work/hello#1"), 30)
    got = seen(server, "seen/work/hello#1")
    assert (got["queue"], got["name"], got["method"], got["body"]) == ("default", added["name"], "POST", "n=7")


def test_the_sdks_bulk_add_sends_every_task(server):
    names = call(server, op="bulk")["names"]
    assert len(set(names)) == 3
    wait_for(lambda: seen(server, "count/work/bulk") == 3, 30)
    bodies = sorted(seen(server, f"seen/work/bulk#{n}")["body"] for n in (1, 2, 3))
    assert bodies == ["p0", "p1", "p2"]


def test_the_sdk_raises_its_own_errors_for_taken_names_and_unknown_queues(server):
    assert call(server, op="add", path="named", name="sdk-once", countdown="2")["enqueued"]  # still queued below
    assert call(server, op="add", path="named", name="sdk-once")["error"] == "TaskAlreadyExistsError"
    wait_for(lambda: seen(server, "seen/work/named#1"), 30)
    wait_for(lambda: call(server, op="stats")["tasks"] == 0, 30)
    assert call(server, op="add", path="named", name="sdk-once")["error"] == "TombstonedTaskError"
    assert call(server, op="add", path="x", queue="missing")["error"] == "UnknownQueueError"
    assert call(server, op="add", path="x", countdown=str(31 * 86400))["error"] == "InvalidEtaError"


def test_the_sdks_delete_stats_and_purge_act_on_the_queue(server):
    call(server, op="add", path="held", name="held-1", queue="held")
    call(server, op="add", path="held", name="held-2", queue="held")
    assert call(server, op="stats", queue="held")["tasks"] == 2
    assert call(server, op="delete", name="held-1", queue="held") == {"deleted": True}
    assert call(server, op="delete", name="never-added", queue="held") == {"deleted": False}
    call(server, op="purge", queue="held")
    wait_for(lambda: call(server, op="stats", queue="held")["tasks"] == 0, 30)
    assert call(server, op="add", path="held", name="held-2", queue="held")["error"] == "TombstonedTaskError"


def test_the_sdks_queue_statistics_give_a_push_queues_oldest_eta(server):
    before = time.time()
    call(server, op="add", path="eta", queue="held", countdown="500")
    call(server, op="add", path="eta", queue="held", countdown="200")
    oldest = call(server, op="stats", queue="held")["oldest_eta_usec"]
    after = time.time()
    call(server, op="purge", queue="held")
    assert before + 200 <= oldest / 1e6 <= after + 200
