"""The Cron page: the app's cron.yaml jobs with their schedule, next run and last run (cron_svc's ListJobs).

Running a job now needs an RPC cron_svc does not have yet (a proto addition): the page lists, it does not act.
"""

from __future__ import annotations

import dataclasses
import datetime

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from console import render
from console.backend import Services
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

    async def cron_page(request: web.Request) -> web.StreamResponse:
        answer = await services.call("cron", "ListJobs", pb.ListJobsRequest(app_id=services.app_id))
        return render.page(request, "cron.html", jobs=[row(job) for job in answer.jobs])

    return [web.get("/cron", cron_page)]
