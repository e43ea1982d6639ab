"""``kiln.pb.taskqueue.v1.TaskQueueService``: thin — the caller's app from its token, the checks of
:mod:`taskqueue_svc.tasks` and :mod:`taskqueue_svc.leases`, the storage of :mod:`taskqueue_svc.store` (push tasks)
and :mod:`taskqueue_svc.pullstore` (pull tasks and their leases)."""

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
from taskqueue_svc import errors, leases, tasks
from taskqueue_svc.delivery import QueueState, events
from taskqueue_svc.pullstore import PullStore
from taskqueue_svc.shared import SharedQueues
from taskqueue_svc.store import TaskStore

MAX_NAMES_PER_DELETE = 1000
DEFAULT_LIST_PAGE, MAX_LIST_PAGE = 50, 100


class TaskQueueService(taskqueue_pb2_grpc.TaskQueueServiceServicer):
    """Implements the contract for the app named by each call's token."""

    def __init__(self, store: TaskStore, shared: SharedQueues, queues: Callable[[str], dict[str, Queue]],
                 running: Callable[[str, str], QueueState | None], *, pull: PullStore) -> None:
        self._store = store
        self._shared = shared
        self._queues = queues
        self._running = running
        self._pull = pull
        self._leased: dict[tuple[str, str], QueueState] = {}  # pull queues: leases of the last minute (this replica)

    def _app_queues(self, app: str) -> dict[str, Queue]:
        return self._queues(app) or {DEFAULT_QUEUE: DEFAULT}

    async def Add(self, request: pb.AddRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.AddResponse:
        app = grpcserver.caller_app()
        now = datetime.datetime.now(datetime.timezone.utc)
        stored = tasks.check_batch(request, app, self._app_queues(app), now)
        pull = stored[0].method == "PULL"  # a batch is all pull or all push tasks
        if request.transaction:  # only checked: the datastore adds them once the transaction commits
            results = [""] * len(stored)
        else:
            results = await (self._pull.add(stored) if pull else self._store.add(stored))
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
        names = list(request.task_names)
        if queue.mode == "pull":
            return pb.DeleteResponse(errors=await self._pull.delete(app, queue.name, names))
        return pb.DeleteResponse(errors=await self._store.delete(app, queue.name, names))

    async def Purge(self, request: pb.PurgeRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.PurgeResponse:
        app = grpcserver.caller_app()
        queue = tasks.queue_for(request.queue, self._app_queues(app))
        if queue.mode == "pull":
            await self._pull.purge(app, queue.name)
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
            if queue.mode == "pull":
                count, oldest, held = await self._pull.stats(app, queue.name, _now_usec())
                recent = self._leased.get((app, queue.name))
                out.queues.add(queue=queue.name, mode=queue.mode, tasks=count, oldest_eta_usec=oldest, leased=held,
                               executed_last_minute=recent.executed_last_minute(time.monotonic()) if recent else 0)
                continue
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
                max_concurrent_requests=queue.max_concurrent_requests or 0, paused=bool(bucket and bucket.paused),
                oldest_eta_usec=-1)
            if request.with_oldest_eta:
                earliest = await self._store.oldest_eta(app, queue.name)
                if earliest is not None:
                    stats.oldest_eta_usec = int(earliest * 1_000_000)
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

    def _pull_queue(self, app: str, name: str) -> Queue:
        queue = tasks.queue_for(name, self._app_queues(app))
        if queue.mode != "pull":
            raise errors.InvalidQueueModeError(f"queue {queue.name!r} is a push queue; only pull queues lease tasks")
        return queue

    async def Lease(self, request: pb.LeaseRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.LeaseResponse:
        app = grpcserver.caller_app()
        queue = self._pull_queue(app, request.queue)
        leases.check_lease(request)
        taken = await self._pull.lease(app, queue.name, request, _now_usec(), lambda t: leases.exhausted(queue, t))
        recent = self._leased.setdefault((app, queue.name), QueueState())
        recent.finished.extend([time.monotonic()] * len(taken))
        out = pb.LeaseResponse()
        for task in taken:
            item = out.tasks.add(name=task.name, eta_usec=task.eta.ToMicroseconds(), retry_count=task.retry_count,
                                 payload=task.payload)
            if task.HasField("tag"):
                item.tag = task.tag
        return out

    async def ModifyLease(self, request: pb.ModifyLeaseRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModifyLeaseResponse:
        app = grpcserver.caller_app()
        queue = self._pull_queue(app, request.queue)
        leases.check_modify(request)
        return pb.ModifyLeaseResponse(eta_usec=await self._pull.modify(app, queue.name, request, _now_usec()))

    async def ListTasks(self, request: pb.ListTasksRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListTasksResponse:
        app = grpcserver.caller_app()
        queue = tasks.queue_for(request.queue, self._app_queues(app))
        size = request.page_size or DEFAULT_LIST_PAGE
        if not 1 <= size <= MAX_LIST_PAGE:
            raise errors.InvalidRequestError(f"page_size: must be 0 to {MAX_LIST_PAGE}, got {request.page_size}")
        out = pb.ListTasksResponse()
        if queue.mode == "pull":
            after = request.page_token
            if after and not tasks.TASK_NAME_RE.match(after):
                raise errors.InvalidRequestError("page_token: not a token of this queue's pages")
            waiting = sorted((e.task for e in await self._pull.entries(app, queue.name) if e.task.name > after),
                             key=lambda t: t.name)
            page = waiting[:size]
            out.next_page_token = page[-1].name if len(waiting) > size else ""
        else:
            token = request.page_token
            if token and not (token.isascii() and token.isdigit() and 0 < int(token) < 2**63):
                raise errors.InvalidRequestError("page_token: not a token of this queue's pages")
            page, following = await self._store.page(app, queue.name, int(token or 1), size)
            out.next_page_token = str(following) if following else ""
        for task in page:
            item = out.tasks.add(name=task.name, eta=task.eta, retry_count=task.retry_count, method=task.method,
                                 url=task.url, execution_count=task.execution_count,
                                 previous_response=task.previous_response, added=task.added,
                                 payload_bytes=-1 if task.payload_object else len(task.payload))
            if task.HasField("tag"):
                item.tag = task.tag
        return out

    async def RunNow(self, request: pb.RunNowRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.RunNowResponse:
        app = grpcserver.caller_app()
        queue = tasks.queue_for(request.queue, self._app_queues(app))
        if queue.mode != "push":
            raise errors.InvalidQueueModeError(f"queue {queue.name!r} is a pull queue: its tasks are leased, not run")
        if not tasks.TASK_NAME_RE.match(request.task_name):
            raise errors.InvalidTaskNameError(f"task name {request.task_name[:120]!r} must be 1 to 500 letters, "
                                              f"digits, underscores and hyphens")
        task = await self._store.run_now(app, queue.name, request.task_name,
                                         datetime.datetime.now(datetime.timezone.utc))
        events.info("taskqueue %s/%s: task %s made due now from the console", app, queue.name, task.name)
        return pb.RunNowResponse(eta=task.eta)


def _now_usec() -> int:
    return time.time_ns() // 1000
