"""A python27-style app on Google's SDK uses pull queues with ``google.appengine.api.taskqueue`` under kiln dev,
unmodified: pull adds (with tags), ``lease_tasks``, ``lease_tasks_by_tag``, ``modify_task_lease``, ``delete_tasks``,
``purge`` and ``QueueStatistics`` go through kiln's API proxy to taskqueue_svc, and the SDK raises its own
exceptions for kiln's errors."""

from __future__ import annotations

import json
import textwrap
import urllib.parse

import pytest

from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import json, time, urllib.parse
    from google.appengine.api import taskqueue

    HELD = {}  # leased tasks by name, as a worker keeps them (the app runs in one instance)

    def describe(tasks):
        return [{"name": t.name, "payload": t.payload.decode(), "tag": t.tag, "retry_count": t.retry_count,
                 "eta": t.eta_posix} for t in tasks]

    def run(query):
        op = query["op"]
        queue = taskqueue.Queue(query.get("queue", "jobs"))
        try:
            if op == "add":
                tags = query.get("tags", "").split(",")
                tasks = [taskqueue.Task(payload="job-%d" % i, method="PULL", tag=tag or None,
                                        name=query.get("name", "") and "%s-%d" % (query["name"], i))
                         for i, tag in enumerate(tags)]
                queue.add(tasks)
                return {"names": [t.name for t in tasks]}
            if op == "lease":
                tasks = queue.lease_tasks(float(query["seconds"]), int(query["max"]))
            elif op == "lease_by_tag":
                tasks = queue.lease_tasks_by_tag(float(query["seconds"]), int(query["max"]), tag=query.get("tag"))
            elif op == "modify":
                task = HELD[query["name"]]
                queue.modify_task_lease(task, float(query["seconds"]))
                return {"eta": task.eta_posix}
            elif op == "delete":
                tasks = queue.delete_tasks([HELD[n] for n in query["names"].split(",")])
                return {"deleted": [t.was_deleted for t in tasks]}
            elif op == "stats":
                stats = queue.fetch_statistics()
                return {"tasks": stats.tasks, "oldest_eta_usec": stats.oldest_eta_usec}
            elif op == "purge":
                queue.purge()
                return {}
            else:
                return {"error": "no op"}
            for task in tasks:
                HELD[task.name] = task
            return {"tasks": describe(tasks)}
        except taskqueue.Error as exc:
            return {"error": type(exc).__name__, "message": str(exc)}

    def app(environ, start_response):
        body = run(dict(urllib.parse.parse_qsl(environ["QUERY_STRING"])))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')

APP_YAML = ("application: sdkpull\nruntime: python27\napi_version: 1\nthreadsafe: true\n"
            "handlers:\n- url: /.*\n  script: main.app\n")
QUEUE_YAML = "queue:\n- name: jobs\n  mode: pull\n- name: tagged\n  mode: pull\n- name: pushed\n  rate: 0\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("sdkpull")
    (app_dir / "queue.yaml").write_text(QUEUE_YAML)
    with running(app_dir, {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
        yield srv


def call(server, **query):
    status, _, body = fetch(server, "/?" + urllib.parse.urlencode(query))
    assert status == 200, body
    return json.loads(body)


def test_the_sdk_adds_leases_extends_and_deletes_pull_tasks(server):
    names = call(server, op="add", name="sdk", tags=",,")["names"]
    assert names == ["sdk-0", "sdk-1", "sdk-2"]
    assert call(server, op="stats")["tasks"] == 3
    leased = call(server, op="lease", seconds="60", max="2")["tasks"]
    assert [(t["name"], t["payload"], t["retry_count"]) for t in leased] == [("sdk-0", "job-0", 1),
                                                                            ("sdk-1", "job-1", 1)]
    extended = call(server, op="modify", name="sdk-0", seconds="600")["eta"]
    assert extended >= leased[0]["eta"] + 500
    assert [t["name"] for t in call(server, op="lease", seconds="60", max="10")["tasks"]] == ["sdk-2"]
    assert call(server, op="delete", names="sdk-0,sdk-1") == {"deleted": [True, True]}
    stats = call(server, op="stats")
    assert stats["tasks"] == 1 and stats["oldest_eta_usec"] > 0
    assert call(server, op="add", name="sdk", tags="")["error"] == "TombstonedTaskError"  # sdk-0 is tombstoned


def test_the_sdk_leases_by_tag(server):
    call(server, op="add", queue="tagged", tags="red,blue,red")
    red = call(server, op="lease_by_tag", queue="tagged", seconds="60", max="10", tag="red")["tasks"]
    assert [(t["payload"], t["tag"]) for t in red] == [("job-0", "red"), ("job-2", "red")]
    rest = call(server, op="lease_by_tag", queue="tagged", seconds="60", max="10")["tasks"]
    assert [(t["payload"], t["tag"]) for t in rest] == [("job-1", "blue")]


def test_the_sdk_raises_its_own_errors_for_pull_queues(server):
    call(server, op="add", name="expiring", tags="")
    [task] = [t for t in call(server, op="lease", seconds="600", max="10")["tasks"] if t["name"] == "expiring-0"]
    call(server, op="modify", name="expiring-0", seconds="0")  # ends the lease now
    assert call(server, op="modify", name="expiring-0", seconds="60")["error"] == "TaskLeaseExpiredError"
    assert [t["name"] for t in call(server, op="lease", seconds="600", max="10")["tasks"]] == ["expiring-0"]
    call(server, op="purge")
    assert call(server, op="stats") == {"tasks": 0, "oldest_eta_usec": None}
    assert call(server, op="lease", queue="pushed", seconds="60", max="1")["error"] == "InvalidQueueModeError"
    assert call(server, op="lease", queue="missing", seconds="60", max="1")["error"] == "UnknownQueueError"
    assert call(server, op="lease", seconds="604801", max="1")["error"] == "InvalidLeaseTimeError"
    assert call(server, op="lease", seconds="60", max="1001")["error"] == "InvalidMaxTasksError"
    assert call(server, op="add", queue="pushed", tags="")["error"] == "InvalidQueueModeError"
    assert task["retry_count"] == 1
