"""The Task queues page: the app's queues with rate, bucket, backlog and paused state (taskqueue_svc's
QueueStats), and one queue's waiting tasks a page at a time (ListTasks) with their actions: run a push task now
(RunNow: its ETA becomes now), delete a task, purge the queue, pause and resume it.

Every name typed into the address or a form goes to the service as it is; the service checks it and its refusal
(an unknown queue, a task that ran or was deleted since the page was drawn) is shown in the page.
"""

from __future__ import annotations

import dataclasses
import datetime
import urllib.parse

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from console import render
from console.backend import Services
from kiln.errors import BadRequestError, NotFoundError
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb

PAGE_SIZE = 50  # tasks per page (ListTasks allows up to 100)
MAX_FIELD = 600  # characters of a queue name, task name or page token the page passes on


@dataclasses.dataclass(frozen=True)
class TaskRow:
    """One task as the page shows it."""

    task: pb.ListedTask
    eta: str
    due: bool
    added: str
    size: str


def when(ts: Timestamp) -> str:
    """A timestamp as the page shows it (UTC, to the second)."""
    return ts.ToDatetime(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(n: int) -> str:
    """A byte count for people (-1: not known)."""
    if n < 0:
        return "large (object store)"
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def task_row(task: pb.ListedTask, now: datetime.datetime) -> TaskRow:
    """``task`` laid out for the page."""
    eta = task.eta.ToDatetime(datetime.UTC)
    return TaskRow(task=task, eta=when(task.eta), due=eta <= now, added=when(task.added) if task.HasField("added")
                   else "", size=size(task.payload_bytes))


def rate(stats: pb.QueueStats) -> str:
    """A push queue's rate as queue.yaml writes it."""
    r = stats.rate_per_second
    if r <= 0:
        return "0 (held)"
    if r >= 1:
        return f"{r:g}/s"
    return f"{r * 60:g}/m" if r * 60 >= 1 else f"{r * 3600:g}/h"


def field(source: object, name: str) -> str:
    """A text field of a form or query (missing or not text: empty)."""
    value = source.get(name, "") if hasattr(source, "get") else ""
    if not isinstance(value, str):
        return ""
    if len(value) > MAX_FIELD:
        raise BadRequestError(f"{name}: at most {MAX_FIELD} characters")
    return value


def queue_url(queue: str, page: str = "") -> str:
    """The address of a queue's task list (one of its pages)."""
    query = {"queue": queue} | ({"page": page} if page else {})
    return "/queues/tasks?" + urllib.parse.urlencode(query)


def routes(services: Services) -> list[web.RouteDef]:
    """The page's routes."""

    async def stats_of(queue: str) -> pb.QueueStats:
        # Not with_oldest_eta: for a push queue that reads up to 1,000 tasks one by one (seconds for a long queue);
        # a pull queue's oldest ETA comes with its stats anyway.
        answer = await services.call("taskqueue", "QueueStats", pb.QueueStatsRequest(queues=[queue]))
        found: pb.QueueStats = answer.queues[0]
        return found

    async def queues_page(request: web.Request) -> web.StreamResponse:
        answer = await services.call("taskqueue", "QueueStats", pb.QueueStatsRequest())
        return render.page(request, "queues.html", queues=list(answer.queues), rate=rate, queue_url=queue_url)

    async def show_queue(request: web.Request, queue: str, page: str = "", *, message: str = "") -> web.Response:
        if not queue:
            raise BadRequestError("queue: name the queue to show")
        stats = await stats_of(queue)
        answer = await services.call("taskqueue", "ListTasks", pb.ListTasksRequest(queue=queue, page_size=PAGE_SIZE,
                                                                                   page_token=page))
        now = datetime.datetime.now(datetime.UTC)
        oldest = (when(Timestamp(seconds=stats.oldest_eta_usec // 1_000_000))
                  if stats.oldest_eta_usec >= 0 else "–")
        return render.page(request, "queue.html", fragment="queue_main.html", stats=stats, rate=rate(stats),
                           oldest=oldest, tasks=[task_row(t, now) for t in answer.tasks], message=message,
                           first_url=queue_url(queue) if page else "",
                           next_url=queue_url(queue, answer.next_page_token) if answer.next_page_token else "")

    async def queue_page(request: web.Request) -> web.StreamResponse:
        return await show_queue(request, field(request.query, "queue"), field(request.query, "page"))

    async def task_action(request: web.Request) -> tuple[str, str]:
        form = await request.post()
        queue, task = field(form, "queue"), field(form, "task")
        if not queue or not task:
            raise BadRequestError("queue and task: name the task to act on")
        return queue, task

    async def run_now(request: web.Request) -> web.StreamResponse:
        queue, task = await task_action(request)
        await services.call("taskqueue", "RunNow", pb.RunNowRequest(queue=queue, task_name=task))
        return await show_queue(request, queue, message=f"Task {task} is due now: it runs as soon as the queue's "
                                                        f"rate allows.")

    async def delete_task(request: web.Request) -> web.StreamResponse:
        queue, task = await task_action(request)
        answer = await services.call("taskqueue", "Delete", pb.DeleteRequest(queue=queue, task_names=[task]))
        error = answer.errors[0]
        if error == "UNKNOWN_TASK":
            raise NotFoundError(f"queue {queue} has no task {task}: nothing was deleted")
        if error:
            raise NotFoundError(f"task {task} already ran or was deleted: nothing was deleted")
        return await show_queue(request, queue, message=f"Deleted task {task}.")

    async def queue_action(request: web.Request) -> str:
        queue = field(await request.post(), "queue")
        if not queue:
            raise BadRequestError("queue: name the queue to act on")
        return queue

    async def purge(request: web.Request) -> web.StreamResponse:
        queue = await queue_action(request)
        await services.call("taskqueue", "Purge", pb.PurgeRequest(queue=queue))
        return await show_queue(request, queue, message=f"Purged {queue}: every task of it is deleted.")

    async def pause(request: web.Request) -> web.StreamResponse:
        queue = await queue_action(request)
        await services.call("taskqueue", "Pause", pb.PauseRequest(queue=queue))
        return await show_queue(request, queue, message=f"Paused {queue}: no task of it is sent until it resumes.")

    async def resume(request: web.Request) -> web.StreamResponse:
        queue = await queue_action(request)
        await services.call("taskqueue", "Resume", pb.ResumeRequest(queue=queue))
        return await show_queue(request, queue, message=f"Resumed {queue}.")

    return [web.get("/queues", queues_page), web.get("/queues/tasks", queue_page),
            web.post("/queues/run", run_now), web.post("/queues/delete", delete_task),
            web.post("/queues/purge", purge), web.post("/queues/pause", pause), web.post("/queues/resume", resume)]
