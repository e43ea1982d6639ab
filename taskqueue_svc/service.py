"""``kiln.pb.taskqueue.v1.TaskQueueService``: thin — the caller's app from its token, the checks of
:mod:`taskqueue_svc.tasks`, the storage of :mod:`taskqueue_svc.store`."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

import grpc
import nats.errors

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import grpcserver
from kiln_platform.queueyaml import DEFAULT, DEFAULT_QUEUE, Queue
from taskqueue_svc import errors, tasks
from taskqueue_svc.delivery import QueueState, events
from taskqueue_svc.shared import SharedQueues
from taskqueue_svc.store import TaskStore

MAX_NAMES_PER_DELETE = 1000


class TaskQueueService(taskqueue_pb2_grpc.TaskQueueServiceServicer):
    """Implements the contract for the app named by each call's token."""

    def __init__(self, store: TaskStore, shared: SharedQueues, queues: Callable[[str], dict[str, Queue]],
                 running: Callable[[str, str], QueueState | None]) -> None:
        self._store = store
        self._shared = shared
        self._queues = queues
        self._running = running

    def _app_queues(self, app: str) -> dict[str, Queue]:
        return self._queues(app) or {DEFAULT_QUEUE: DEFAULT}

    async def Add(self, request: pb.AddRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.AddResponse:
        app = grpcserver.caller_app()
        now = datetime.datetime.now(datetime.timezone.utc)
        stored = tasks.check_batch(request, app, self._app_queues(app), now)
        results = await self._store.add(stored)
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
            try:
                bucket = await self._shared.bucket(app, queue.name)
                in_flight = await self._shared.in_flight(app, queue.name)
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                raise errors.TransientError(f"the queue state is not reachable now ({exc})") from None
            stats = out.queues.add(
                queue=queue.name, mode=queue.mode, tasks=await self._store.waiting(app, queue.name),
                in_flight=in_flight,
                executed_last_minute=state.executed_last_minute(time.monotonic()) if state else 0,
                rate_per_second=queue.rate_per_second, bucket_size=queue.bucket_size,
                max_concurrent_requests=queue.max_concurrent_requests or 0, paused=bool(bucket and bucket.paused))
            if request.with_oldest_eta:
                oldest = await self._store.oldest_eta(app, queue.name)
                if oldest is not None:
                    stats.oldest_eta.FromDatetime(datetime.datetime.fromtimestamp(oldest, datetime.timezone.utc))
        return out

    async def Pause(self, request: pb.PauseRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.PauseResponse:
        await self._set_paused(request.queue, True)
        return pb.PauseResponse()

    async def Resume(self, request: pb.ResumeRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> pb.ResumeResponse:
        await self._set_paused(request.queue, False)
        return pb.ResumeResponse()

    async def _set_paused(self, name: str, paused: bool) -> None:
        app = grpcserver.caller_app()
        queue = tasks.queue_for(name, self._app_queues(app))
        if queue.mode != "push":
            raise errors.InvalidQueueModeError(f"queue {queue.name!r} is a pull queue: it has no delivery to pause")
        try:
            await self._shared.set_paused(app, queue.name, paused, rate=queue.rate_per_second,
                                          capacity=queue.bucket_size)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise errors.TransientError(f"the queue state is not reachable now ({exc})") from None
        events.info("taskqueue %s/%s: %s on every replica", app, queue.name, "paused" if paused else "resumed")
