"""``kiln cron list``: an app's cron jobs with their next and last runs, from ``cron_svc``.

The CLI trades the person's deploy token for the app's identity token at the
control plane (``AppToken``) and asks ``cron_svc`` as the app.
"""

from __future__ import annotations

import argparse
import datetime
import os
from typing import Any

import grpc

from deploy.cliutil import EXIT_OK, Output, add_connection, app_token, guarded, metadata, missing_credentials
from kiln.pb.cron.v1 import cron_pb2, cron_pb2_grpc

DEFAULT_CRON = "127.0.0.1:50056"


def _when(ts: Any, present: bool) -> str:
    if not present:
        return ""
    return str(ts.ToDatetime(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))


def cron_list(args: argparse.Namespace) -> int:
    refused = missing_credentials("cron list", args)
    if refused is not None:
        return refused
    out = Output(as_json=args.json)
    where = [args.control_plane]

    def body() -> int:
        identity = app_token(args.control_plane, args.token, args.app)
        where[0] = args.cron
        with grpc.insecure_channel(args.cron) as channel:
            jobs = cron_pb2_grpc.CronServiceStub(channel).ListJobs(cron_pb2.ListJobsRequest(app_id=args.app),
                                                                   metadata=metadata(identity)).jobs
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
    return guarded("cron list", lambda: where[0], body)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cron`` to the ``kiln`` parser."""
    cron = sub.add_parser("cron", help="an app's cron jobs", description="Cron jobs of an app's default version.")
    csub = cron.add_subparsers(dest="action", required=True)
    ls = csub.add_parser("list", help="jobs with their schedule, next run and last run")
    add_connection(ls)
    ls.add_argument("--cron", default=os.environ.get("KILN_CRON_ADDR", DEFAULT_CRON), metavar="HOST:PORT",
                    help="cron_svc's gRPC address (default: KILN_CRON_ADDR, else %(default)s)")
    ls.set_defaults(func=cron_list)
