"""taskqueue_svc's rules without sockets: what makes a push task valid (taskqueue_svc.tasks) and the router-bound
signature of a task's App Engine headers (kiln_platform.auth, taskqueue_svc.app.RouterSender). The shared token
bucket and slots are in test_taskqueue_shared.py."""

from __future__ import annotations

import datetime

import pytest

from kiln.errors import KilnError
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln_platform import auth, queueyaml
from kiln_platform.config import Secret
from taskqueue_svc import errors, tasks
from taskqueue_svc.app import RouterSender
from taskqueue_svc.config import TaskQueueConfig

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)
QUEUES = queueyaml.parse("queue:\n- name: mail\n  rate: 1/s\n  target: beta\n  retry_parameters:\n"
                         "    task_retry_limit: 3\n    min_backoff_seconds: 2\n- name: pulled\n  mode: pull\n",
                         filename="queue.yaml").queues


def check(*task_list: pb.Task) -> list[pb.StoredTask]:
    return tasks.check_batch(pb.AddRequest(tasks=task_list), "app", QUEUES, NOW)


def test_a_plain_task_gets_app_engines_defaults():
    [stored] = check(pb.Task())
    assert (stored.queue, stored.method, stored.url, stored.named) == ("default", "POST", "/_ah/queue/default", False)
    assert stored.name.startswith("task-") and stored.eta.ToDatetime(datetime.timezone.utc) == NOW


def test_a_task_goes_to_its_queues_target_unless_it_names_one():
    assert check(pb.Task(queue="mail"))[0].target == "beta"
    assert check(pb.Task(queue="mail", target="v2"))[0].target == "v2"
    assert check(pb.Task(queue="default", target="v3.default"))[0].target == "v3"


def test_countdown_and_eta_set_the_time_of_the_first_attempt():
    [later] = check(pb.Task(countdown_seconds=90))
    assert later.eta.ToDatetime(datetime.timezone.utc) == NOW + datetime.timedelta(seconds=90)
    eta = pb.Task()
    eta.eta.FromDatetime(NOW + datetime.timedelta(days=30))
    assert check(eta)[0].eta.ToDatetime(datetime.timezone.utc) == NOW + datetime.timedelta(days=30)


def _eta_task(delta: datetime.timedelta) -> pb.Task:
    task = pb.Task()
    task.eta.FromDatetime(NOW + delta)
    return task


@pytest.mark.parametrize("task,error", [
    (pb.Task(name="a b"), errors.InvalidTaskNameError),
    (pb.Task(name="é"), errors.InvalidTaskNameError),
    (pb.Task(name="x" * 501), errors.InvalidTaskNameError),
    (pb.Task(queue="nope"), errors.UnknownQueueError),
    (pb.Task(queue="bad.name"), errors.InvalidQueueNameError),
    (pb.Task(queue="pulled"), errors.InvalidQueueModeError),
    (pb.Task(method="PULL"), errors.InvalidQueueModeError),
    (pb.Task(method="PATCH"), errors.InvalidRequestError),
    (pb.Task(url="relative"), errors.InvalidUrlError),
    (pb.Task(url="//host/path"), errors.InvalidUrlError),
    (pb.Task(url="/with space"), errors.InvalidUrlError),
    (pb.Task(url="/frag#ment"), errors.InvalidUrlError),
    (pb.Task(url="/" + "a" * 2083), errors.InvalidUrlError),
    (pb.Task(payload=b"x" * (100 * 1024)), errors.TaskTooLargeError),
    (pb.Task(headers=[pb.Header(name="X-Big", value=b"v" * 100 * 1024)]), errors.TaskTooLargeError),
    (pb.Task(method="GET", payload=b"body"), errors.InvalidRequestError),
    (pb.Task(method="DELETE", payload=b"body"), errors.InvalidRequestError),
    (pb.Task(countdown_seconds=-0.5), errors.InvalidEtaError),
    (pb.Task(countdown_seconds=float("nan")), errors.InvalidEtaError),
    (pb.Task(countdown_seconds=30 * 86400 + 1), errors.InvalidEtaError),
    (_eta_task(datetime.timedelta(days=30, seconds=1)), errors.InvalidEtaError),
    (pb.Task(headers=[pb.Header(name="X-AppEngine-TaskName", value=b"forged")]), errors.InvalidRequestError),
    (pb.Task(headers=[pb.Header(name="x_appengine_queuename", value=b"forged")]), errors.InvalidRequestError),
    (pb.Task(headers=[pb.Header(name="X-Kiln-Platform", value=b"cron")]), errors.InvalidRequestError),
    (pb.Task(headers=[pb.Header(name="X-AppEngine-Current-Namespace", value=b"no spaces")]),
     errors.InvalidRequestError),
    (pb.Task(headers=[pb.Header(name="Host", value=b"other.example")]), errors.InvalidRequestError),
    (pb.Task(headers=[pb.Header(name="Bad Name", value=b"v")]), errors.InvalidRequestError),
    (pb.Task(headers=[pb.Header(name="X-Split", value=b"a\r\nInjected: 1")]), errors.InvalidRequestError),
    (pb.Task(target="Not_A_Version"), errors.InvalidRequestError),
    (pb.Task(retry_options=pb.RetryOptions(task_retry_limit=-1)), errors.InvalidRequestError),
    (pb.Task(retry_options=pb.RetryOptions(min_backoff_seconds=float("nan"))), errors.InvalidRequestError),
    (pb.Task(retry_options=pb.RetryOptions(min_backoff_seconds=10, max_backoff_seconds=5)),
     errors.InvalidRequestError),
    (pb.Task(retry_options=pb.RetryOptions(task_age_limit_seconds=0)), errors.InvalidRequestError),
])
def test_each_invalid_task_refuses_its_whole_batch_with_app_engines_error(task, error):
    with pytest.raises(error) as err:
        check(pb.Task(name="fine"), task)
    assert str(err.value).startswith("task 1: ")


def test_the_adding_requests_namespace_is_the_one_app_engine_header_a_task_carries():
    [stored] = check(pb.Task(headers=[pb.Header(name="x-appengine-current-namespace", value=b"tenant-1")]))
    assert [(h.name, h.value) for h in stored.headers] == [("X-AppEngine-Current-Namespace", b"tenant-1")]
    headers = _sender().headers(stored, NOW.timestamp())
    assert headers["X-AppEngine-Current-Namespace"] == "tenant-1"
    assert auth.verify_platform("platform", headers[auth.PLATFORM_SIGNATURE_HEADER], "taskqueue", "POST",
                                "app.localhost", stored.url, NOW.timestamp(), auth.task_header_values(headers))


@pytest.mark.parametrize("request_,error", [
    (pb.AddRequest(), errors.InvalidRequestError),
    (pb.AddRequest(tasks=[pb.Task()] * 101), errors.TooManyTasksError),
    (pb.AddRequest(tasks=[pb.Task(name="twice"), pb.Task(name="twice")]), errors.DuplicateTaskNameError),
])
def test_batches_are_refused_when_empty_too_big_or_naming_a_task_twice(request_, error):
    with pytest.raises(error):
        tasks.check_batch(request_, "app", QUEUES, NOW)


def test_every_task_error_carries_app_engines_error_name():
    names = {cls.error_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, KilnError) and hasattr(cls, "error_code")}
    assert names == {"INVALID_REQUEST", "UNKNOWN_QUEUE", "INVALID_QUEUE_NAME", "INVALID_QUEUE_MODE", "TASK_TOO_LARGE",
                     "INVALID_TASK_NAME", "INVALID_URL", "INVALID_ETA", "DUPLICATE_TASK_NAME", "TOO_MANY_TASKS",
                     "TRANSIENT_ERROR", "INVALID_TAG", "UNKNOWN_TASK", "TOMBSTONED_TASK", "TASK_LEASE_EXPIRED"}


def test_a_tasks_retry_options_override_only_what_they_set():
    queue = QUEUES["mail"]
    merged = tasks.retry_of(queue, pb.RetryOptions(max_doublings=1))
    assert (merged.task_retry_limit, merged.min_backoff_seconds, merged.max_doublings) == (3, 2.0, 1)
    assert tasks.retry_of(queue, None) == queue.retry


def _sender() -> RouterSender:
    cfg = TaskQueueConfig(service_secret=Secret("s"), platform_secret=Secret("platform"))
    return RouterSender(cfg, session=None)  # type: ignore[arg-type]  # headers() makes no request


def _stored(**fields) -> pb.StoredTask:
    task = pb.StoredTask(app_id="app", queue="mail", name="n1", url="/work?x=1", method="POST", **fields)
    task.eta.FromDatetime(NOW)
    return task


def test_the_router_request_of_a_task_is_signed_over_its_app_engine_headers():
    headers = _sender().headers(_stored(retry_count=2, execution_count=1, previous_response=500), NOW.timestamp())
    assert (headers["Host"], headers["X-AppEngine-QueueName"], headers["X-AppEngine-TaskName"]) == (
        "app.localhost", "mail", "n1")
    assert (headers["X-AppEngine-TaskRetryCount"], headers["X-AppEngine-TaskExecutionCount"],
            headers["X-AppEngine-TaskPreviousResponse"]) == ("2", "1", "500")
    assert float(headers["X-AppEngine-TaskETA"]) == NOW.timestamp()
    signature = headers[auth.PLATFORM_SIGNATURE_HEADER]
    assert auth.verify_platform("platform", signature, "taskqueue", "POST", "app.localhost", "/work?x=1",
                                NOW.timestamp(), auth.task_header_values(headers))
    for name in auth.TASK_HEADERS:  # any value changed (or a header added or dropped) breaks the signature
        forged = {**headers, name: "7"}
        assert not auth.verify_platform("platform", signature, "taskqueue", "POST", "app.localhost", "/work?x=1",
                                        NOW.timestamp(), auth.task_header_values(forged))
    assert not auth.verify_platform("platform", signature, "cron", "POST", "app.localhost", "/work?x=1",
                                    NOW.timestamp(), auth.task_header_values(headers))


def test_a_first_attempt_sends_no_previous_response_and_a_target_picks_the_host():
    headers = _sender().headers(_stored(target="beta"), NOW.timestamp())
    assert "X-AppEngine-TaskPreviousResponse" not in headers
    assert headers["Host"] == "beta-dot-app.localhost"
    assert headers["X-AppEngine-TaskRetryCount"] == "0"
