"""``deferred`` under ``kiln dev``: ``kiln.api.deferred`` and Google's SDK (``google.appengine.ext.deferred``) in a
python27-style app run a function later through a push task — now, after a countdown, on another queue, too large
for a task (through the datastore), only if its transaction commits (``_transactional=True``, ``kiln.api`` and ndb);
``PermanentTaskFailure`` ends the task without a retry while any other exception is retried to the queue's limit;
and the handler at ``/_ah/queue/deferred`` answers 403 to anything but the task queue's own requests."""

from __future__ import annotations

import json
import pickle
import textwrap
import urllib.parse

import grpc
import pytest

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth
from tests.integration import apps
from tests.integration.apps import running, wait_for

pytestmark = pytest.mark.nats

APP_YAML = textwrap.dedent("""\
    application: deferredapp
    runtime: python27
    api_version: 1
    threadsafe: true
    handlers:
    - url: /_ah/queue/deferred
      script: kiln.api.deferred.application
    - url: /_ah/queue/sdk-deferred
      script: main.sdk_deferred
    - url: /.*
      script: main.app
""")
QUEUE_YAML = textwrap.dedent("""\
    queue:
    - name: retries
      rate: 100/s
      retry_parameters:
        task_retry_limit: 2
        min_backoff_seconds: 0.2
        max_backoff_seconds: 0.4
""")

MAIN = textwrap.dedent(r'''
    import json, urllib.parse
    from kiln.api import datastore, deferred, memcache
    from google.appengine.api import datastore_errors
    from google.appengine.ext import deferred as gdeferred
    from google.appengine.ext import ndb

    SDK_URL = "/_ah/queue/sdk-deferred"

    class Thing(ndb.Model):
        v = ndb.IntegerProperty()

    def bump(tag, amount=1):
        memcache.incr("runs-" + tag, delta=amount, initial_value=0)

    def bump_big(tag, padding):
        bump(tag, len(padding))

    def give_up(tag):
        bump(tag)
        raise deferred.PermanentTaskFailure("this never works")

    def sdk_give_up(tag):
        bump(tag)
        raise gdeferred.PermanentTaskFailure("this never works")

    def keep_failing(tag):
        bump(tag)
        raise ValueError("fails every time")

    class Counter(object):
        def add(self, tag, amount):
            bump(tag, amount)

    sdk_deferred = gdeferred.application

    def run(path, q):
        tag, queue = q.get("tag", ""), q.get("queue", "default")
        if path == "/defer":
            deferred.defer(globals()[q["fn"]], tag, _queue=queue, _countdown=float(q.get("countdown", 0)))
        elif path == "/defer-method":
            deferred.defer(Counter().add, tag, 7)
        elif path == "/defer-big":
            deferred.defer(bump_big, tag, "x" * 150000)
        elif path == "/defer-txn":
            def txn():
                datastore.Put(datastore.Entity("Thing", name=tag))
                deferred.defer(bump, tag, _transactional=True)
                if q.get("mode") == "rollback":
                    raise datastore.Rollback()
            datastore.RunInTransaction(txn)
        elif path == "/sdk-defer":
            gdeferred.defer(globals()[q["fn"]], tag, _queue=queue, _url=q.get("url", SDK_URL))
        elif path == "/sdk-defer-txn":
            @ndb.transactional(retries=0)
            def txn():
                Thing(id=tag, v=1).put()
                gdeferred.defer(bump, tag, 5, _transactional=True, _url=SDK_URL)
                if q.get("mode") == "rollback":
                    raise datastore_errors.Rollback()
            txn()
        elif path == "/runs":
            return {"runs": memcache.get("runs-" + tag) or 0}
        return {"ok": True}

    def app(environ, start_response):
        q = dict(urllib.parse.parse_qsl(environ["QUERY_STRING"]))
        body = run(environ["PATH_INFO"], q)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("deferredapp")
    (app_dir / "queue.yaml").write_text(QUEUE_YAML)
    with running(app_dir, {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
        yield srv


def call(server, handler, **query):
    status, _, body = apps.fetch(server, handler + "?" + urllib.parse.urlencode(query))
    assert status == 200, body
    return json.loads(body)


def runs(server, tag) -> int:
    return call(server, "/runs", tag=tag)["runs"]


def waiting(server, queue) -> int:
    token = auth.mint_app_token(server._secret, server.app_id)
    with grpc.insecure_channel(server.addresses["taskqueue_svc"]) as channel:
        stats = taskqueue_pb2_grpc.TaskQueueServiceStub(channel).QueueStats(
            pb.QueueStatsRequest(queues=[queue]), metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    return stats.queues[0].tasks


def finished(server, queue, tag, at_least):
    """Wait until ``tag`` ran at least ``at_least`` times and its queue holds no task (none is waiting for a retry),
    then return how many times it ran."""
    wait_for(lambda: runs(server, tag) >= at_least and waiting(server, queue) == 0, 60)
    return runs(server, tag)


def test_a_deferred_function_runs_with_its_arguments(server):
    call(server, "/defer", fn="bump", tag="now")
    wait_for(lambda: runs(server, "now") == 1, 30)


def test_a_deferred_bound_method_runs_on_its_object(server):
    call(server, "/defer-method", tag="method")
    wait_for(lambda: runs(server, "method") == 7, 30)


def test_a_deferred_call_too_large_for_a_task_travels_through_the_datastore(server):
    call(server, "/defer-big", tag="big")
    wait_for(lambda: runs(server, "big") == 150000, 30)


def test_a_deferred_function_runs_after_its_countdown_on_its_queue(server):
    call(server, "/defer", fn="bump", tag="later", queue="retries", countdown="1.5")
    assert finished(server, "retries", "later", 1) == 1


@pytest.mark.parametrize("handler, fn", [("/defer", "give_up"), ("/sdk-defer", "sdk_give_up")])
def test_permanent_task_failure_ends_the_task_without_a_retry(server, handler, fn):
    tag = f"permanent{handler.replace('/', '-')}"
    call(server, handler, fn=fn, tag=tag, queue="retries")
    assert finished(server, "retries", tag, 1) == 1


@pytest.mark.parametrize("handler", ["/defer", "/sdk-defer"])
def test_any_other_exception_is_retried_to_the_queues_limit(server, handler):
    tag = f"failing{handler.replace('/', '-')}"
    call(server, handler, fn="keep_failing", tag=tag, queue="retries")
    assert finished(server, "retries", tag, 3) == 3  # the first attempt and task_retry_limit (2) retries


@pytest.mark.parametrize("handler, amount", [("/defer-txn", 1), ("/sdk-defer-txn", 5)])
def test_a_transactional_deferred_call_runs_only_if_its_transaction_commits(server, handler, amount):
    tag = f"txn{handler.replace('/', '-')}"
    call(server, handler, tag=tag + "-rolled-back", mode="rollback")
    call(server, handler, tag=tag)
    assert finished(server, "default", tag, amount) == amount
    assert runs(server, tag + "-rolled-back") == 0


@pytest.mark.parametrize("path", ["/_ah/queue/deferred", "/_ah/queue/sdk-deferred"])
@pytest.mark.parametrize("header", ["X-AppEngine-QueueName", "X-AppEngine-TaskName", "X_AppEngine_TaskName"])
def test_the_deferred_handler_refuses_requests_that_are_not_tasks(server, path, header):
    payload = pickle.dumps((print, ("forged",), {}))
    status, _, _ = apps.request(server, path, method="POST", body=payload,
                                headers={header: "forged", "Content-Type": "application/octet-stream"})
    assert status == 403


BUILTIN_YAML = textwrap.dedent("""\
    application: deferredbuiltin
    runtime: python27
    api_version: 1
    threadsafe: true
    builtins:
    - deferred: on
    handlers:
    - url: /.*
      script: main.app
""")


@pytest.fixture(scope="module")
def builtin_server(tmp_path_factory):
    """An app that turns on App Engine's deferred builtin instead of mapping the handler itself."""
    with running(tmp_path_factory.mktemp("deferredbuiltin"), {"main.py": MAIN}, app_yaml=BUILTIN_YAML) as srv:
        yield srv


@pytest.mark.parametrize("handler", ["/defer", "/sdk-defer-default"])
def test_the_deferred_builtin_runs_kiln_and_sdk_deferred_calls(builtin_server, handler):
    tag = f"builtin{handler.replace('/', '-')}"
    if handler == "/defer":
        call(builtin_server, handler, fn="bump", tag=tag)
    else:  # Google's SDK, on its default URL
        call(builtin_server, "/sdk-defer", fn="bump", tag=tag, url="/_ah/queue/deferred")
    wait_for(lambda: runs(builtin_server, tag) == 1, 30)


def test_the_deferred_builtin_is_for_administrators_only(builtin_server):
    status, headers, _ = apps.request(builtin_server, "/_ah/queue/deferred", method="POST", body=b"x")
    assert status == 302 and "login" in headers.get("location", "").lower()
