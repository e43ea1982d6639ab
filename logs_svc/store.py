"""Where request logs are kept: SQLite under the data directory, indexed for App Engine's log queries.

One row per request: the app, version, start time (microseconds), request id,
the highest level among its app log lines, and the serialized
:class:`~kiln.pb.logs.v1.logs_pb2.RequestLog`. Writes are idempotent (the
request id is the key), so a record redelivered by JetStream is stored once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from kiln.pb.logs.v1 import logs_pb2

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS request_logs (
  app TEXT NOT NULL, version TEXT NOT NULL, start_us INTEGER NOT NULL, request_id TEXT NOT NULL,
  max_level INTEGER NOT NULL, record BLOB NOT NULL,
  PRIMARY KEY (app, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS request_logs_by_time ON request_logs (app, start_us DESC, request_id DESC);
"""


class Store(Protocol):
    """What the logs service needs of a store (SQLite here, Cassandra in :mod:`logs_svc.cassandra_store`)."""

    async def open(self) -> None: ...

    async def add(self, records: Sequence[logs_pb2.RequestLog]) -> None: ...

    async def query(self, app: str, *, versions: Sequence[str], start_us: int | None, end_us: int | None,
                    min_level: int | None, request_ids: Sequence[str], after: tuple[int, str] | None,
                    limit: int) -> list[logs_pb2.RequestLog]: ...

    async def expire(self, before_us: int) -> int: ...

    async def close(self) -> None: ...


class LogStore:
    """SQLite-backed request-log storage; one worker thread does all the SQL."""

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="logs-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path.parent.chmod(0o700)  # every app's request logs

        def _open() -> None:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._db = db
        await self._run(_open)

    async def add(self, records: Sequence[logs_pb2.RequestLog]) -> None:
        """Store records (a redelivered one replaces itself)."""
        rows = [(r.app_id, r.version_id, r.start_time.ToMicroseconds(), r.request_id,
                 max((line.level for line in r.app_logs), default=0), r.SerializeToString()) for r in records]

        def _add() -> None:
            assert self._db is not None
            # One transaction for the batch: the connection is in autocommit mode (isolation_level=None), where
            # ``with db`` opens none, and each row was its own commit and WAL fsync (about 200 us of CPU a row).
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO request_logs VALUES (?,?,?,?,?,?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        await self._run(_add)

    async def query(self, app: str, *, versions: Sequence[str], start_us: int | None, end_us: int | None,
                    min_level: int | None, request_ids: Sequence[str], after: tuple[int, str] | None,
                    limit: int) -> list[logs_pb2.RequestLog]:
        """Newest first, as App Engine's log reader returned them."""
        sql = ["SELECT record FROM request_logs WHERE app = ?"]
        args: list[Any] = [app]
        if versions:
            sql.append(f"AND version IN ({','.join('?' * len(versions))})")
            args += list(versions)
        if request_ids:
            sql.append(f"AND request_id IN ({','.join('?' * len(request_ids))})")
            args += list(request_ids)
        if start_us is not None:
            sql.append("AND start_us >= ?")
            args.append(start_us)
        if end_us is not None:
            sql.append("AND start_us < ?")
            args.append(end_us)
        if min_level is not None:
            sql.append("AND max_level >= ?")
            args.append(min_level)
        if after is not None:
            sql.append("AND (start_us < ? OR (start_us = ? AND request_id < ?))")
            args += [after[0], after[0], after[1]]
        sql.append("ORDER BY start_us DESC, request_id DESC LIMIT ?")
        args.append(limit)

        def _query() -> list[bytes]:
            assert self._db is not None
            return [bytes(r[0]) for r in self._db.execute(" ".join(sql), args)]
        return [logs_pb2.RequestLog.FromString(raw) for raw in await self._run(_query)]

    async def expire(self, before_us: int) -> int:
        """Delete records that started before ``before_us``."""
        def _expire() -> int:
            assert self._db is not None
            with self._db:
                return self._db.execute("DELETE FROM request_logs WHERE start_us < ?", (before_us,)).rowcount
        return await self._run(_expire)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
        await self._run(_close)
        self._pool.shutdown(wait=True)
