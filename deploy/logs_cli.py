"""``kiln logs``: download an app's request logs (and the lines the app logged) to a file, like
``appcfg request_logs``.

Records are written oldest first: each request as an Apache combined log line,
followed by its app log lines (``\\tLEVEL:SECONDS.MICROS message``) with
``--include-app-logs``; ``--format json`` writes one JSON object per request
instead. ``--append`` adds only records newer than the last run's: the newest
start time written and the request ids at that time are kept beside the file
(``FILE.kiln-logs``), so a re-run never writes a record twice and never skips
one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import json_format

from deploy.cliutil import EXIT_OK, Metadata, Output, add_connection, app_metadata, guarded, missing_credentials
from kiln.errors import BadRequestError
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc

PAGE = 1000
LEVELS = {"debug": logs_pb2.LOG_LEVEL_DEBUG, "info": logs_pb2.LOG_LEVEL_INFO,
          "warning": logs_pb2.LOG_LEVEL_WARNING, "error": logs_pb2.LOG_LEVEL_ERROR,
          "critical": logs_pb2.LOG_LEVEL_CRITICAL}
LEVEL_NUMBERS = {v: i for i, v in enumerate(LEVELS.values())}  # appcfg wrote 0 (debug) to 4 (critical)


def parse_time(text: str, flag: str) -> datetime.datetime:
    """ISO 8601 (UTC unless it says otherwise), or a date."""
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BadRequestError(f"{flag}: expected an ISO 8601 time like 2026-11-25T10:00:00Z, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def combined(record: logs_pb2.RequestLog) -> str:
    """The Apache combined log line of a request."""
    when = record.start_time.ToDatetime(datetime.timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000")
    size = record.response_size or "-"
    return (f'{record.ip or "-"} - {record.nickname or "-"} [{when}] "{record.method} {record.resource} '
            f'{record.http_version or "HTTP/1.1"}" {record.status} {size} "{record.referrer or "-"}" '
            f'"{record.user_agent or "-"}" "{record.host}" ms={record.latency.ToMilliseconds()} '
            f'instance={record.instance_id or "-"} version={record.version_id} request_id={record.request_id}')


def render(record: logs_pb2.RequestLog, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(json_format.MessageToDict(record), sort_keys=True) + "\n"
    lines = [combined(record)]
    for line in record.app_logs:
        t = line.time.ToMicroseconds()
        lines.append(f"\t{LEVEL_NUMBERS.get(line.level, 1)}:{t // 1_000_000}.{t % 1_000_000:06d} {line.message}")
    return "\n".join(lines) + "\n"


def _state_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".kiln-logs")


def _read_state(path: pathlib.Path) -> tuple[int, set[str]]:
    try:
        data = json.loads(_state_path(path).read_text())
        return int(data["newest_us"]), set(data["ids_at_newest"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, set()


def fetch(stub: Any, meta: Metadata, request: logs_pb2.QueryRequest) -> Iterator[logs_pb2.RequestLog]:
    """Every matching record, newest first, across pages."""
    while True:
        page = stub.Query(request, metadata=meta)
        yield from page.logs
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def logs(args: argparse.Namespace) -> int:
    refused = missing_credentials("logs", args)
    if refused is not None:
        return refused
    out = Output(as_json=args.json)
    path = pathlib.Path(args.output)

    def body() -> int:
        request = logs_pb2.QueryRequest(app_id=args.app, version_ids=args.version or [],
                                        request_ids=args.request_id or [], page_size=PAGE,
                                        include_app_logs=args.include_app_logs or args.severity is not None)
        if args.severity is not None:
            request.minimum_log_level = LEVELS[args.severity]
        newest_us, ids_at_newest = _read_state(path) if args.append and path.exists() else (0, set())
        start = parse_time(args.start, "--start") if args.start else None
        if args.days and not start:
            start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=args.days)
        start_us = max(newest_us, int(start.timestamp() * 1_000_000) if start else 0)
        if start_us:
            request.start_time.FromMicroseconds(start_us)
        if args.end:
            request.end_time.FromDatetime(parse_time(args.end, "--end"))
        with grpc.insecure_channel(args.control_plane) as channel:
            records = [r for r in fetch(logs_pb2_grpc.LogsServiceStub(channel), app_metadata(args), request)
                       if not (r.start_time.ToMicroseconds() == newest_us and r.request_id in ids_at_newest)]
        records.reverse()  # oldest first
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        mode = "a" if args.append else "w"
        with open(path, mode, encoding="utf-8") as f:
            for record in records:
                f.write(render(record, args.format))
        if records:
            last_us = records[-1].start_time.ToMicroseconds()
            ids = {r.request_id for r in records if r.start_time.ToMicroseconds() == last_us}
            if last_us == newest_us:
                ids |= ids_at_newest
            tmp.write_text(json.dumps({"newest_us": last_us, "ids_at_newest": sorted(ids)}))
            tmp.replace(_state_path(path))
        if args.json:
            out.json({"app": args.app, "file": str(path), "written": len(records), "append": bool(args.append)})
        else:
            out.line(f"wrote {len(records)} request log{'s' if len(records) != 1 else ''} of app {args.app} "
                     f"to {path}" + (" (appended)" if args.append else ""))
        return EXIT_OK
    return guarded("logs", lambda: args.control_plane, body)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``logs`` to the ``kiln`` parser."""
    p = sub.add_parser("logs", help="download request logs and app log lines to a file",
                       description="Download an app's request logs to OUTPUT_FILE, oldest first (see --append).")
    p.add_argument("output", metavar="OUTPUT_FILE", help="where to write")
    p.add_argument("--version", action="append", help="only this major version (repeat for several)")
    p.add_argument("--start", help="from this time (ISO 8601, UTC unless given)")
    p.add_argument("--end", help="until this time, exclusive (ISO 8601)")
    p.add_argument("--days", type=int, default=0, help="the last N days (when --start is not given)")
    p.add_argument("--severity", choices=tuple(LEVELS), help="only requests that logged at this level or above "
                                                              "(implies --include-app-logs)")
    p.add_argument("--request-id", action="append", help="only this request (repeat for several)")
    p.add_argument("--include-app-logs", action="store_true", help="write the lines the app logged too")
    p.add_argument("--append", action="store_true", help="add only records newer than the last run's to the file")
    p.add_argument("--format", choices=("combined", "json"), default="combined",
                   help="Apache combined lines (default) or one JSON object per request")
    add_connection(p)
    p.set_defaults(func=logs)
