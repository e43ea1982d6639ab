"""Pull queues against real parts: a nats-server and two taskqueue_svc replicas (``python -m taskqueue_svc``) sharing
its JetStream. Apps add pull tasks and lease, extend, end and delete leases with ``kiln.api.taskqueue`` (as an app
does, with its token) and through the raw contract: due tasks are leased oldest ETA first, a leased task is held by
one leaser until its lease ends (also when many threads lease at once from both replicas), the lease's ETA is the
holder's token, the retry limit deletes a task leased too often, and every invalid call gets App Engine's error with
nothing changed. Each test runs as an app of its own (same queue.yaml), so queues start empty."""

from __future__ import annotations

import concurrent.futures
import datetime
import itertools
import os
import threading
import time

import grpc
import pytest

from kiln.api import _rpc, taskqueue
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth
from kiln_platform.supervisor import python_module
from tests.integration.apps import wait_for
from tests.integration.conftest import SECRET, app_metadata, service_env

pytestmark = pytest.mark.nats

QUEUE_YAML = """\
queue:
- name: work
  mode: pull
- name: other
  mode: pull
- name: limited
  mode: pull
  retry_parameters:
    task_retry_limit: 2
- name: pushed
  rate: 0
"""
APPS = [f"pull-{n}" for n in range(100)]  # one per test; more than the tests
_next_app = itertools.count()


@pytest.fixture(scope="module")
def replicas(supervisor, nats_url, tmp_path_factory):
    """Two taskqueue_svc replicas on one JetStream, serving APPS the queues of QUEUE_YAML."""
    path = tmp_path_factory.mktemp("pull") / "queue.yaml"
    path.write_text(QUEUE_YAML)
    env = {**service_env(), "KILN_TASKQUEUE_SERVICE_SECRET": SECRET, "KILN_TASKQUEUE_PLATFORM_SECRET": "p" * 32}
    children = []
    for n in (1, 2):
        ready = supervisor.run_dir / f"taskqueue-pull-{n}.addr"
        children.append(supervisor.start(f"taskqueue-pull-{n}", python_module(
            "taskqueue_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url", nats_url,
            "--queue-yaml", ",".join(f"{app}={path}" for app in APPS), "--router-url", "http://127.0.0.1:9"),
            env=env, ready_file=ready))
    return [child.address for child in children]


@pytest.fixture
def app(replicas):
    """A fresh app (empty queues) that this process calls taskqueue_svc as, through replica 1."""
    app_id = APPS[next(_next_app)]
    saved = {k: os.environ.get(k) for k in ("KILN_TASKQUEUE_ADDR", "KILN_APP_TOKEN")}
    os.environ["KILN_TASKQUEUE_ADDR"] = replicas[0]
    os.environ["KILN_APP_TOKEN"] = auth.mint_app_token(SECRET, app_id)
    _rpc.reset()
    yield app_id
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _rpc.reset()


class Raw:
    """The contract through one replica, as ``app``."""

    def __init__(self, address: str, app_id: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self.stub = taskqueue_pb2_grpc.TaskQueueServiceStub(self._channel)
        self.metadata = app_metadata(app_id)

    def lease(self, queue: str = "work", seconds: float = 60, max_tasks: int = 100, **kw) -> list[pb.LeasedTask]:
        return list(self.stub.Lease(pb.LeaseRequest(queue=queue, lease_seconds=seconds, max_tasks=max_tasks, **kw),
                                    metadata=self.metadata, timeout=30).tasks)

    def stats(self, queue: str = "work") -> pb.QueueStats:
        return self.stub.QueueStats(pb.QueueStatsRequest(queues=[queue]), metadata=self.metadata, timeout=30).queues[0]

    def close(self) -> None:
        self._channel.close()


@pytest.fixture
def raw(replicas, app):
    """The contract through each replica: raw[0], raw[1]."""
    both = [Raw(address, app) for address in replicas]
    yield both
    for one in both:
        one.close()


def pull_task(payload: bytes | str = b"job", **kwargs) -> taskqueue.Task:
    return taskqueue.Task(payload=payload, method="PULL", **kwargs)


def ago(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)


def wait_until_past(eta_usec: int) -> None:
    wait_for(lambda: time.time() * 1_000_000 > eta_usec, 30)


def test_due_tasks_are_leased_oldest_eta_first_with_their_payload_and_tag(app):
    queue = taskqueue.Queue("work")
    queue.add([pull_task(b"second", name="second", eta=ago(20)), pull_task(b"later", name="later", countdown=600),
               pull_task(b"first", name="first", eta=ago(30), tag="t1"), pull_task(b"third", name="third")])
    before = time.time()
    leased = queue.lease_tasks(lease_seconds=120, max_tasks=10)
    assert [(t.name, t.payload, t.tag, t.retry_count) for t in leased] == [
        ("first", b"first", b"t1", 1), ("second", b"second", None, 1), ("third", b"third", None, 1)]
    for task in leased:  # its ETA is now the end of the lease
        assert before + 120 <= task.eta_posix <= time.time() + 120
    assert queue.lease_tasks(lease_seconds=120, max_tasks=10) == []  # the rest is held, "later" is not due


def test_max_tasks_bounds_a_lease(app):
    queue = taskqueue.Queue("work")
    queue.add([pull_task(str(n), eta=ago(10 - n)) for n in range(5)])
    assert [t.payload for t in queue.lease_tasks(60, 2)] == [b"0", b"1"]
    assert [t.payload for t in queue.lease_tasks(60, 2)] == [b"2", b"3"]
    assert [t.payload for t in queue.lease_tasks(60, 2)] == [b"4"]


def test_a_leased_task_is_invisible_to_other_replicas_until_its_lease_ends_then_counts_a_retry(app, raw):
    taskqueue.Queue("work").add(pull_task(b"x", name="held"))
    [first] = raw[0].lease(seconds=1.5)
    assert (first.name, first.retry_count) == ("held", 1)
    assert raw[1].lease() == [] and raw[0].lease() == []
    wait_until_past(first.eta_usec)
    wait_for(lambda: raw[1].lease(seconds=60) != [], 30)  # leasable again once the lease ended
    assert raw[1].stats().leased == 1
    with pytest.raises(taskqueue.TaskLeaseExpiredError):  # the first holder's token is stale
        taskqueue.Queue("work").modify_task_lease(taskqueue.Task._leased("work", first), 60)
    assert raw[0].lease() == []  # now held by the second leaser


def test_lease_tasks_by_tag_takes_the_given_tag_or_the_oldest_due_tasks_tag(app):
    queue = taskqueue.Queue("work")
    queue.add([pull_task(b"a1", tag="a", eta=ago(30)), pull_task(b"b1", tag="b", eta=ago(40)),
               pull_task(b"a2", tag="a", eta=ago(20)), pull_task(b"none", eta=ago(50)),
               pull_task(b"b2", tag="b", eta=ago(10))])
    assert [t.payload for t in queue.lease_tasks_by_tag(60, 10, tag="a")] == [b"a1", b"a2"]
    assert [t.payload for t in queue.lease_tasks_by_tag(60, 10)] == [b"none"]  # the oldest has no tag
    assert [t.payload for t in queue.lease_tasks_by_tag(60, 10)] == [b"b1", b"b2"]
    assert queue.lease_tasks_by_tag(60, 10) == []


def test_modify_task_lease_extends_a_lease_for_its_holder(app, raw):
    queue = taskqueue.Queue("work")
    queue.add(pull_task(b"x", name="extended"))
    [task] = queue.lease_tasks(1, 1)
    first_end = task.eta_posix
    queue.modify_task_lease(task, 300)
    assert task.eta_posix >= first_end + 250  # the task's eta is the new end: the next token
    wait_until_past(int(first_end * 1_000_000))
    assert raw[1].lease() == []  # still held past the first end
    assert raw[1].stats().leased == 1
    queue.modify_task_lease(task, 200)  # the holder may change it again with the new token


def test_modify_task_lease_to_zero_ends_the_lease_and_the_old_token_is_refused(app, raw):
    queue = taskqueue.Queue("work")
    queue.add(pull_task(b"x", name="released"))
    [task] = queue.lease_tasks(300, 1)
    stale = taskqueue.Task._leased("work", pb.LeasedTask(name=task.name, eta_usec=task._eta_usec))
    queue.modify_task_lease(task, 0)
    [again] = raw[1].lease()  # leasable at once by anyone
    assert (again.name, again.retry_count) == ("released", 2)
    for token in (task, stale):  # neither the ended lease nor an older one changes the new holder's lease
        with pytest.raises(taskqueue.TaskLeaseExpiredError):
            queue.modify_task_lease(token, 60)
    assert raw[1].lease() == []


def test_an_ended_lease_cannot_be_extended(app):
    queue = taskqueue.Queue("work")
    queue.add(pull_task(b"x", name="too-late"))
    [task] = queue.lease_tasks(0.5, 1)
    wait_until_past(task._eta_usec)
    with pytest.raises(taskqueue.TaskLeaseExpiredError):
        queue.modify_task_lease(task, 60)


def test_modifying_the_lease_of_a_task_never_added_or_deleted_names_the_error(app):
    queue = taskqueue.Queue("work")
    with pytest.raises(taskqueue.Error) as unknown:
        queue.modify_task_lease(taskqueue.Task._leased("work", pb.LeasedTask(name="never", eta_usec=1)), 60)
    assert "never" in str(unknown.value)
    queue.add(pull_task(b"x", name="gone"))
    [task] = queue.lease_tasks(60, 1)
    queue.delete_tasks(task)
    with pytest.raises(taskqueue.TombstonedTaskError):
        queue.modify_task_lease(task, 60)


def test_delete_tasks_removes_leased_tasks_and_tombstones_their_names(app, raw):
    queue = taskqueue.Queue("work")
    queue.add([pull_task(b"1", name="done-1"), pull_task(b"2", name="done-2"), pull_task(b"3", name="kept")])
    leased = queue.lease_tasks(1, 2)
    assert [t.name for t in leased] == ["done-1", "done-2"]
    assert all(t.was_deleted for t in queue.delete_tasks(leased))
    assert not queue.delete_tasks_by_name("done-1").was_deleted  # already deleted: tombstoned
    assert raw[0].stats().tasks == 1
    wait_until_past(max(t._eta_usec for t in leased))
    assert [t.name for t in queue.lease_tasks(60, 10)] == ["kept"]  # the deleted ones never come back
    with pytest.raises(taskqueue.TombstonedTaskError):
        queue.add(pull_task(b"again", name="done-1"))


def test_a_task_leased_more_than_its_retry_limit_is_deleted(app, raw):
    queue = taskqueue.Queue("limited")  # task_retry_limit: 2
    queue.add([pull_task(b"x", name="fragile"), pull_task(b"y", name="sturdy", countdown=600)])
    counts = []
    for _ in range(2):
        [task] = queue.lease_tasks(0.3, 5)
        counts.append(task.retry_count)
        wait_until_past(task._eta_usec)
    assert counts == [1, 2]
    assert queue.lease_tasks(60, 5) == []  # a third lease meets it over its limit: deleted, not leased
    assert raw[0].stats("limited").tasks == 1  # only the task not due yet is left
    with pytest.raises(taskqueue.TombstonedTaskError):
        queue.add(pull_task(b"x", name="fragile"))


def test_pull_queue_statistics_count_tasks_leases_and_the_oldest_eta(app):
    queue = taskqueue.Queue("work")
    empty = queue.fetch_statistics()
    assert (empty.tasks, empty.oldest_eta_usec, empty.leased) == (0, None, 0)
    oldest, second = ago(100), ago(50)
    queue.add([pull_task(b"1", eta=oldest), pull_task(b"2", eta=second), pull_task(b"3", countdown=600)])
    stats = queue.fetch_statistics()
    assert (stats.tasks, stats.leased) == (3, 0)
    assert abs(stats.oldest_eta_usec - oldest.timestamp() * 1_000_000) < 2
    leased = queue.lease_tasks(60, 1)
    stats = queue.fetch_statistics()
    assert (stats.tasks, stats.leased, stats.executed_last_minute) == (3, 1, 1)
    assert abs(stats.oldest_eta_usec - second.timestamp() * 1_000_000) < 2  # the leased one's ETA moved on
    assert leased[0].payload == b"1"


def test_a_one_mebibyte_payload_is_stored_and_leased_whole(app):
    queue = taskqueue.Queue("work")
    payload = bytes(range(256)) * 4096  # 1 MiB, App Engine's largest pull task
    queue.add(pull_task(payload, name="big", tag=b"\x00\xfftag"))
    [task] = queue.lease_tasks(60, 1)
    assert (task.payload, task.tag) == (payload, b"\x00\xfftag")
    queue.delete_tasks(task)
    assert queue.fetch_statistics().tasks == 0


def test_purge_empties_a_pull_queue_and_leaves_the_other_queues(app):
    work, other = taskqueue.Queue("work"), taskqueue.Queue("other")
    work.add([pull_task(b"small", name="p1"), pull_task(b"x" * 100_000, name="p2")])
    other.add(pull_task(b"stays"))
    work.lease_tasks(60, 1)
    work.purge()
    assert work.fetch_statistics().tasks == 0 and work.lease_tasks(60, 10) == []
    assert [t.payload for t in other.lease_tasks(60, 10)] == [b"stays"]
    with pytest.raises(taskqueue.TombstonedTaskError):
        work.add(pull_task(b"again", name="p1"))


def test_many_leasers_on_two_replicas_never_hold_one_task_at_once(app, raw):
    total = 300
    queue = taskqueue.Queue("work")
    for start in range(0, total, 100):
        queue.add([pull_task(str(n).encode(), name=f"c-{n}") for n in range(start, start + 100)])
    taken: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(8)

    def leaser(n: int) -> None:
        client = raw[n % 2]
        go.wait(30)
        while True:
            got = client.lease(seconds=120, max_tasks=7)
            if not got:
                return
            with lock:
                taken.extend(t.name for t in got)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for done in [pool.submit(leaser, n) for n in range(8)]:
            done.result(timeout=120)
    assert len(taken) == total and len(set(taken)) == total  # every task leased, none twice
    assert raw[0].stats().leased == total


INVALID = {  # a call, the gRPC status, App Engine's error name
    "lease 0 seconds": (lambda s: s.lease(seconds=0), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "lease negative": (lambda s: s.lease(seconds=-1), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "lease over a week": (lambda s: s.lease(seconds=604801), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "max_tasks 0": (lambda s: s.lease(max_tasks=0), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "max_tasks over 1000": (lambda s: s.lease(max_tasks=1001), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "tag over 500 bytes": (lambda s: s.lease(group_by_tag=True, tag=b"t" * 501), grpc.StatusCode.INVALID_ARGUMENT,
                           "INVALID_TAG"),
    "tag without group_by_tag": (lambda s: s.lease(tag=b"t"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "lease a push queue": (lambda s: s.lease(queue="pushed"), grpc.StatusCode.FAILED_PRECONDITION,
                           "INVALID_QUEUE_MODE"),
    "lease the default queue": (lambda s: s.lease(queue=""), grpc.StatusCode.FAILED_PRECONDITION,
                                "INVALID_QUEUE_MODE"),
    "lease an unknown queue": (lambda s: s.lease(queue="nope"), grpc.StatusCode.NOT_FOUND, "UNKNOWN_QUEUE"),
    "modify on a push queue": (lambda s: s.stub.ModifyLease(pb.ModifyLeaseRequest(
        queue="pushed", task_name="t", eta_usec=1, lease_seconds=1), metadata=s.metadata, timeout=30),
        grpc.StatusCode.FAILED_PRECONDITION, "INVALID_QUEUE_MODE"),
    "modify negative": (lambda s: s.stub.ModifyLease(pb.ModifyLeaseRequest(
        queue="work", task_name="t", eta_usec=1, lease_seconds=-1), metadata=s.metadata, timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    "push task on a pull queue": (lambda s: s.stub.Add(pb.AddRequest(tasks=[pb.Task(queue="work", url="/x")]),
                                                       metadata=s.metadata, timeout=30),
                                  grpc.StatusCode.FAILED_PRECONDITION, "INVALID_QUEUE_MODE"),
    "pull task on a push queue": (lambda s: s.stub.Add(pb.AddRequest(tasks=[pb.Task(queue="pushed", method="PULL")]),
                                                       metadata=s.metadata, timeout=30),
                                  grpc.StatusCode.FAILED_PRECONDITION, "INVALID_QUEUE_MODE"),
    "pull task over 1 MiB": (lambda s: s.stub.Add(pb.AddRequest(tasks=[pb.Task(
        queue="work", method="PULL", payload=b"x" * (2 ** 20 + 1))]), metadata=s.metadata, timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT, "TASK_TOO_LARGE"),
    "pull task tag over 500 bytes": (lambda s: s.stub.Add(pb.AddRequest(tasks=[pb.Task(
        queue="work", method="PULL", tag=b"t" * 501)]), metadata=s.metadata, timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TAG"),
}


@pytest.mark.parametrize("call,status,code", INVALID.values(), ids=INVALID.keys())
def test_an_invalid_pull_call_gets_app_engines_error_and_changes_nothing(app, raw, call, status, code):
    taskqueue.Queue("work").add(pull_task(b"bystander", name="bystander"))
    with pytest.raises(grpc.RpcError) as err:
        call(raw[0])
    assert err.value.code() == status
    assert dict(err.value.trailing_metadata())["kiln-error-code"] == code
    stats = raw[1].stats()
    assert (stats.tasks, stats.leased) == (1, 0)
    assert [t.name for t in raw[1].lease()] == ["bystander"]  # the replica still serves, the task untouched


@pytest.mark.parametrize("call,error", [
    (lambda q: q.lease_tasks(0, 1), taskqueue.InvalidLeaseTimeError),
    (lambda q: q.lease_tasks(604801, 1), taskqueue.InvalidLeaseTimeError),
    (lambda q: q.lease_tasks(60, 0), taskqueue.InvalidMaxTasksError),
    (lambda q: q.lease_tasks(60, 1001), taskqueue.InvalidMaxTasksError),
    (lambda q: q.lease_tasks_by_tag(60, 1, tag="t" * 501), taskqueue.InvalidTagError),
    (lambda q: taskqueue.Queue("pushed").lease_tasks(60, 1), taskqueue.InvalidQueueModeError),
    (lambda q: taskqueue.Queue("nope").lease_tasks(60, 1), taskqueue.UnknownQueueError),
    (lambda q: q.add(taskqueue.Task(payload=b"push")), taskqueue.InvalidQueueModeError),
    (lambda q: taskqueue.Queue("pushed").add(pull_task(b"x")), taskqueue.InvalidQueueModeError),
    (lambda q: q.add(pull_task(b"x" * (2 ** 20 + 1))), taskqueue.TaskTooLargeError),
    (lambda q: q.add(pull_task(b"x", tag="t" * 501)), taskqueue.InvalidTagError),
    (lambda q: q.modify_task_lease(pull_task(b"x", name="t"), -1), taskqueue.InvalidLeaseTimeError),
])
def test_kiln_api_raises_app_engines_error_for_each_invalid_pull_call(app, call, error):
    queue = taskqueue.Queue("work")
    with pytest.raises(error):
        call(queue)
    assert queue.fetch_statistics().tasks == 0
