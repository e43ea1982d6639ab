"""Where apps' keys are kept: SQLite under the data directory (one replica; Cassandra in
:mod:`identity_svc.cassandra_store`).

One row per app and rotation period: the key's name, its sealed private key and its certificate. A period's key
is written once: :meth:`KeyStore.add` keeps the row that was there first and returns it, so whoever made a key
at the same time signs with the same one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
import sqlite3
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from identity_svc.keys import StoredKey

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_keys (
  app TEXT NOT NULL, period_start INTEGER NOT NULL, key_name TEXT NOT NULL, sealed BLOB NOT NULL,
  certificate TEXT NOT NULL,
  PRIMARY KEY (app, period_start)
) WITHOUT ROWID;
"""
_COLUMNS = "app, period_start, key_name, sealed, certificate"


class KeyStore(Protocol):
    """What the identity service needs of a store."""

    async def open(self) -> None: ...

    async def add(self, key: StoredKey) -> StoredKey:
        """Store ``key`` unless its app's period has one already; the period's key (``key`` or the earlier)."""
        ...

    async def find(self, app: str, period_start: int) -> StoredKey | None: ...

    async def since(self, app: str, period_start: int) -> list[StoredKey]:
        """The app's keys of periods starting at ``period_start`` or later, newest first."""
        ...

    async def close(self) -> None: ...


def _row(row: Any) -> StoredKey:
    return StoredKey(str(row[0]), int(row[1]), str(row[2]), bytes(row[3]), str(row[4]))


class SqliteKeyStore:
    """SQLite-backed key storage; one worker thread does all the SQL."""

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="identity-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("SqliteKeyStore.open() was not called")
        return self._db

    async def open(self) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path.parent.chmod(0o700)  # every app's (sealed) keys

        def _open() -> None:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._db = db
        await self._run(_open)

    def _find(self, app: str, period_start: int) -> StoredKey | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM identity_keys WHERE app = ? AND period_start = ?",
                                   (app, period_start)).fetchone()
        return None if row is None else _row(row)

    async def add(self, key: StoredKey) -> StoredKey:
        def _add() -> StoredKey:
            db = self._conn()
            with db:
                db.execute(f"INSERT OR IGNORE INTO identity_keys ({_COLUMNS}) VALUES (?,?,?,?,?)",
                           (key.app, key.period_start, key.key_name, key.sealed, key.certificate_pem))
            found = self._find(key.app, key.period_start)
            assert found is not None  # written above, or before
            return found
        return await self._run(_add)

    async def find(self, app: str, period_start: int) -> StoredKey | None:
        return await self._run(self._find, app, period_start)

    async def since(self, app: str, period_start: int) -> list[StoredKey]:
        def _since() -> list[StoredKey]:
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM identity_keys WHERE app = ? AND period_start >= ? "
                                        "ORDER BY period_start DESC", (app, period_start))
            return [_row(r) for r in rows]
        return await self._run(_since)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
        await self._run(_close)
        self._pool.shutdown(wait=True)
