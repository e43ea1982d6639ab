"""``kiln.pb.taskqueue.v1.TaskQueueService``: thin — the caller's app from its token, the checks of
:mod:`taskqueue_svc.tasks`, the storage of :mod:`taskqueue_svc.store`."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

import grpc

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import grpcserver
from kiln_platform.queueyaml import DEFAULT, DEFAULT_QUEUE, Queue
from taskqueue_svc import errors, tasks
from taskqueue_svc.delivery import QueueState
from taskqueue_svc.store import TaskStore

MAX_NAMES_PER_DELETE = 1000


class TaskQueueService(taskqueue_pb2_grpc.TaskQueueServiceServicer):
    """Implements the contract for the app named by each call's token."""

    def __init__(self, store: TaskStore, queues: Callable[[str], dict[str, Queue]],
                 running: Callable[[str, str], QueueState | None]) -> None:
        self._store = store
        self._queues = queues
        self._running = running

    def _app_queues(self, app: str) -> dict[str, Queue]:
        return self._queues(app) or {DEFAULT_QUEUE: DEFAULT}

    async def Add(self, request: pb.AddRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.AddResponse:
        app = grpcserver.caller_app()
        now = datetime.datetime.now(datetime.timezone.utc)
        stored = tasks.check_batch(request, app, self._app_queues(app), now)
        # With a transaction the tasks are only checked: the datastore adds them once the transaction commits.
        results = [""] * len(stored) if request.transaction else await self._store.add(stored)
        out = pb.AddResponse()
        for task, error in zip(stored, results):
            out.results.add(error=error, task_name=task.name, eta=task.eta)
        return out

    async def Delete(self, request: pb.DeleteRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> pb.DeleteResponse:
        app = grpcserver.caller_app()
        queue = tasks.queue_for(request.queue, self._app_queues(app))
        if len(request.task_names) > MAX_NAMES_PER_DELETE:
            raise errors.TooManyTasksError(f"at most {MAX_NAMES_PER_DELETE} names in one delete")
        for name in request.task_names:
            if not tasks.TASK_NAME_RE.match(name):
                raise errors.InvalidTaskNameError(f"task name {name[:120]!r} must be 1 to 500 letters, digits, "
                                                  f"underscores and hyphens")
        return pb.DeleteResponse(errors=await self._store.delete(app, queue.name, list(request.task_names)))

    async def Purge(self, request: pb.PurgeRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.PurgeResponse:
        app = grpcserver.caller_app()
        queue = tasks.queue_for(request.queue, self._app_queues(app))
        await self._store.purge(app, queue.name)
        return pb.PurgeResponse()

    async def QueueStats(self, request: pb.QueueStatsRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.QueueStatsResponse:
        app = grpcserver.caller_app()
        queues = self._app_queues(app)
        names = list(request.queues) or sorted(queues)
        out = pb.QueueStatsResponse()
        for name in names:
            queue = tasks.queue_for(name, queues)
            state = self._running(app, queue.name)
            out.queues.add(queue=queue.name, mode=queue.mode, tasks=await self._store.waiting(app, queue.name),
                           in_flight=state.in_flight if state else 0,
                           executed_last_minute=state.executed_last_minute(time.monotonic()) if state else 0,
                           rate_per_second=queue.rate_per_second, bucket_size=queue.bucket_size,
                           max_concurrent_requests=queue.max_concurrent_requests or 0)
        return out
