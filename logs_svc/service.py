"""``kiln.pb.logs.v1.LogsService``: an app reads its own request logs."""

from __future__ import annotations

import base64
from typing import Any

import grpc

from kiln_platform import grpcserver
from kiln.errors import BadRequestError, PermissionDeniedError
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from logs_svc.store import Store

DEFAULT_PAGE = 20
MAX_PAGE = 1000


class LogsService(logs_pb2_grpc.LogsServiceServicer):
    """Queries by version, time range, minimum level and request ids, newest first, paged."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def Query(self, request: logs_pb2.QueryRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> logs_pb2.QueryResponse:
        app = grpcserver.caller_app()
        if request.app_id and request.app_id != app:
            raise PermissionDeniedError("an app may read only its own logs")
        if not 0 <= request.page_size <= MAX_PAGE:
            raise BadRequestError(f"page_size: must be between 0 and {MAX_PAGE}, got {request.page_size}")
        limit = request.page_size or DEFAULT_PAGE
        after = _parse_token(request.page_token) if request.page_token else None
        records = await self._store.query(
            app, versions=list(request.version_ids),
            start_us=request.start_time.ToMicroseconds() if request.HasField("start_time") else None,
            end_us=request.end_time.ToMicroseconds() if request.HasField("end_time") else None,
            min_level=request.minimum_log_level if request.HasField("minimum_log_level") else None,
            request_ids=list(request.request_ids), after=after, limit=limit + 1)
        out = logs_pb2.QueryResponse()
        for record in records[:limit]:
            if not request.include_app_logs:
                record.ClearField("app_logs")
            out.logs.append(record)
        if len(records) > limit:
            last = records[limit - 1]
            out.next_page_token = _make_token(last.start_time.ToMicroseconds(), last.request_id)
        return out


def _make_token(start_us: int, request_id: str) -> str:
    return base64.urlsafe_b64encode(f"{start_us}:{request_id}".encode()).decode()


def _parse_token(token: str) -> tuple[int, str]:
    try:
        start, _, request_id = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        return int(start), request_id
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("page_token: not a token returned by this service") from None
