"""The Request logs page: an app's requests, newest first, each opening to the lines the app logged.

logs_svc filters by minimum app log level itself; status and path are filtered here, over the service's pages
(at most :data:`MAX_SCAN` records read per page shown), because its query has no such conditions.
"""

from __future__ import annotations

import dataclasses
import datetime
import re

from aiohttp import web
from multidict import MultiMapping

from console import render
from console.backend import Services
from kiln.errors import BadRequestError
from kiln.pb.logs.v1 import logs_pb2

PAGE = 50  # requests per page shown
SERVICE_PAGE = 100  # records asked of logs_svc per call
MAX_SCAN = 1000  # records read for one page shown, at most (a rare status or path may need several pages)
MAX_PATH = 500
LEVELS = {"debug": logs_pb2.LOG_LEVEL_DEBUG, "info": logs_pb2.LOG_LEVEL_INFO, "warning": logs_pb2.LOG_LEVEL_WARNING,
          "error": logs_pb2.LOG_LEVEL_ERROR, "critical": logs_pb2.LOG_LEVEL_CRITICAL}
LEVEL_NAMES = {number: name for name, number in LEVELS.items()} | {logs_pb2.LOG_LEVEL_UNSPECIFIED: "debug"}
_STATUS = re.compile(r"[1-5](xx|[0-9]{2})")
_TOKEN = re.compile(r"[A-Za-z0-9_=-]{0,1000}")


@dataclasses.dataclass(frozen=True)
class LogFilter:
    """What the page shows: every field empty means every request."""

    level: str = ""  # the lowest app log level a request must have logged at
    status: str = ""  # "404", or a class such as "5xx"
    path: str = ""  # text the request's path (and query) must contain

    @classmethod
    def parse(cls, query: MultiMapping[str]) -> LogFilter:
        """The filter a page's query string asks for.

        Raises:
            BadRequestError: a field is not one the page offers; the message names it.
        """
        level, status, path = (query.get(name, "").strip() for name in ("level", "status", "path"))
        if level and level not in LEVELS:
            raise BadRequestError(f"level: expected one of {', '.join(LEVELS)}, got {level[:50]!r}")
        if status and not _STATUS.fullmatch(status.lower()):
            raise BadRequestError(f"status: expected a status such as 404 or a class such as 5xx, got {status[:50]!r}")
        if len(path) > MAX_PATH:
            raise BadRequestError(f"path: at most {MAX_PATH} characters")
        return cls(level=level, status=status.lower(), path=path)

    def matches(self, record: logs_pb2.RequestLog) -> bool:
        """Whether ``record`` passes the status and path conditions (the level is the service's)."""
        if self.status:
            shown = str(record.status)
            if self.status.endswith("xx") and shown[:1] != self.status[0] or \
                    not self.status.endswith("xx") and shown != self.status:
                return False
        return not self.path or self.path in record.resource


@dataclasses.dataclass(frozen=True)
class Row:
    """One request as the page shows it."""

    record: logs_pb2.RequestLog
    time: str
    latency_ms: int
    lines: tuple[tuple[str, str, str], ...]  # (time, level, message)
    level: str  # the highest level the app logged at, or ""


def _time(ts: datetime.datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def row(record: logs_pb2.RequestLog) -> Row:
    """``record`` laid out for the page."""
    lines = tuple((_time(line.time.ToDatetime(datetime.UTC)), LEVEL_NAMES.get(line.level, "debug"),
                   line.message) for line in record.app_logs)
    top = max((line.level for line in record.app_logs), default=None)
    return Row(record=record, time=_time(record.start_time.ToDatetime(datetime.UTC)),
               latency_ms=record.latency.ToMilliseconds(), lines=lines,
               level=LEVEL_NAMES.get(top, "") if top is not None else "")


async def fetch(services: Services, flt: LogFilter, token: str) -> tuple[list[Row], str, int]:
    """A page of requests matching ``flt`` from ``token`` on: the rows, the next page's token, records read."""
    request = logs_pb2.QueryRequest(app_id=services.app_id, include_app_logs=True, page_size=SERVICE_PAGE,
                                    page_token=token)
    if flt.level:
        request.minimum_log_level = LEVELS[flt.level]
    rows: list[Row] = []
    read = 0
    while True:
        answer = await services.call("logs", "Query", request)
        read += len(answer.logs)
        rows.extend(row(r) for r in answer.logs if flt.matches(r))
        if not answer.next_page_token or len(rows) >= PAGE or read >= MAX_SCAN:
            return rows, answer.next_page_token, read
        request.page_token = answer.next_page_token


def routes(services: Services) -> list[web.RouteDef]:
    """The page's routes."""

    async def logs_page(request: web.Request) -> web.StreamResponse:
        flt = LogFilter.parse(request.query)
        token = request.query.get("page", "")
        if not _TOKEN.fullmatch(token):
            raise BadRequestError("page: not a page of this list (reload it from the first page)")
        rows, next_token, read = await fetch(services, flt, token)
        return render.page(request, "logs.html", fragment="logs_rows.html", rows=rows, filter=flt,
                           levels=list(LEVELS), next_token=next_token, read=read, first=not token)

    return [web.get("/logs", logs_page)]
