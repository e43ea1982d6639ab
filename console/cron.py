"""The Cron page: the app's cron.yaml jobs with their schedule, next run and last run (cron_svc's ListJobs), and
a "Run now" button per job (cron_svc's RunJob: the same signed request a scheduled firing sends, recorded as the
job's last run).
"""

from __future__ import annotations

import dataclasses
import datetime

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from console import render
from console.backend import Services
from kiln.errors import BadRequestError
from kiln.pb.cron.v1 import cron_pb2 as pb


@dataclasses.dataclass(frozen=True)
class JobRow:
    """One job as the page shows it."""

    job: pb.Job
    next_run: str
    last_run: str
    last_status: str


def _when(ts: Timestamp) -> str:
    return ts.ToDatetime(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def row(job: pb.Job) -> JobRow:
    """``job`` laid out for the page."""
    fired = job.HasField("last_firing")
    return JobRow(job=job, next_run=_when(job.next_run) if job.HasField("next_run") else "–",
                  last_run=_when(job.last_firing.fired_at) if fired else "never",
                  last_status=(str(job.last_firing.status) if job.last_firing.status else "no answer") if fired else "")


def routes(services: Services) -> list[web.RouteDef]:
    """The page's routes."""

    async def show_page(request: web.Request, *, message: str = "") -> web.Response:
        answer = await services.call("cron", "ListJobs", pb.ListJobsRequest(app_id=services.app_id))
        return render.page(request, "cron.html", fragment="cron_main.html", jobs=[row(job) for job in answer.jobs],
                           message=message)

    async def cron_page(request: web.Request) -> web.StreamResponse:
        return await show_page(request)

    async def run_job(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key = form.get("key", "")
        if not isinstance(key, str) or not key:
            raise BadRequestError("key: the job to run is missing")
        answer = await services.call("cron", "RunJob", pb.RunJobRequest(app_id=services.app_id, key=key))
        status = answer.firing.status
        return await show_page(request, message=f"Ran {answer.firing.url}: "
                                                + (f"status {status}." if status else "no answer."))

    return [web.get("/cron", cron_page), web.post("/cron/run", run_job)]
