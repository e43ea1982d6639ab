"""The Request logs page: an app's requests, newest first, each opening to the lines the app logged.

logs_svc filters by version, start-time range, request id and minimum app log level itself; status and path are
filtered here, over the service's pages (at most :data:`MAX_SCAN` records read per page shown), because its
query has no such conditions.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import time

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
_VERSION = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # App Engine's version ids (deploy/control/manifest)
_MICROS = re.compile(r"[0-9]{1,19}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
FIELDS = ("level", "status", "path", "version", "request_id", "since", "until")


@dataclasses.dataclass(frozen=True)
class LogFilter:
    """What the page shows: every field empty means every request."""

    level: str = ""  # the lowest app log level a request must have logged at
    status: str = ""  # "404", or a class such as "5xx"
    path: str = ""  # text the request's path (and query) must contain
    version: str = ""  # the version that served it
    request_id: str = ""  # one request (the others are then moot, as in logs_svc)
    since: str = ""  # started at or after, "YYYY-MM-DDTHH:MM[:SS]" UTC (an HTML datetime-local value)
    until: str = ""  # started before

    @classmethod
    def parse(cls, query: MultiMapping[str]) -> LogFilter:
        """The filter a page's query string asks for.

        Raises:
            BadRequestError: a field is not one the page offers; the message names it.
        """
        level, status, path, version, request_id, since, until = (query.get(name, "").strip() for name in FIELDS)
        if level and level not in LEVELS:
            raise BadRequestError(f"level: expected one of {', '.join(LEVELS)}, got {level[:50]!r}")
        if status and not _STATUS.fullmatch(status.lower()):
            raise BadRequestError(f"status: expected a status such as 404 or a class such as 5xx, got {status[:50]!r}")
        if len(path) > MAX_PATH:
            raise BadRequestError(f"path: at most {MAX_PATH} characters")
        if version and not _VERSION.fullmatch(version):
            raise BadRequestError(f"version: not a version id (lower-case letters, digits and -), got {version[:70]!r}")
        if request_id and not _REQUEST_ID.fullmatch(request_id):
            raise BadRequestError(f"request_id: not a request id, got {request_id[:130]!r}")
        flt = cls(level=level, status=status.lower(), path=path, version=version, request_id=request_id,
                  since=since, until=until)
        start, end = flt.start(), flt.end()
        if start is not None and end is not None and end <= start:
            raise BadRequestError("until: must be after since")
        return flt

    @staticmethod
    def _instant(name: str, text: str) -> datetime.datetime | None:
        if not text:
            return None
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise BadRequestError(f"{name}: expected a time such as 2026-12-07T14:30 (UTC), got {text[:50]!r}") from None
        if moment.tzinfo is not None:
            raise BadRequestError(f"{name}: a time in UTC, without an offset, got {text[:50]!r}")
        return moment.replace(tzinfo=datetime.UTC)

    def start(self) -> datetime.datetime | None:
        """The earliest start time shown (UTC), if any.

        Raises:
            BadRequestError: ``since`` is not a time.
        """
        return self._instant("since", self.since)

    def end(self) -> datetime.datetime | None:
        """The start time before which requests are shown (UTC), if any.

        Raises:
            BadRequestError: ``until`` is not a time.
        """
        return self._instant("until", self.until)

    def params(self, **extra: str) -> dict[str, str]:
        """The filter as a query string's fields (empty ones left out), with ``extra`` (e.g. the page)."""
        fields = {name: getattr(self, name) for name in FIELDS} | extra
        return {name: value for name, value in fields.items() if value}

    def narrows(self) -> bool:
        """Whether any field is set."""
        return any(getattr(self, name) for name in FIELDS)

    def apply(self, request: logs_pb2.QueryRequest) -> None:
        """Put the conditions logs_svc filters on itself into ``request``."""
        if self.level:
            request.minimum_log_level = LEVELS[self.level]
        if self.version:
            request.version_ids.append(self.version)
        if self.request_id:
            request.request_ids.append(self.request_id)
        start, end = self.start(), self.end()
        if start is not None:
            request.start_time.FromDatetime(start)
        if end is not None:
            request.end_time.FromDatetime(end)

    def matches(self, record: logs_pb2.RequestLog) -> bool:
        """Whether ``record`` passes the status and path conditions (the others are the service's)."""
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


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What one page's reads of logs_svc gave."""

    rows: list[Row]  # the requests matching the filter, newest first
    next_token: str  # the next page's token ("" at the end)
    read: int  # records read
    newest_us: int | None  # the start time (µs) of the newest record read, matching or not


async def fetch(services: Services, flt: LogFilter, token: str, *, after_us: int | None = None) -> Fetched:
    """A page of requests matching ``flt`` from ``token`` on (only those that started after ``after_us``, when
    given: the live tail's)."""
    request = logs_pb2.QueryRequest(app_id=services.app_id, include_app_logs=True, page_size=SERVICE_PAGE,
                                    page_token=token)
    flt.apply(request)
    if after_us is not None and (not request.HasField("start_time") or request.start_time.ToMicroseconds() <= after_us):
        request.start_time.FromMicroseconds(after_us + 1)
    rows: list[Row] = []
    read = 0
    newest: int | None = None
    while True:
        answer = await services.call("logs", "Query", request)
        read += len(answer.logs)
        if newest is None and answer.logs:
            newest = answer.logs[0].start_time.ToMicroseconds()
        rows.extend(row(r) for r in answer.logs if flt.matches(r))
        if not answer.next_page_token or len(rows) >= PAGE or read >= MAX_SCAN:
            return Fetched(rows, answer.next_page_token, read, newest)
        request.page_token = answer.next_page_token


def _after(text: str) -> int:
    if not _MICROS.fullmatch(text):
        raise BadRequestError("after: not a time of this list (reload the page)")
    return int(text)


def routes(services: Services) -> list[web.RouteDef]:
    """The page's routes."""

    async def logs_page(request: web.Request) -> web.StreamResponse:
        flt = LogFilter.parse(request.query)
        token = request.query.get("page", "")
        if not _TOKEN.fullmatch(token):
            raise BadRequestError("page: not a page of this list (reload it from the first page)")
        live = request.query.get("live", "") == "1"
        got = await fetch(services, flt, token)
        after = got.newest_us if got.newest_us is not None else time.time_ns() // 1000
        return render.page(request, "logs.html", fragment="logs_rows.html", rows=got.rows, filter=flt,
                           levels=list(LEVELS), next_token=got.next_token, read=got.read, first=not token,
                           live=live, after=str(after))

    async def tail(request: web.Request) -> web.StreamResponse:
        """The live tail's poll: the requests that started after ``after``, to go on top of the list."""
        flt = LogFilter.parse(request.query)
        after = _after(request.query.get("after", ""))
        got = await fetch(services, flt, "", after_us=after)
        newest = max(after, got.newest_us or after)
        return render.page(request, "logs_tail.html", filter=flt, after=str(newest), tail_rows=got.rows,
                           tail_more=bool(got.next_token))

    return [web.get("/logs", logs_page), web.get("/logs/tail", tail)]
