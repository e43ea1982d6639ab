"""Push task queues under ``kiln dev``: tasks added with ``kiln.api.taskqueue`` (by the app, and by this process with
the app's token) are stored in NATS JetStream by taskqueue_svc and sent through the router to the app's
``login: admin`` handlers with App Engine's task headers; names are taken once and stay tombstoned; failures are
retried with the queue's backoff and dropped at its limits while the queue keeps flowing; countdowns hold; bad
tasks are refused whole; clients cannot forge the task headers."""

from __future__ import annotations

import datetime
import json
import os
import textwrap
import urllib.parse

import grpc
import pytest

from kiln.api import _rpc, taskqueue
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth
from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

REQUEST_DEADLINE = 3.0

APP_YAML = textwrap.dedent("""\
    application: tqapp
    runtime: python27
    api_version: 1
    threadsafe: true
    handlers:
    - url: /work/.*
      script: main.app
      login: admin
    - url: /.*
      script: main.app
""")

QUEUE_YAML = textwrap.dedent("""\
    queue:
    - name: fast
      rate: 100/s
      bucket_size: 50
    - name: flaky
      rate: 100/s
      retry_parameters:
        task_retry_limit: 2
        min_backoff_seconds: 0.5
        max_backoff_seconds: 1
    - name: paused
      rate: 0
    - name: narrow
      rate: 100/s
      max_concurrent_requests: 2
""")

MAIN = textwrap.dedent('''
    import json, time
    from urllib.parse import unquote
    from kiln.api import memcache, taskqueue

    HEADERS = ("QUEUENAME", "TASKNAME", "TASKRETRYCOUNT", "TASKEXECUTIONCOUNT", "TASKETA", "TASKPREVIOUSRESPONSE")

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        status, body = "200 OK", b""
        if path.startswith("/work/"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            seen = {h: environ.get("HTTP_X_APPENGINE_" + h) for h in HEADERS}
            seen.update(method=environ["REQUEST_METHOD"], query=environ.get("QUERY_STRING", ""),
                        body=environ["wsgi.input"].read(length).decode("latin-1"), at=time.time(),
                        type=environ.get("CONTENT_TYPE", ""), custom=environ.get("HTTP_X_CUSTOM"))
            n = memcache.incr("count" + path, initial_value=0)
            memcache.set("seen%s#%d" % (path, n), json.dumps(seen))
            if path.startswith("/work/fail"):
                status = "500 Internal Server Error"
            if path.startswith("/work/long"):
                time.sleep(float(environ["QUERY_STRING"]))
            if path.startswith("/work/slow"):
                running = memcache.incr("running", initial_value=0)
                memcache.set("together-%d" % running, 1)
                time.sleep(0.4)
                memcache.decr("running")
        elif path == "/enqueue":
            task = taskqueue.add(url="/work/from-app", params={"x": "1", "y": ["a", "b"]}, queue_name="fast",
                                 headers={"X-Custom": "kept"})
            body = task.name.encode()
        elif path == "/seen":
            key = unquote(environ["QUERY_STRING"])
            body = str(memcache.get(key) or "").encode()
        elif path == "/long":
            time.sleep(float(environ["QUERY_STRING"]))
        elif path == "/echo":
            body = json.dumps({k: v for k, v in environ.items() if k.startswith("HTTP_X_APPENGINE")}).encode()
        start_response(status, [("Content-Type", "text/plain")])
        return [body]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("tqapp")
    (app_dir / "queue.yaml").write_text(QUEUE_YAML)
    # A short request deadline for the app's own requests: a push task still has App Engine's 10 minutes.
    with running(app_dir, {"main.py": MAIN}, app_yaml=APP_YAML, request_deadline=REQUEST_DEADLINE) as srv:
        yield srv


@pytest.fixture(scope="module")
def as_app(server):
    """This process calls taskqueue_svc as the app does: kiln.api.taskqueue with the app's token."""
    saved = {k: os.environ.get(k) for k in ("KILN_TASKQUEUE_ADDR", "KILN_APP_TOKEN")}
    os.environ["KILN_TASKQUEUE_ADDR"] = server.addresses["taskqueue_svc"]
    os.environ["KILN_APP_TOKEN"] = auth.mint_app_token(server._secret, server.app_id)
    _rpc.reset()
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _rpc.reset()


@pytest.fixture
def raw(server):
    """A TaskQueueService stub and the app's metadata, for what kiln.api refuses before sending."""
    channel = grpc.insecure_channel(server.addresses["taskqueue_svc"])
    token = auth.mint_app_token(server._secret, server.app_id)
    yield taskqueue_pb2_grpc.TaskQueueServiceStub(channel), (("authorization", f"Bearer {token}"),)
    channel.close()


def seen(server, path, n=1):
    """The n-th request the app's handler at ``path`` received, or None."""
    body = apps.fetch(server, "/seen?" + urllib.parse.quote(f"seen{path}#{n}"))[2]
    return json.loads(body) if body else None


def count(server, path):
    return int(apps.fetch(server, "/seen?" + urllib.parse.quote(f"count{path}"))[2] or 0)


def test_a_task_the_app_adds_reaches_its_handler_with_the_task_headers_and_params(server):
    status, _, name = apps.fetch(server, "/enqueue")
    assert status == 200 and name.startswith(b"task-")
    apps.wait_for(lambda: seen(server, "/work/from-app"), 30)
    got = seen(server, "/work/from-app")
    assert (got["QUEUENAME"], got["TASKNAME"], got["TASKRETRYCOUNT"], got["TASKEXECUTIONCOUNT"]) == (
        "fast", name.decode(), "0", "0")
    assert got["TASKPREVIOUSRESPONSE"] is None and float(got["TASKETA"]) > 0
    assert (got["method"], got["type"], got["custom"]) == ("POST", "application/x-www-form-urlencoded", "kept")
    assert urllib.parse.parse_qs(got["body"]) == {"x": ["1"], "y": ["a", "b"]}


@pytest.mark.parametrize("method,kwargs,query,body", [
    ("GET", {"params": {"q": "v w"}}, "q=v+w", ""),
    ("PUT", {"payload": b"\x00raw bytes\xff"}, "", "\x00raw bytes\xff"),
    ("DELETE", {"url": "/work/other?z=1"}, "z=1", ""),
])
def test_push_tasks_of_every_method_carry_their_query_and_payload(server, as_app, method, kwargs, query, body):
    path = kwargs.get("url", f"/work/{method.lower()}").partition("?")[0]
    taskqueue.add(**{"url": f"/work/{method.lower()}", **kwargs}, method=method, queue_name="fast")
    apps.wait_for(lambda: seen(server, path), 30)
    got = seen(server, path)
    assert (got["method"], got["query"], got["body"]) == (method, query, body)


def test_a_named_task_is_added_once_and_its_name_stays_tombstoned_after_it_ran(server, as_app):
    task = taskqueue.add(name="once-only", url="/work/once", queue_name="fast", countdown=2)  # queued below
    assert task.was_enqueued and task.name == "once-only"
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        taskqueue.add(name="once-only", url="/work/once", queue_name="fast")
    apps.wait_for(lambda: seen(server, "/work/once"), 30)
    apps.wait_for(lambda: taskqueue.Queue("fast").fetch_statistics().tasks == 0, 30)
    with pytest.raises(taskqueue.TombstonedTaskError):
        taskqueue.add(name="once-only", url="/work/once", queue_name="fast")
    assert count(server, "/work/once") == 1


def test_in_a_batch_a_taken_name_fails_alone_and_the_other_tasks_are_added(server, as_app):
    taskqueue.Queue("paused").add(taskqueue.Task(name="taken", url="/work/x"))
    batch = [taskqueue.Task(name="fresh-1", url="/work/x"), taskqueue.Task(name="taken", url="/work/x"),
             taskqueue.Task(url="/work/x")]
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        taskqueue.Queue("paused").add(batch)
    assert [t.was_enqueued for t in batch] == [True, False, True]
    assert taskqueue.Queue("paused").fetch_statistics().tasks == 3
    taskqueue.Queue("paused").purge()
    apps.wait_for(lambda: taskqueue.Queue("paused").fetch_statistics().tasks == 0, 30)


def test_a_failing_task_is_retried_with_backoff_then_dropped_while_other_tasks_flow(server, as_app):
    queue = taskqueue.Queue("flaky")
    queue.add(taskqueue.Task(name="always-fails", url="/work/fail"))
    ok = queue.add([taskqueue.Task(url="/work/fine") for _ in range(5)])
    apps.wait_for(lambda: count(server, "/work/fine") == 5, 30)
    apps.wait_for(lambda: count(server, "/work/fail") == 3 and queue.fetch_statistics().tasks == 0, 60)
    attempts = [seen(server, "/work/fail", n) for n in (1, 2, 3)]
    assert [a["TASKRETRYCOUNT"] for a in attempts] == ["0", "1", "2"]
    assert [a["TASKEXECUTIONCOUNT"] for a in attempts] == ["0", "1", "2"]
    assert [a["TASKPREVIOUSRESPONSE"] for a in attempts] == [None, "500", "500"]
    # Each retry was planned after its backoff (0.5 s, then doubled to the 1 s maximum) and not run before it.
    for before, after, backoff in zip(attempts, attempts[1:], (0.5, 1.0)):
        assert float(after["TASKETA"]) >= before["at"] + backoff
        assert after["at"] >= float(after["TASKETA"])
    assert len(ok) == 5 and count(server, "/work/fail") == 3  # limit reached: dropped, no fourth attempt
    with pytest.raises(taskqueue.TombstonedTaskError):
        queue.add(taskqueue.Task(name="always-fails", url="/work/fail"))


def test_no_more_tasks_of_a_queue_run_at_once_than_its_max_concurrent_requests(server, as_app):
    taskqueue.Queue("narrow").add([taskqueue.Task(url="/work/slow") for _ in range(6)])
    apps.wait_for(lambda: count(server, "/work/slow") == 6 and taskqueue.Queue("narrow").fetch_statistics().tasks == 0,
                  60)
    together = [apps.fetch(server, f"/seen?together-{n}")[2] for n in (1, 2, 3)]
    assert together == [b"1", b"1", b""]  # two at once, never three


def test_a_task_may_run_past_the_request_deadline_that_other_requests_have(server, as_app):
    overrun = REQUEST_DEADLINE + 2
    assert apps.fetch(server, f"/long?{overrun}")[0] == 500  # the app's own request: cut at its deadline
    taskqueue.add(url=f"/work/long?{overrun}", queue_name="fast")
    apps.wait_for(lambda: count(server, "/work/long") == 1 and taskqueue.Queue("fast").fetch_statistics().tasks == 0,
                  60)
    assert count(server, "/work/long") == 1  # it answered 200 after its sleep: no retry


def test_a_countdown_task_is_not_delivered_before_its_eta(server, as_app):
    tasks = [taskqueue.add(url="/work/later", countdown=2, queue_name="fast"),
             taskqueue.add(url="/work/later", eta=datetime.datetime.now(datetime.timezone.utc)
                           + datetime.timedelta(seconds=3), queue_name="fast")]
    apps.wait_for(lambda: count(server, "/work/later") == 2, 30)
    runs = sorted(seen(server, "/work/later", n)["at"] for n in (1, 2))
    for task, ran_at in zip(sorted(tasks, key=lambda t: t.eta_posix), runs):
        assert ran_at >= task.eta_posix


def _task(**fields):
    return pb.Task(queue="paused", url="/work/x", **fields)


INVALID = {  # a task that is not valid, the gRPC status, App Engine's error name
    "bad name": (_task(name="no spaces allowed"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TASK_NAME"),
    "name too long": (_task(name="n" * 501), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TASK_NAME"),
    "payload over 100 KB": (_task(payload=b"x" * (100 * 1024 + 1)), grpc.StatusCode.INVALID_ARGUMENT,
                            "TASK_TOO_LARGE"),
    "eta over 30 days": (_task(countdown_seconds=31 * 86400), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ETA"),
    "negative countdown": (_task(countdown_seconds=-1), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ETA"),
    "unknown queue": (pb.Task(queue="nope", url="/work/x"), grpc.StatusCode.NOT_FOUND, "UNKNOWN_QUEUE"),
    "bad queue name": (pb.Task(queue="no_underscores", url="/work/x"), grpc.StatusCode.INVALID_ARGUMENT,
                       "INVALID_QUEUE_NAME"),
    "bad method": (_task(method="PATCH"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "absolute url": (pb.Task(queue="paused", url="http://evil.example/"), grpc.StatusCode.INVALID_ARGUMENT,
                     "INVALID_URL"),
    "url with a newline": (pb.Task(queue="paused", url="/a\nb"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_URL"),
    "payload on GET": (_task(method="GET", payload=b"x"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "platform header": (_task(headers=[pb.Header(name="X-AppEngine-QueueName", value=b"admin")]),
                        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "negative retry limit": (_task(retry_options=pb.RetryOptions(task_retry_limit=-1)),
                             grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
}


@pytest.mark.parametrize("bad,status,code", INVALID.values(), ids=INVALID.keys())
def test_a_batch_with_an_invalid_task_is_refused_whole_with_its_error(raw, as_app, bad, status, code):
    stub, metadata = raw
    good = pb.Task(queue="paused", url="/work/x", name="good-neighbour")
    with pytest.raises(grpc.RpcError) as err:
        stub.Add(pb.AddRequest(tasks=[good, bad]), metadata=metadata, timeout=30)
    assert err.value.code() == status
    assert dict(err.value.trailing_metadata())["kiln-error-code"] == code
    assert "task 1" in err.value.details()
    assert taskqueue.Queue("paused").fetch_statistics().tasks == 0
    # The valid task of the batch was not added either: its name is unknown.
    assert not taskqueue.Queue("paused").delete_tasks_by_name("good-neighbour").was_deleted


@pytest.mark.parametrize("call,error", [
    (lambda: taskqueue.add(url="/work/x", queue_name="nope"), taskqueue.UnknownQueueError),
    (lambda: taskqueue.add(url="/work/x", payload=b"x" * (100 * 1024 + 1)), taskqueue.TaskTooLargeError),
    (lambda: taskqueue.add(url="/work/x", countdown=31 * 86400, queue_name="paused"), taskqueue.InvalidEtaError),
    (lambda: taskqueue.add(url="/work/x", name="a b"), taskqueue.InvalidTaskNameError),
    (lambda: taskqueue.add(url="http://elsewhere/x"), taskqueue.InvalidUrlError),
    (lambda: taskqueue.Queue("paused").add([taskqueue.Task(name="same"), taskqueue.Task(name="same")]),
     taskqueue.DuplicateTaskNameError),
    (lambda: taskqueue.Queue("paused").add([taskqueue.Task() for _ in range(101)]), taskqueue.TooManyTasksError),
])
def test_kiln_api_raises_app_engines_error_for_each_invalid_add(as_app, call, error):
    with pytest.raises(error):
        call()
    assert taskqueue.Queue("paused").fetch_statistics().tasks == 0


def test_a_deleted_task_is_not_delivered_and_its_name_stays_tombstoned(server, as_app):
    task = taskqueue.add(name="changed-my-mind", url="/work/deleted", countdown=2, queue_name="fast")
    assert taskqueue.Queue("fast").delete_tasks(task).was_deleted
    later = taskqueue.add(url="/work/after-deleted", countdown=2.5, queue_name="fast")
    apps.wait_for(lambda: seen(server, "/work/after-deleted"), 30)
    assert later.was_enqueued and count(server, "/work/deleted") == 0
    with pytest.raises(taskqueue.TombstonedTaskError):
        taskqueue.add(name="changed-my-mind", url="/work/deleted", queue_name="fast")


def test_calls_without_the_apps_token_are_refused(server):
    channel = grpc.insecure_channel(server.addresses["taskqueue_svc"])
    try:
        with pytest.raises(grpc.RpcError) as err:
            taskqueue_pb2_grpc.TaskQueueServiceStub(channel).Add(pb.AddRequest(tasks=[pb.Task()]), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


@pytest.mark.parametrize("name", ["X-AppEngine-QueueName", "X_AppEngine_QueueName", "x-appengine-taskname",
                                  "X-AppEngine-TaskRetryCount"])
def test_clients_cannot_send_the_task_headers_to_the_app(server, name):
    status, _, body = apps.request(server, "/echo", headers={name: "forged"})
    assert status == 200 and b"forged" not in body
    status, headers, _ = apps.request(server, "/work/anything", headers={name: "forged"})
    assert status == 302 and headers["location"].startswith("/_ah/login")  # login: admin still asks a client
