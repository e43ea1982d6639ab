"""App Engine's ``taskqueue`` service for Google's SDK: push and pull tasks through kiln's task queue service.

``BulkAdd`` and ``Add`` (a task's queue, name, ETA, method, url, headers, body and retry parameters become kiln's
``Task``; the service checks it again), ``Delete``, ``PurgeQueue`` and ``FetchQueueStats``. The service answers with
App Engine's own error names, which become the SDK's ``TaskQueueServiceError`` codes, so the SDK raises its own
exceptions (``TaskAlreadyExistsError``, ``TombstonedTaskError``, ``UnknownQueueError``…), and BulkAdd's per-task
results (a taken name fails that task alone; ``SKIPPED`` is not used, as kiln refuses a batch with a malformed task
whole, with that task's error).

Pull queues: an add with ``mode: PULL`` becomes a ``PULL`` task (body and tag), ``QueryAndOwnTasks`` is kiln's
``Lease`` (``lease_tasks``, ``lease_tasks_by_tag``) and ``ModifyTaskLease`` its ``ModifyLease`` (the task's
``eta_usec`` is the lease's token, as on App Engine); ``FetchQueueStats`` reports a pull queue's oldest ETA.

Transactional adds (a request with a ``transaction``, as ``taskqueue.add(transactional=True)`` inside a db or ndb
transaction sends) work as App Engine's taskqueue stub did: the tasks are checked and named by the service
(``AddRequest.transaction`` set: nothing stored), then handed to the ``datastore_v3`` service's ``AddActions`` in
this process, which keeps them with the transaction until its commit (see :mod:`kiln.sdk.datastore_v3`); a
datastore error comes back as ``DATASTORE_ERROR`` + its code, so the SDK raises its joint ``DatastoreError`` (a
sixth task: ``BadRequestError`` "Too many messages, maximum allowed 5").

Not served yet (``CallNotFoundError`` naming the method, or ``INVALID_REQUEST``): queue updates, ``QueryTasks``,
Cloud Datastore (v1) transactions.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.appengine.api.taskqueue import taskqueue_service_bytes_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.api import _rpc
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln.sdk import _errors
from kiln.sdk.service import CallContext

__all__ = ["TaskQueue"]

_ERR = gae.TaskQueueServiceError
_NAMES = ("UNKNOWN_QUEUE", "TRANSIENT_ERROR", "INTERNAL_ERROR", "TASK_TOO_LARGE", "INVALID_TASK_NAME",
          "INVALID_QUEUE_NAME", "INVALID_URL", "PERMISSION_DENIED", "TASK_ALREADY_EXISTS", "TOMBSTONED_TASK",
          "INVALID_ETA", "INVALID_REQUEST", "UNKNOWN_TASK", "DUPLICATE_TASK_NAME", "TOO_MANY_TASKS",
          "INVALID_QUEUE_MODE", "TASK_LEASE_EXPIRED", "QUEUE_PAUSED", "INVALID_TAG")
_CODES = {name: int(_ERR.ErrorCode.Value(name)) for name in _NAMES}
_ERRORS = _errors.table(_CODES, {grpc.StatusCode.UNAVAILABLE: _CODES["TRANSIENT_ERROR"],
                                 grpc.StatusCode.INVALID_ARGUMENT: _CODES["INVALID_REQUEST"]})
_METHODS = {int(gae.TaskQueueAddRequest.RequestMethod.Value(m)): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE")}


def _stub() -> taskqueue_pb2_grpc.TaskQueueServiceStub:
    return _rpc.stub("TASKQUEUE", taskqueue_pb2_grpc.TaskQueueServiceStub)


class TaskQueue:
    """The ``taskqueue`` service (module docstring)."""

    name = "taskqueue"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        timeout = ctx.deadline if ctx.deadline is not None else _rpc.DEFAULT_TIMEOUT
        if method in ("Add", "BulkAdd"):
            adds = [request] if method == "Add" else list(request.add_request)
            default_host = str(ctx.environ.get("DEFAULT_VERSION_HOSTNAME", "") or "")
            transactional = bool(adds) and adds[0].HasField("transaction")
            if any(a.HasField("datastore_transaction") for a in adds):
                raise apiproxy_errors.ApplicationError(_CODES["INVALID_REQUEST"], "Cloud Datastore (v1) transactions "
                                                       "are not served by kiln; use datastore_v3 (db, ndb)")
            if any(a.HasField("transaction") != transactional for a in adds):
                raise apiproxy_errors.ApplicationError(_CODES["INVALID_REQUEST"],
                                                       "a batch mixes transactional and other tasks")
            out = _rpc.call(_stub().Add, pb.AddRequest(tasks=[translate(a, default_host) for a in adds],
                                                       transaction=b"datastore_v3" if transactional else b""),
                            timeout=timeout, table=_ERRORS)
            if transactional:
                _join_transaction(adds, out, ctx)
            if method == "Add":
                [result] = out.results
                if result.error:
                    raise apiproxy_errors.ApplicationError(_CODES[result.error], result.error)
                response.chosen_task_name = result.task_name.encode()
                return
            for result in out.results:
                item = response.taskresult.add(result=_CODES.get(result.error, 0) if result.error else _ERR.OK)
                item.chosen_task_name = result.task_name.encode()
        elif method == "Delete":
            names = [n.decode("utf-8", "replace") for n in request.task_name]
            done = _rpc.call(_stub().Delete, pb.DeleteRequest(queue=request.queue_name.decode("utf-8", "replace"),
                                                              task_names=names), timeout=timeout, table=_ERRORS)
            response.result.extend(_CODES[e] if e else _ERR.OK for e in done.errors)
        elif method == "PurgeQueue":
            _rpc.call(_stub().Purge, pb.PurgeRequest(queue=request.queue_name.decode("utf-8", "replace")),
                      timeout=timeout, table=_ERRORS)
        elif method == "FetchQueueStats":
            queues = [q.decode("utf-8", "replace") for q in request.queue_name]
            stats = _rpc.call(_stub().QueueStats, pb.QueueStatsRequest(queues=queues, with_oldest_eta=True), timeout=timeout,
                              table=_ERRORS)
            for queue in stats.queues:
                item = response.queuestats.add(num_tasks=queue.tasks, oldest_eta_usec=queue.oldest_eta_usec)
                item.scanner_info.executed_last_minute = queue.executed_last_minute
                item.scanner_info.requests_in_flight = queue.in_flight
                item.scanner_info.enforced_rate = queue.rate_per_second
        elif method == "QueryAndOwnTasks":
            lease = pb.LeaseRequest(queue=request.queue_name.decode("utf-8", "replace"),
                                    lease_seconds=request.lease_seconds, max_tasks=request.max_tasks,
                                    group_by_tag=request.group_by_tag)
            if request.HasField("tag"):
                lease.tag = request.tag
            leased = _rpc.call(_stub().Lease, lease, timeout=timeout, table=_ERRORS)
            for task in leased.tasks:
                item = response.task.add(task_name=task.name.encode(), eta_usec=task.eta_usec,
                                         retry_count=task.retry_count, body=task.payload)
                if task.HasField("tag"):
                    item.tag = task.tag
        elif method == "ModifyTaskLease":
            changed = _rpc.call(_stub().ModifyLease, pb.ModifyLeaseRequest(
                queue=request.queue_name.decode("utf-8", "replace"),
                task_name=request.task_name.decode("utf-8", "replace"), eta_usec=request.eta_usec,
                lease_seconds=request.lease_seconds), timeout=timeout, table=_ERRORS)
            response.updated_eta_usec = changed.eta_usec
        else:
            raise apiproxy_errors.CallNotFoundError(f"taskqueue.{method}() is not served by kiln yet (served: Add, "
                                                    f"BulkAdd, Delete, PurgeQueue, FetchQueueStats, "
                                                    f"QueryAndOwnTasks, ModifyTaskLease)")


def _join_transaction(adds: list[Any], checked: pb.AddResponse, ctx: CallContext) -> None:
    """Hand checked tasks (with the names and ETAs the service chose) to the ``datastore_v3`` service's
    ``AddActions``, which keeps them with their transaction, as App Engine's taskqueue stub did."""
    from google.appengine.api import api_base_pb2, apiproxy_stub_map  # noqa: PLC0415

    bulk = gae.TaskQueueBulkAddRequest()
    for add, result in zip(adds, checked.results):
        item = bulk.add_request.add()
        item.CopyFrom(add)
        item.task_name = result.task_name.encode()
        item.eta_usec = result.eta.ToMicroseconds()
    stub = apiproxy_stub_map.apiproxy.GetStub("datastore_v3")
    datastore = getattr(getattr(stub, "proxy", None), "services", {}).get("datastore_v3")
    if datastore is None:
        raise apiproxy_errors.ApplicationError(_CODES["INTERNAL_ERROR"], "transactional adds need kiln's datastore_v3")
    try:
        datastore.handle("AddActions", bulk, api_base_pb2.VoidProto(), ctx)
    except apiproxy_errors.ApplicationError as exc:
        raise apiproxy_errors.ApplicationError(exc.application_error + _ERR.DATASTORE_ERROR,
                                               exc.error_detail) from None


def target_of(host: str, default_host: str) -> str:
    """The version a task's ``Host`` header names (the SDK sets it from the task's target, or from the adding
    request's host): ``[INSTANCE-dot-]VERSION-dot-APP.DOMAIN`` or ``VERSION.DEFAULT_HOSTNAME``; ``""`` for the
    default version."""
    name = host.strip().lower()
    parts = name.split("-dot-")
    if len(parts) >= 2:
        return parts[-2]
    default = default_host.strip().lower()
    if default and name.endswith("." + default):
        return name[:-len(default) - 1].rpartition(".")[2]
    return ""


def translate(add: Any, default_host: str = "") -> pb.Task:
    """kiln's task for the SDK's ``TaskQueueAddRequest`` (its ``Host`` header becomes the task's target).

    Raises:
        apiproxy_errors.ApplicationError: never for a well-formed add (the service checks the task).
    """
    if add.mode == gae.TaskQueueMode.PULL:
        pull = pb.Task(queue=add.queue_name.decode("utf-8", "replace"), name=add.task_name.decode("utf-8", "replace"),
                       method="PULL", payload=add.body)
        pull.eta.FromMicroseconds(add.eta_usec)
        if add.HasField("tag"):
            pull.tag = add.tag
        return pull
    task = pb.Task(queue=add.queue_name.decode("utf-8", "replace"), name=add.task_name.decode("utf-8", "replace"),
                   url=add.url.decode("latin-1"), method=_METHODS.get(add.method, "POST"), payload=add.body)
    task.eta.FromMicroseconds(add.eta_usec)
    for header in add.header:
        name = header.key.decode("latin-1")
        if name.lower() == "host":
            task.target = target_of(header.value.decode("latin-1"), default_host)
            continue
        task.headers.add(name=name, value=header.value)
    if add.HasField("retry_parameters"):
        retry, out = add.retry_parameters, task.retry_options
        if retry.HasField("retry_limit"):
            out.task_retry_limit = retry.retry_limit
        if retry.HasField("age_limit_sec"):
            out.task_age_limit_seconds = retry.age_limit_sec
        if retry.HasField("min_backoff_sec"):
            out.min_backoff_seconds = retry.min_backoff_sec
        if retry.HasField("max_backoff_sec"):
            out.max_backoff_seconds = retry.max_backoff_sec
        if retry.HasField("max_doublings"):
            out.max_doublings = retry.max_doublings
    return task
