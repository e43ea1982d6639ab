"""Transactional task adds under ``kiln dev``, on both datastore engines: up to five tasks added in a datastore
transaction (``kiln.api`` and Google's SDK with ndb) are delivered through the router if and only if the transaction
commits — never when it is rolled back, fails on contention, or raises; a sixth task, a named task and an add
outside a transaction get App Engine's errors with nothing enqueued; a commit whose tasks could not be added at
once (the task queue down) delivers them later through the datastore's sweep."""

from __future__ import annotations

import json
import textwrap
import urllib.parse

import grpc
import pytest

from deploy.dev import DevOptions, DevServer
from kiln.pb.datastore.v1 import datastore_pb2 as dpb
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth
from tests.integration.apps import fetch, wait_for

pytestmark = pytest.mark.nats

APP_YAML = ("application: txtasks\nruntime: python27\napi_version: 1\nthreadsafe: true\n"
            "handlers:\n- url: /work/.*\n  script: main.app\n  login: admin\n- url: /.*\n  script: main.app\n")
QUEUE_YAML = "queue:\n- name: fast\n  rate: 100/s\n  bucket_size: 50\n"

MAIN = textwrap.dedent(r'''
    import json, urllib.parse
    from kiln.api import datastore, memcache, taskqueue
    from google.appengine.api import datastore_errors
    from google.appengine.api import taskqueue as gtaskqueue
    from google.appengine.ext import db, ndb

    class Thing(ndb.Model):
        v = ndb.IntegerProperty()

    class DbThing(db.Model):
        v = db.IntegerProperty()

    def failure(exc):
        return {"error": type(exc).__name__, "bases": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc)}

    def with_kiln(query):
        tag, mode, count = query["tag"], query.get("mode", "commit"), int(query.get("count", "1"))
        key = datastore.Key.from_path("Thing", tag)

        def add_tasks():
            for i in range(count):
                taskqueue.add(url="/work/%s/%d" % (tag, i), queue_name="fast", transactional=True,
                              name=query.get("name", ""), params={"i": str(i)})

        def txn():
            thing = datastore.Entity("Thing", name=tag)
            thing["v"] = 1
            if mode == "contention":
                datastore.Get([key])  # the group's version is read here...
                options = datastore.TransactionOptions(propagation=datastore.TransactionOptions.INDEPENDENT)
                datastore.RunInTransactionOptions(options, datastore.Put, datastore.Entity("Thing", name=tag))
            datastore.Put(thing)     # ...and changed by the independent commit above: this commit fails
            add_tasks()
            if mode == "rollback":
                raise datastore.Rollback()
            if mode == "raise":
                raise ValueError("the function failed")

        try:
            if mode == "outside":
                add_tasks()
            else:
                datastore.RunInTransactionCustomRetries(0, txn)
        except Exception as exc:
            return failure(exc)
        return {"ok": True}

    def with_ndb(query):
        tag, mode, count = query["tag"], query.get("mode", "commit"), int(query.get("count", "1"))

        @ndb.transactional(retries=0)
        def txn():
            Thing(id=tag, v=1).put()
            names = []
            for i in range(count):
                task = gtaskqueue.add(url="/work/%s/%d" % (tag, i), queue_name="fast", transactional=True,
                                      params={"i": str(i)})
                names.append(task.name)
            if mode == "rollback":
                raise datastore_errors.Rollback()
            return names

        try:
            return {"ok": True, "names": txn()}
        except Exception as exc:
            return failure(exc)

    def with_db(query):
        tag = query["tag"]

        def txn():
            DbThing(key_name=tag, v=1).put()
            gtaskqueue.add(url="/work/%s/0" % tag, queue_name="fast", transactional=True)
            if query.get("mode") == "rollback":
                raise db.Rollback()

        try:
            db.run_in_transaction(txn)
        except Exception as exc:
            return failure(exc)
        return {"ok": True}

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        query = dict(urllib.parse.parse_qsl(environ["QUERY_STRING"]))
        if path.startswith("/work/"):
            memcache.incr("ran" + path, initial_value=0)
            memcache.set("name" + path, environ.get("HTTP_X_APPENGINE_TASKNAME"))
            body = {}
        elif path == "/ran":
            body = {"runs": memcache.get("ran" + query["path"]) or 0, "name": memcache.get("name" + query["path"])}
        elif path == "/kiln":
            body = with_kiln(query)
        elif path == "/ndb":
            body = with_ndb(query)
        elif path == "/db":
            body = with_db(query)
        else:
            body = {}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')


@pytest.fixture(scope="module", params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def server(request, tmp_path_factory):
    app_dir = tmp_path_factory.mktemp(f"txtasks-{request.param}")
    (app_dir / "app.yaml").write_text(APP_YAML)
    (app_dir / "queue.yaml").write_text(QUEUE_YAML)
    (app_dir / "main.py").write_text(MAIN)
    hosts = request.getfixturevalue("cassandra_hosts") if request.param == "cassandra" else ""
    srv = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data", storage=request.param,
                               cassandra_hosts=hosts, clear_datastore=True))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def call(server, handler, **query):
    status, _, body = fetch(server, handler + "?" + urllib.parse.urlencode(query))
    assert status == 200, body
    return json.loads(body)


def runs(server, path):
    return call(server, "/ran", path=path)["runs"]


def settle(server, tag):
    """Commit one more transaction with a task and wait until it ran: tasks of earlier commits were forwarded before
    it (a commit forwards its own tasks), so an earlier task that has not run by now was never added."""
    assert call(server, "/kiln", tag=tag) == {"ok": True}
    wait_for(lambda: runs(server, f"/work/{tag}/0") == 1, 30)


def test_a_committed_transactions_tasks_are_delivered(server):
    assert call(server, "/kiln", tag="commit", count="3") == {"ok": True}
    for i in range(3):
        wait_for(lambda i=i: runs(server, f"/work/commit/{i}") >= 1, 30)


@pytest.mark.parametrize("mode", ["rollback", "raise", "contention"])
def test_a_transaction_that_does_not_commit_delivers_none_of_its_tasks(server, mode):
    answer = call(server, "/kiln", tag=f"not-{mode}", mode=mode, count="2")
    expected = {"rollback": None, "raise": "ValueError", "contention": "TransactionFailedError"}[mode]
    assert answer.get("error") == expected, answer
    settle(server, f"after-{mode}")
    assert [runs(server, f"/work/not-{mode}/{i}") for i in range(2)] == [0, 0]


def test_a_sixth_task_in_a_transaction_is_refused_and_nothing_is_enqueued(server):
    answer = call(server, "/kiln", tag="six", count="6")
    assert answer["error"] == "TransactionalBadRequestError", answer
    assert {"DatastoreError", "BadRequestError"} <= set(answer["bases"])
    assert "maximum allowed 5" in answer["message"]
    settle(server, "after-six")
    assert [runs(server, f"/work/six/{i}") for i in range(6)] == [0] * 6


def test_five_tasks_in_a_transaction_are_all_delivered(server):
    assert call(server, "/kiln", tag="five", count="5") == {"ok": True}
    for i in range(5):
        wait_for(lambda i=i: runs(server, f"/work/five/{i}") >= 1, 30)


def test_a_named_transactional_task_and_one_outside_a_transaction_are_refused(server):
    named = call(server, "/kiln", tag="named", name="mine")
    assert named["error"] == "InvalidTaskNameError", named
    outside = call(server, "/kiln", tag="outside", mode="outside")
    assert outside["error"] == "BadTransactionStateError", outside


def test_ndb_transactional_with_the_sdks_transactional_add_delivers_on_commit(server):
    answer = call(server, "/ndb", tag="ndb", count="2")
    assert answer["ok"], answer
    for i in range(2):
        wait_for(lambda i=i: runs(server, f"/work/ndb/{i}") == 1, 30)
    assert [call(server, "/ran", path=f"/work/ndb/{i}")["name"] for i in range(2)] == answer["names"]


def test_ndb_transaction_rolled_back_delivers_nothing(server):
    answer = call(server, "/ndb", tag="ndb-rollback", mode="rollback")
    assert answer.get("ok"), answer  # ndb's Rollback ends the transaction quietly
    settle(server, "after-ndb-rollback")
    assert runs(server, "/work/ndb-rollback/0") == 0


def test_db_run_in_transaction_with_the_sdks_transactional_add_delivers_only_on_commit(server):
    assert call(server, "/db", tag="db-rollback", mode="rollback") == {"ok": True}
    assert call(server, "/db", tag="db") == {"ok": True}
    wait_for(lambda: runs(server, "/work/db/0") == 1, 30)
    settle(server, "after-db")
    assert runs(server, "/work/db-rollback/0") == 0


def test_the_sdk_raises_app_engines_error_for_a_sixth_task(server):
    answer = call(server, "/ndb", tag="ndb-six", count="6")
    assert "DatastoreError" in answer["bases"] and "BadRequestError" in answer["bases"], answer
    assert "maximum allowed 5" in answer["message"]
    settle(server, "after-ndb-six")
    assert [runs(server, f"/work/ndb-six/{i}") for i in range(6)] == [0] * 6


@pytest.fixture
def stubs(server):
    token = auth.mint_app_token(server._secret, server.app_id)
    channels = [grpc.insecure_channel(server.addresses[name]) for name in ("taskqueue_svc", "datastore_svc")]
    yield (taskqueue_pb2_grpc.TaskQueueServiceStub(channels[0]), datastore_pb2_grpc.DatastoreServiceStub(channels[1]),
           (("authorization", f"Bearer {token}"),))
    for channel in channels:
        channel.close()


def _error_code(exc: grpc.RpcError) -> str:
    return dict(exc.trailing_metadata() or ()).get("kiln-error-code", "")


@pytest.mark.parametrize("tasks, code", [
    ([pb.Task(queue="fast")] * 6, "TOO_MANY_TASKS"),
    ([pb.Task(queue="fast", name="named")], "INVALID_TASK_NAME"),
    ([pb.Task(queue="nosuch")], "UNKNOWN_QUEUE"),
])
def test_the_task_queue_refuses_a_transactional_batch_it_would_refuse(stubs, tasks, code):
    taskqueue, _, meta = stubs
    with pytest.raises(grpc.RpcError) as caught:
        taskqueue.Add(pb.AddRequest(tasks=tasks, transaction=b"t"), metadata=meta)
    assert _error_code(caught.value) == code


def test_a_checked_transactional_batch_is_named_and_not_stored(server, stubs):
    taskqueue, _, meta = stubs
    out = taskqueue.Add(pb.AddRequest(tasks=[pb.Task(queue="fast", url="/work/checked/0")], transaction=b"t"),
                        metadata=meta)
    [result] = out.results
    assert result.error == "" and result.task_name
    settle(server, "after-checked")
    assert runs(server, "/work/checked/0") == 0


def test_a_commit_with_six_tasks_is_refused_whole(server, stubs):
    _, datastore, meta = stubs
    txn = datastore.BeginTransaction(dpb.BeginTransactionRequest(), metadata=meta).transaction
    key = dpb.Key(path=[dpb.PathElement(kind="Thing", name="raw-six")])
    tasks = [pb.Task(queue="fast", url=f"/work/raw-six/{i}", name=f"raw-six-{i}") for i in range(6)]
    with pytest.raises(grpc.RpcError) as caught:
        datastore.Commit(dpb.CommitRequest(transaction=txn, mutations=[dpb.Mutation(upsert=dpb.Entity(key=key))],
                                           tasks=tasks), metadata=meta)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum allowed 5" in caught.value.details()
    got = datastore.Get(dpb.GetRequest(keys=[key]), metadata=meta)
    assert not got.results[0].HasField("entity")
    settle(server, "after-raw-six")
    assert runs(server, "/work/raw-six/0") == 0
