"""The console's task RPCs against real parts: a nats-server and a taskqueue_svc (``python -m taskqueue_svc``).
ListTasks pages a push queue's waiting tasks in the order they were stored (deleted ones left out) and a pull
queue's by name; RunNow makes a waiting push task due at once, which delivery then attempts; bad input and tasks
gone meanwhile get App Engine's error with nothing changed. Each test runs as an app of its own, so queues start
empty. Delivery goes to a router that never answers, so an attempted task comes back as its retry."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import itertools

import grpc
import nats
import nats.js.errors
import pytest

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform.supervisor import python_module
from tests.integration.apps import wait_for
from taskqueue_svc import store
from tests.integration.conftest import SECRET, app_metadata, service_env

pytestmark = pytest.mark.nats

QUEUE_YAML = """\
queue:
- name: work
  rate: 50/s
  retry_parameters:
    min_backoff_seconds: 3600
- name: pulled
  mode: pull
"""
APPS = [f"tqlist-{n}" for n in range(40)]  # one per test; more than the tests
_next_app = itertools.count()
LATER = 3600.0  # countdown of tasks that must not run during a test


@pytest.fixture(scope="module")
def address(supervisor, nats_url, tmp_path_factory):
    path = tmp_path_factory.mktemp("tqlist") / "queue.yaml"
    path.write_text(QUEUE_YAML)
    env = {**service_env(), "KILN_TASKQUEUE_SERVICE_SECRET": SECRET, "KILN_TASKQUEUE_PLATFORM_SECRET": "p" * 32}
    ready = supervisor.run_dir / "taskqueue-list.addr"
    child = supervisor.start("taskqueue-list", python_module(
        "taskqueue_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url", nats_url,
        "--queue-yaml", ",".join(f"{app}={path}" for app in APPS), "--router-url", "http://127.0.0.1:9"),
        env=env, ready_file=ready)
    return child.address


class Calls:
    """The contract as a fresh app."""

    def __init__(self, address: str, app_id: str) -> None:
        self.app_id = app_id
        self._channel = grpc.insecure_channel(address)
        self.stub = taskqueue_pb2_grpc.TaskQueueServiceStub(self._channel)
        self.metadata = app_metadata(app_id)

    def call(self, method: str, request):
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=30)

    def add(self, *tasks: pb.Task) -> None:
        results = self.call("Add", pb.AddRequest(tasks=list(tasks))).results
        assert [r.error for r in results] == [""] * len(tasks)

    def listed(self, queue: str = "work", page_size: int = 0, page_token: str = "") -> pb.ListTasksResponse:
        return self.call("ListTasks", pb.ListTasksRequest(queue=queue, page_size=page_size, page_token=page_token))

    def names(self, queue: str = "work") -> list[str]:
        return [t.name for t in self.listed(queue, page_size=100).tasks]


@pytest.fixture
def tq(address):
    calls = Calls(address, APPS[next(_next_app)])
    yield calls
    calls._channel.close()


def later(name: str, **kwargs) -> pb.Task:
    return pb.Task(queue="work", name=name, countdown_seconds=LATER, **kwargs)


def test_list_tasks_shows_each_waiting_push_task_with_eta_retry_count_method_and_url(tq):
    before = datetime.datetime.now(datetime.timezone.utc)
    tq.add(later("a", url="/work/a?x=1", method="PUT", payload=b"12345"), later("b", url="/work/b"))
    tasks = tq.listed().tasks
    assert [(t.name, t.method, t.url, t.retry_count, t.payload_bytes) for t in tasks] == [
        ("a", "PUT", "/work/a?x=1", 0, 5), ("b", "POST", "/work/b", 0, 0)]
    eta = tasks[0].eta.ToDatetime(datetime.timezone.utc)
    assert before + datetime.timedelta(seconds=LATER - 60) < eta < before + datetime.timedelta(seconds=LATER + 60)


def test_list_tasks_pages_a_push_queue_in_order_without_repeats(tq):
    tq.add(*[later(f"t{n:02d}") for n in range(7)])
    seen, token, pages = [], "", 0
    while True:
        page = tq.listed(page_size=3, page_token=token)
        assert len(page.tasks) <= 3
        seen += [t.name for t in page.tasks]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"t{n:02d}" for n in range(7)]
    assert pages == 3


def test_a_deleted_task_is_no_longer_listed(tq):
    tq.add(later("keep"), later("gone"))
    assert list(tq.call("Delete", pb.DeleteRequest(queue="work", task_names=["gone"])).errors) == [""]
    assert tq.names() == ["keep"]


def test_a_purged_queue_lists_no_tasks(tq):
    tq.add(later("x"), later("y"))
    tq.call("Purge", pb.PurgeRequest(queue="work"))
    assert tq.listed().tasks == []


def test_list_tasks_pages_a_pull_queue_by_name(tq):
    tq.add(*[pb.Task(queue="pulled", name=n, method="PULL", payload=b"p", tag=b"red") for n in ("c", "a", "b")])
    first = tq.listed("pulled", page_size=2)
    assert [(t.name, t.method, t.tag, t.payload_bytes) for t in first.tasks] == [("a", "PULL", b"red", 1),
                                                                               ("b", "PULL", b"red", 1)]
    rest = tq.listed("pulled", page_size=2, page_token=first.next_page_token)
    assert [t.name for t in rest.tasks] == ["c"] and rest.next_page_token == ""


def test_run_now_makes_a_waiting_task_due_and_delivery_attempts_it(tq):
    tq.add(later("soon"), later("stays"))
    before = datetime.datetime.now(datetime.timezone.utc)
    eta = tq.call("RunNow", pb.RunNowRequest(queue="work", task_name="soon")).eta.ToDatetime(datetime.timezone.utc)
    assert before - datetime.timedelta(seconds=1) <= eta <= datetime.datetime.now(datetime.timezone.utc)

    def attempted() -> bool:  # the router never answers: the attempt comes back as retry 1, an hour later
        return {t.name: t.retry_count for t in tq.listed().tasks}.get("soon") == 1
    wait_for(attempted, 60)
    assert {t.name: t.retry_count for t in tq.listed().tasks}["stays"] == 0
    assert sorted(tq.names()) == ["soon", "stays"]  # one message per task: the old one was replaced


@pytest.mark.parametrize(("request_", "status", "code"), [
    (pb.ListTasksRequest(queue="nope"), grpc.StatusCode.NOT_FOUND, "UNKNOWN_QUEUE"),
    (pb.ListTasksRequest(queue="work", page_size=101), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    (pb.ListTasksRequest(queue="work", page_size=-1), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    (pb.ListTasksRequest(queue="work", page_token="abc"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    (pb.ListTasksRequest(queue="pulled", page_token="a b"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    (pb.RunNowRequest(queue="nope", task_name="x"), grpc.StatusCode.NOT_FOUND, "UNKNOWN_QUEUE"),
    (pb.RunNowRequest(queue="work", task_name="never"), grpc.StatusCode.NOT_FOUND, "UNKNOWN_TASK"),
    (pb.RunNowRequest(queue="work", task_name="bad name"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TASK_NAME"),
    (pb.RunNowRequest(queue="pulled", task_name="x"), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_QUEUE_MODE"),
], ids=["unknown-queue", "page-too-big", "negative-page", "bad-push-token", "bad-pull-token", "run-unknown-queue",
        "run-unknown-task", "run-bad-name", "run-pull"])
def test_bad_input_gets_app_engines_error_and_changes_nothing(tq, request_, status, code):
    tq.add(later("here"))
    method = "ListTasks" if isinstance(request_, pb.ListTasksRequest) else "RunNow"
    with pytest.raises(grpc.RpcError) as caught:
        tq.call(method, request_)
    assert caught.value.code() == status
    assert dict(caught.value.trailing_metadata() or ())["kiln-error-code"] == code
    assert [(t.name, t.retry_count) for t in tq.listed().tasks] == [("here", 0)]


def test_running_a_deleted_task_from_a_stale_page_says_it_was_deleted_and_runs_nothing(tq):
    tq.add(later("stale"))
    tq.call("Delete", pb.DeleteRequest(queue="work", task_names=["stale"]))
    with pytest.raises(grpc.RpcError) as caught:
        tq.call("RunNow", pb.RunNowRequest(queue="work", task_name="stale"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "was deleted" in caught.value.details()
    assert tq.listed().tasks == []


def _stored_messages(nats_url: str, app_id: str, queue: str, name: str) -> int:
    """How many messages of task ``name`` the stream holds (read directly, as the service stores them)."""
    async def count() -> int:
        nc = await nats.connect(nats_url)
        try:
            js, seq, found = nc.jetstream(), 1, 0
            while True:
                try:
                    msg = await js.get_msg(store.STREAM, seq, subject=store.subject(app_id, queue), next=True)
                except nats.js.errors.NotFoundError:
                    return found
                seq = (msg.seq or seq) + 1
                found += pb.StoredTask.FromString(msg.data or b"").name == name
        finally:
            await nc.close()
    return asyncio.run(count())


def test_concurrent_run_nows_of_one_task_leave_exactly_one_message_of_it(tq, nats_url):
    tq.call("Pause", pb.PauseRequest(queue="work"))  # nothing is sent: what RunNow left stays to be counted
    try:
        tq.add(later("raced"))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(lambda _: _outcome(tq, "raced"), range(4)))
        assert "ok" in outcomes and set(outcomes) <= {"ok", "UNKNOWN_TASK"}
        assert _stored_messages(nats_url, tq.app_id, "work", "raced") == 1
        eta = tq.listed().tasks[0].eta.ToDatetime(datetime.timezone.utc)
        assert eta <= datetime.datetime.now(datetime.timezone.utc)  # and it is the copy that is due now
    finally:
        tq.call("Resume", pb.ResumeRequest(queue="work"))


def _outcome(tq: Calls, name: str) -> str:
    try:
        tq.call("RunNow", pb.RunNowRequest(queue="work", task_name=name))
    except grpc.RpcError as exc:
        return dict(exc.trailing_metadata() or ()).get("kiln-error-code", str(exc.code()))
    return "ok"
