"""Pull queue rules without sockets: what makes a pull task valid (taskqueue_svc.tasks), which tasks a lease takes
and in what order, what a lease and a lease change allow, and when a task's lease token holds
(taskqueue_svc.leases)."""

from __future__ import annotations

import datetime

import pytest

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln_platform import queueyaml
from taskqueue_svc import errors, leases, tasks

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)
NOW_USEC = int(NOW.timestamp()) * 1_000_000
QUEUES = queueyaml.parse("queue:\n- name: pulled\n  mode: pull\n- name: limited\n  mode: pull\n"
                         "  retry_parameters:\n    task_retry_limit: 2\n", filename="queue.yaml").queues


def check(*task_list: pb.Task) -> list[pb.StoredTask]:
    return tasks.check_batch(pb.AddRequest(tasks=task_list), "app", QUEUES, NOW)


def pull(**fields) -> pb.Task:
    return pb.Task(queue="pulled", method="PULL", **fields)


def entry(name: str, eta_offset_s: float, tag: bytes | None = None, retry_count: int = 0) -> leases.Entry:
    task = pb.StoredTask(app_id="app", queue="pulled", name=name, method="PULL", retry_count=retry_count)
    task.eta.FromMicroseconds(NOW_USEC + int(eta_offset_s * 1_000_000))
    if tag is not None:
        task.tag = tag
    return leases.Entry(task, revision=1)


def test_a_pull_task_keeps_its_payload_tag_and_eta_to_the_microsecond():
    [stored] = check(pull(payload=b"job", tag=b"user-7", countdown_seconds=1.0000004))
    assert (stored.method, stored.payload, stored.tag, stored.url) == ("PULL", b"job", b"user-7", "")
    assert stored.eta.ToMicroseconds() == NOW_USEC + 1_000_000  # whole microseconds: the lease token is exact


def test_a_pull_task_may_carry_up_to_one_mebibyte_and_a_500_byte_tag():
    [stored] = check(pull(payload=b"x" * (1024 * 1024), tag=b"t" * 500))
    assert len(stored.payload) == 1024 * 1024 and len(stored.tag) == 500


@pytest.mark.parametrize("task,error", [
    (pull(payload=b"x" * (1024 * 1024 + 1)), errors.TaskTooLargeError),
    (pull(tag=b"t" * 501), errors.InvalidTagError),
    (pull(url="/work"), errors.InvalidRequestError),
    (pull(target="v2"), errors.InvalidRequestError),
    (pull(headers=[pb.Header(name="X-Custom", value=b"1")]), errors.InvalidRequestError),
    (pull(name="a b"), errors.InvalidTaskNameError),
    (pull(countdown_seconds=31 * 86400), errors.InvalidEtaError),
    (pb.Task(queue="pulled", payload=b"push task"), errors.InvalidQueueModeError),
    (pb.Task(queue="pulled", method="GET"), errors.InvalidQueueModeError),
    (pb.Task(method="PULL", payload=b"to the push default queue"), errors.InvalidQueueModeError),
    (pb.Task(tag=b"push tasks have none"), errors.InvalidRequestError),
])
def test_invalid_pull_tasks_get_app_engines_error(task, error):
    with pytest.raises(error):
        check(task)


def test_a_batch_mixing_pull_and_push_tasks_is_refused():
    with pytest.raises(errors.InvalidRequestError, match="all pull tasks or all push"):
        check(pull(payload=b"a"), pb.Task(queue="default"))


def test_a_lease_takes_due_tasks_oldest_eta_first():
    found = [entry("later", 5), entry("b", -1), entry("a", -1), entry("oldest", -10), entry("now", 0)]
    assert [e.task.name for e in leases.due(found, NOW_USEC, group_by_tag=False, tag=None)] == [
        "oldest", "a", "b", "now"]


def test_grouping_by_tag_takes_the_given_tag_only():
    found = [entry("x1", -3, b"x"), entry("y1", -2, b"y"), entry("x2", -1, b"x"), entry("none", -4)]
    assert [e.task.name for e in leases.due(found, NOW_USEC, group_by_tag=True, tag=b"x")] == ["x1", "x2"]


def test_grouping_by_tag_without_one_takes_the_oldest_due_tasks_tag():
    found = [entry("x1", -3, b"x"), entry("y1", -5, b"y"), entry("y2", -1, b"y"), entry("y-later", 9, b"y")]
    assert [e.task.name for e in leases.due(found, NOW_USEC, group_by_tag=True, tag=None)] == ["y1", "y2"]


def test_grouping_by_tag_when_the_oldest_has_no_tag_takes_untagged_tasks():
    found = [entry("plain", -5), entry("x1", -3, b"x"), entry("plain2", -1)]
    assert [e.task.name for e in leases.due(found, NOW_USEC, group_by_tag=True, tag=None)] == ["plain", "plain2"]


def test_a_lease_moves_the_eta_to_its_end_and_counts_the_lease():
    taken = leases.leased(entry("a", -1).task, NOW_USEC, 30)
    assert taken.eta.ToMicroseconds() == NOW_USEC + 30_000_000 and taken.retry_count == 1
    assert leases.leased(taken, NOW_USEC + 1, 0.5).retry_count == 2


@pytest.mark.parametrize("seconds", [0, -1, 604800.5, float("nan"), float("inf")])
def test_a_lease_needs_more_than_zero_and_at_most_a_week(seconds):
    with pytest.raises(errors.InvalidRequestError, match="lease_seconds"):
        leases.check_lease(pb.LeaseRequest(lease_seconds=seconds, max_tasks=1))


@pytest.mark.parametrize("max_tasks", [0, -1, 1001])
def test_a_lease_takes_1_to_1000_tasks(max_tasks):
    with pytest.raises(errors.InvalidRequestError, match="max_tasks"):
        leases.check_lease(pb.LeaseRequest(lease_seconds=1, max_tasks=max_tasks))


def test_a_lease_refuses_a_long_tag_and_a_tag_without_grouping():
    with pytest.raises(errors.InvalidTagError):
        leases.check_lease(pb.LeaseRequest(lease_seconds=1, max_tasks=1, group_by_tag=True, tag=b"t" * 501))
    with pytest.raises(errors.InvalidRequestError, match="group_by_tag"):
        leases.check_lease(pb.LeaseRequest(lease_seconds=1, max_tasks=1, tag=b"t"))
    leases.check_lease(pb.LeaseRequest(lease_seconds=604800, max_tasks=1000, group_by_tag=True, tag=b"t" * 500))


def test_a_lease_change_may_end_a_lease_but_not_go_negative_or_past_a_week():
    leases.check_modify(pb.ModifyLeaseRequest(task_name="t", lease_seconds=0))
    for seconds in (-1, 604801):
        with pytest.raises(errors.InvalidRequestError):
            leases.check_modify(pb.ModifyLeaseRequest(task_name="t", lease_seconds=seconds))
    with pytest.raises(errors.InvalidTaskNameError):
        leases.check_modify(pb.ModifyLeaseRequest(task_name="a b", lease_seconds=1))


def test_only_the_current_unexpired_lease_token_changes_a_lease():
    held = entry("a", 10)
    leases.check_token(held, held.eta_usec, NOW_USEC)
    with pytest.raises(errors.TaskLeaseExpiredError):
        leases.check_token(held, held.eta_usec - 1, NOW_USEC)  # an older lease's token
    with pytest.raises(errors.TaskLeaseExpiredError):
        leases.check_token(held, held.eta_usec, held.eta_usec + 1)  # the lease has ended


def test_a_task_is_given_up_once_leased_as_often_as_its_retry_limit():
    limited = QUEUES["limited"]
    assert [leases.exhausted(limited, entry("a", 0, retry_count=n).task) for n in (0, 1, 2, 3)] == [
        False, False, True, True]
    assert not leases.exhausted(QUEUES["pulled"], entry("a", 0, retry_count=50).task)  # no limit
    own = entry("a", 0, retry_count=1).task
    own.retry_options.task_retry_limit = 1
    assert leases.exhausted(QUEUES["pulled"], own)
