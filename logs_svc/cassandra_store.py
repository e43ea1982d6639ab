"""Request logs on Cassandra, so that any number of logs_svc replicas share them.

Two tables:

- ``request_logs`` — partitioned by app and UTC day, clustered newest first
  (start time, then request id): App Engine's log reader pages backwards in
  time, so a query walks the day partitions from the newest and reads each in
  clustering order, the page token being the last (start, request id);
- ``request_logs_by_id`` — the same record under (app, request id), for
  queries by request id.

Writes are idempotent (same primary keys), so a record JetStream redelivers
is stored once. Retention is Cassandra's TTL, set on every row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from kiln_platform import cassandra
from kiln_platform.config import StorageConfig
from kiln.pb.logs.v1 import logs_pb2

log = logging.getLogger(__name__)

DAY_US = 86_400 * 1_000_000
# Writes of one batch in flight at once (each record is two rows).
_WRITES_IN_FLIGHT = 64


def _tables(ks: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {ks}.request_logs (app text, day int, start_us bigint, request_id text, "
        "version text, max_level int, record blob, PRIMARY KEY ((app, day), start_us, request_id)) "
        "WITH CLUSTERING ORDER BY (start_us DESC, request_id DESC)",
        f"CREATE TABLE IF NOT EXISTS {ks}.request_logs_by_id (app text, request_id text, start_us bigint, "
        "version text, max_level int, record blob, PRIMARY KEY ((app, request_id)))",
    ]


class CassandraLogStore:
    """The same operations as :class:`logs_svc.store.LogStore`, on Cassandra (see module docstring)."""

    def __init__(self, settings: StorageConfig, retention_days: int) -> None:
        self._settings = settings
        self._ttl = retention_days * 86_400
        self._ks: cassandra.Keyspace | None = None
        self._stmts: dict[str, Any] = {}

    async def open(self) -> None:
        self._ks = await cassandra.open_keyspace(self._settings, _tables)
        ks, prepare = self._ks.name, self._ks.prepare
        self._stmts = {
            "add": prepare(f"INSERT INTO {ks}.request_logs (app, day, start_us, request_id, version, max_level, "
                           "record) VALUES (?,?,?,?,?,?,?) USING TTL ?"),
            "add_id": prepare(f"INSERT INTO {ks}.request_logs_by_id (app, request_id, start_us, version, "
                              "max_level, record) VALUES (?,?,?,?,?,?) USING TTL ?"),
            "by_id": prepare(f"SELECT start_us, version, max_level, record FROM {ks}.request_logs_by_id "
                             "WHERE app = ? AND request_id = ?"),
            "day": prepare(f"SELECT start_us, request_id, version, max_level, record FROM {ks}.request_logs "
                           "WHERE app = ? AND day = ? AND start_us < ? LIMIT ?"),
            "day_after": prepare(f"SELECT start_us, request_id, version, max_level, record FROM {ks}.request_logs "
                                 "WHERE app = ? AND day = ? AND (start_us, request_id) < (?, ?) LIMIT ?"),
        }
        log.info("request logs on cassandra: keyspace %s", ks)

    @property
    def _keyspace(self) -> cassandra.Keyspace:
        if self._ks is None:
            raise RuntimeError("CassandraLogStore.open() was not called")
        return self._ks

    async def add(self, records: Sequence[logs_pb2.RequestLog]) -> None:
        ks, slots = self._keyspace, asyncio.Semaphore(_WRITES_IN_FLIGHT)

        async def write(stmt: str, params: tuple[Any, ...]) -> None:
            async with slots:
                await ks.execute(self._stmts[stmt], params)

        writes = []
        for r in records:
            start = r.start_time.ToMicroseconds()
            level = max((line.level for line in r.app_logs), default=0)
            raw = r.SerializeToString()
            writes.append(write("add", (r.app_id, start // DAY_US, start, r.request_id, r.version_id, level, raw,
                                        self._ttl)))
            writes.append(write("add_id", (r.app_id, r.request_id, start, r.version_id, level, raw, self._ttl)))
        # Every write is tried before an error is raised: the batch comes back whole, and writing twice is harmless.
        failed = [r for r in await asyncio.gather(*writes, return_exceptions=True) if isinstance(r, BaseException)]
        if failed:
            raise failed[0]

    async def query(self, app: str, *, versions: Sequence[str], start_us: int | None, end_us: int | None,
                    min_level: int | None, request_ids: Sequence[str], after: tuple[int, str] | None,
                    limit: int) -> list[logs_pb2.RequestLog]:
        """Newest first, as App Engine's log reader returned them."""
        def wanted(start: int, request_id: str, version: str, level: int) -> bool:
            return ((not versions or version in versions) and (start_us is None or start >= start_us)
                    and (end_us is None or start < end_us) and (min_level is None or level >= min_level)
                    and (after is None or (start, request_id) < after))

        if request_ids:
            found = []
            for request_id in dict.fromkeys(request_ids):
                for start, version, level, raw in await self._keyspace.execute(
                        self._stmts["by_id"], (app, request_id)):
                    if wanted(start, request_id, version, level):
                        found.append((start, request_id, raw))
            found.sort(reverse=True)
            return [logs_pb2.RequestLog.FromString(raw) for _, _, raw in found[:limit]]
        newest = min(end_us if end_us is not None else 2**62, (after[0] + 1) if after else 2**62,
                     int(time.time() * 1_000_000) + DAY_US)
        oldest = start_us if start_us is not None else int(time.time() * 1_000_000) - self._ttl * 1_000_000
        out: list[logs_pb2.RequestLog] = []
        cursor = after
        for day in range(newest // DAY_US, oldest // DAY_US - 1, -1):
            while len(out) < limit:
                batch = max(limit - len(out), 50)
                if cursor is not None and cursor[0] // DAY_US == day:
                    rows = await self._keyspace.execute(self._stmts["day_after"],
                                                        (app, day, cursor[0], cursor[1], batch))
                else:
                    rows = await self._keyspace.execute(self._stmts["day"], (app, day, newest, batch))
                for start, request_id, version, level, raw in rows:
                    if wanted(start, request_id, version, level) and len(out) < limit:
                        out.append(logs_pb2.RequestLog.FromString(raw))
                if len(rows) < batch:
                    break  # the day is exhausted
                last = rows[-1]
                cursor = (last[0], last[1])
                if start_us is not None and last[0] < start_us:
                    break
            if len(out) >= limit:
                break
        return out

    async def expire(self, before_us: int) -> int:
        """Nothing to do: rows carry a TTL of the retention period."""
        return 0

    async def close(self) -> None:
        if self._ks is not None:
            await self._ks.close()
