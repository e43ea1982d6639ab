"""``kiln cron list``: an app's cron jobs with their next and last runs, from ``cron_svc``.

The CLI asks ``cron_svc`` through the control plane's gateway with the person's deploy token
(:mod:`deploy.control.gateway`).
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import grpc

from deploy.cliutil import EXIT_OK, Output, add_connection, app_metadata, guarded, missing_credentials
from kiln.pb.cron.v1 import cron_pb2, cron_pb2_grpc

def _when(ts: Any, present: bool) -> str:
    if not present:
        return ""
    return str(ts.ToDatetime(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))


def cron_list(args: argparse.Namespace) -> int:
    refused = missing_credentials("cron list", args)
    if refused is not None:
        return refused
    out = Output(as_json=args.json)

    def body() -> int:
        with grpc.insecure_channel(args.control_plane) as channel:
            jobs = cron_pb2_grpc.CronServiceStub(channel).ListJobs(cron_pb2.ListJobsRequest(app_id=args.app),
                                                                   metadata=app_metadata(args)).jobs
        rows: list[dict[str, Any]] = []
        for job in jobs:
            last = job.last_firing
            rows.append({"url": job.url, "schedule": job.schedule, "timezone": job.timezone,
                         "description": job.description, "target": job.target,
                         "next_run": _when(job.next_run, job.HasField("next_run")) or None,
                         "last_run": _when(last.fired_at, job.HasField("last_firing")) or None,
                         "last_status": last.status if job.HasField("last_firing") else None})
        if args.json:
            out.json(rows)
        elif not rows:
            out.line(f"app {args.app} has no cron jobs (its default version has no cron.yaml)")
        else:
            out.table(["URL", "SCHEDULE", "TIMEZONE", "TARGET", "NEXT RUN (UTC)", "LAST RUN (UTC)", "STATUS"],
                      [[r["url"], r["schedule"], r["timezone"], r["target"], r["next_run"] or "",
                        r["last_run"] or "", "" if r["last_status"] is None else str(r["last_status"])]
                       for r in rows])
        return EXIT_OK
    return guarded("cron list", lambda: args.control_plane, body)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cron`` to the ``kiln`` parser."""
    cron = sub.add_parser("cron", help="an app's cron jobs", description="Cron jobs of an app's default version.")
    csub = cron.add_subparsers(dest="action", required=True)
    ls = csub.add_parser("list", help="jobs with their schedule, next run and last run")
    add_connection(ls)
    ls.set_defaults(func=cron_list)
