"""The embedded engine: one SQLite file per data directory.

For ``kiln dev`` and small installs. SQLite in WAL mode with ``synchronous=FULL``
makes an acknowledged write durable across a crash of any process; each call
is one SQLite transaction, so a batch put is all-or-nothing. SQLite calls are
blocking, so they run on one worker thread (SQLite serialises writers anyway).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from datastore_svc.engine.base import Ref, Row
from datastore_svc.keys import PREFIX_END

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
  app TEXT NOT NULL, ns TEXT NOT NULL, grp BLOB NOT NULL, path BLOB NOT NULL,
  kind TEXT NOT NULL, entity BLOB NOT NULL,
  PRIMARY KEY (app, ns, grp, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS id_counters (
  app TEXT PRIMARY KEY, next_id INTEGER NOT NULL
) WITHOUT ROWID;
"""


class EmbeddedEngine:
    """SQLite-backed :class:`~datastore_svc.engine.base.Engine`."""

    features = frozenset({"ancestor_query", "atomic_batch"})

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Create the file and schema if needed."""
        self._path.parent.mkdir(parents=True, exist_ok=True)

        def _open() -> None:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self._db = db

        await self._run(_open)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._db is not None, "engine not opened"
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def get(self, app: str, namespace: str, refs: list[Ref]) -> list[bytes | None]:
        def _get(db: sqlite3.Connection) -> list[bytes | None]:
            out: list[bytes | None] = []
            for ref in refs:
                row = db.execute("SELECT entity FROM entities WHERE app=? AND ns=? AND grp=? AND path=?",
                                 (app, namespace, ref.group, ref.path)).fetchone()
                out.append(row[0] if row else None)
            return out
        return await self._run(self._tx, _get)

    async def put(self, app: str, namespace: str, rows: list[Row]) -> None:
        def _put(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO entities (app, ns, grp, path, kind, entity) VALUES (?,?,?,?,?,?)",
                [(app, namespace, r.group, r.path, r.kind, r.entity) for r in rows])
        await self._run(self._tx, _put)

    async def delete(self, app: str, namespace: str, refs: list[Ref]) -> None:
        def _delete(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM entities WHERE app=? AND ns=? AND grp=? AND path=?",
                           [(app, namespace, r.group, r.path) for r in refs])
        await self._run(self._tx, _delete)

    async def allocate_ids(self, app: str, count: int) -> int:
        def _alloc(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT next_id FROM id_counters WHERE app=?", (app,)).fetchone()
            start = row[0] if row else 1
            db.execute("INSERT OR REPLACE INTO id_counters (app, next_id) VALUES (?, ?)", (app, start + count))
            return int(start)
        return await self._run(self._tx, _alloc)

    async def reserve_ids_up_to(self, app: str, max_id: int) -> None:
        def _reserve(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT next_id FROM id_counters WHERE app=?", (app,)).fetchone()
            if not row or row[0] <= max_id:
                db.execute("INSERT OR REPLACE INTO id_counters (app, next_id) VALUES (?, ?)", (app, max_id + 1))
        await self._run(self._tx, _reserve)

    async def scan_group(self, app: str, namespace: str, group: bytes, prefix: bytes,
                         start_after: bytes | None, limit: int) -> list[tuple[bytes, str, bytes]]:
        low, inclusive = (start_after, False) if start_after and start_after >= prefix else (prefix, True)

        def _scan(db: sqlite3.Connection) -> list[tuple[bytes, str, bytes]]:
            op = ">=" if inclusive else ">"
            cur = db.execute(
                f"SELECT path, kind, entity FROM entities WHERE app=? AND ns=? AND grp=? AND path {op} ? "
                "AND path < ? ORDER BY path LIMIT ?",
                (app, namespace, group, low, prefix + PREFIX_END, limit))
            return [(bytes(p), k, bytes(e)) for p, k, e in cur.fetchall()]
        return await self._run(self._tx, _scan)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await self._run(_close)
        self._pool.shutdown(wait=True)


async def create(data_dir: pathlib.Path) -> EmbeddedEngine:
    """Open (creating if needed) the embedded store under ``data_dir``."""
    engine = EmbeddedEngine(data_dir / "datastore.sqlite3")
    await engine.open()
    return engine
