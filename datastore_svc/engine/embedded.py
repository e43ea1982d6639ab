"""The embedded engine: one SQLite file per data directory.

For ``kiln dev`` and small installs. SQLite in WAL mode with ``synchronous=FULL``
makes an acknowledged write durable across a crash of any process. Every
commit — entities, group versions, index rows and metadata together — is one
SQLite transaction, so it is all-or-nothing even across entity groups, and a
reader never sees an entity without its index rows. SQLite calls block, so
they run on one worker thread (SQLite serialises writers anyway). BLOBs compare
with memcmp, which is the order the index encodings are designed for.

Eventual consistency (``kiln dev --datastore-consistency``): with a consistency below 1, a commit's writes to an
entity group are durably queued (table ``pending``) instead of applied, as App Engine's datastore and Google's
stub (``PseudoRandomHRConsistencyPolicy``) do: gets, ancestor queries and transactions of the group apply its
queue first (they are strongly consistent), while each index scan of a non-ancestor query applies each group's
queued commits, oldest first, each with that probability, stopping at the first it leaves queued. The default
(1) applies every commit at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import pathlib
import random
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from datastore_svc.engine.base import GroupCommit, Ref, RowsOf, StoredIndex, counter_after
from datastore_svc.index import IndexDef, IndexRow, metadata_of
from kiln.errors import ConcurrentTransactionError, ConfigError

T = TypeVar("T")

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
  app TEXT NOT NULL, ns TEXT NOT NULL, grp BLOB NOT NULL, path BLOB NOT NULL,
  kind TEXT NOT NULL, entity BLOB NOT NULL,
  PRIMARY KEY (app, ns, grp, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
  app TEXT NOT NULL, ns TEXT NOT NULL, grp BLOB NOT NULL, version INTEGER NOT NULL,
  PRIMARY KEY (app, ns, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS index_rows (
  app TEXT NOT NULL, ns TEXT NOT NULL, idx BLOB NOT NULL, row BLOB NOT NULL, path BLOB NOT NULL,
  PRIMARY KEY (app, ns, idx, row)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metadata (
  app TEXT NOT NULL, ns TEXT NOT NULL, kind TEXT NOT NULL, prop TEXT NOT NULL, rep BLOB NOT NULL,
  PRIMARY KEY (app, ns, kind, prop, rep)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS index_defs (
  app TEXT NOT NULL, id BLOB NOT NULL, definition TEXT NOT NULL, state TEXT NOT NULL, error TEXT NOT NULL,
  PRIMARY KEY (app, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS id_counters (
  app TEXT PRIMARY KEY, next_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
  app TEXT NOT NULL, ns TEXT NOT NULL, grp BLOB NOT NULL, seq INTEGER NOT NULL, job TEXT NOT NULL,
  PRIMARY KEY (app, ns, grp, seq)
) WITHOUT ROWID;
"""


@dataclasses.dataclass(frozen=True, slots=True)
class _Applied:
    """One write as applied to the tables: the entity (``None`` deletes) and its index rows' change."""

    path: bytes
    kind: str
    entity: bytes | None
    drop: tuple[IndexRow, ...]
    add: tuple[IndexRow, ...]

    def to_json(self) -> dict[str, object]:
        return {"path": self.path.hex(), "kind": self.kind, "entity": None if self.entity is None
                else self.entity.hex(), "drop": [[r.idx.hex(), r.row.hex()] for r in self.drop],
                "add": [[r.idx.hex(), r.row.hex()] for r in self.add]}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> _Applied:
        path = bytes.fromhex(str(d["path"]))
        entity = d["entity"]

        def rows(key: str) -> tuple[IndexRow, ...]:
            pairs = d[key]
            assert isinstance(pairs, list)
            return tuple(IndexRow(bytes.fromhex(i), bytes.fromhex(r), path) for i, r in pairs)
        return cls(path, str(d["kind"]), None if entity is None else bytes.fromhex(str(entity)), rows("drop"),
                   rows("add"))


class EmbeddedEngine:
    """SQLite-backed :class:`~datastore_svc.engine.base.Engine`."""

    features = frozenset({"atomic_cross_group"})

    def __init__(self, path: pathlib.Path, *, consistency: float = 1.0, seed: int = 0) -> None:
        if not 0 <= consistency <= 1:
            raise ConfigError(f"consistency: must be between 0 and 1, got {consistency}")
        self._path = path
        self._consistency = consistency
        self._random = random.Random(seed)  # seeded: the same writes show the same staleness on every run
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Create the file and schema if needed."""
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path.parent.chmod(0o700)  # the database and its -wal/-shm hold every app's data

        def _open() -> None:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            existing = db.execute("SELECT count(*) FROM sqlite_master WHERE name='entities'").fetchone()[0]
            if existing and version != SCHEMA_VERSION:
                db.close()
                raise ConfigError(f"{self._path} was written by an older kiln (schema {version}, need "
                                  f"{SCHEMA_VERSION}); start with --clear-datastore or remove the file")
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
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

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # One connection on one thread: a read is a single statement or a
        # transaction of them, so it sees one consistent snapshot.
        return await self._run(self._tx, fn)

    async def get(self, app: str, namespace: str, refs: list[Ref], *, strong: bool = False,
                  eventual: bool = False) -> list[bytes | None]:
        def _get(db: sqlite3.Connection) -> list[bytes | None]:
            if not eventual:
                for group in dict.fromkeys(ref.group for ref in refs):
                    self._catch_up(db, app, namespace, group)
            out: list[bytes | None] = []
            for ref in refs:
                row = db.execute("SELECT entity FROM entities WHERE app=? AND ns=? AND grp=? AND path=?",
                                 (app, namespace, ref.group, ref.path)).fetchone()
                out.append(bytes(row[0]) if row else None)
            return out
        return await self._read(_get)

    async def group_versions(self, app: str, namespace: str, groups: list[bytes]) -> list[int]:
        def _versions(db: sqlite3.Connection) -> list[int]:
            return [_version(db, app, namespace, g) for g in groups]
        return await self._read(_versions)

    async def commit(self, app: str, namespace: str, commits: list[GroupCommit], rows_of: RowsOf, *,
                     atomic: bool) -> None:
        # SQLite commits every group in one transaction, which is at least as
        # strong as what ``atomic=False`` asks for.
        def _commit(db: sqlite3.Connection) -> None:
            for gc in commits:
                version = _version(db, app, namespace, gc.group)
                if gc.expected_version is not None and version != gc.expected_version:
                    raise ConcurrentTransactionError(
                        "the transaction conflicted with a concurrent commit to the same entity group; retry it")
                if not gc.writes:
                    continue  # a group the transaction only read: checked, not changed
                applied = self._changes(db, app, namespace, gc, rows_of)
                if self._consistency < 1:
                    (seq,) = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM pending WHERE app=? AND ns=? AND "
                                        "grp=?", (app, namespace, gc.group)).fetchone()
                    db.execute("INSERT INTO pending (app, ns, grp, seq, job) VALUES (?,?,?,?,?)",
                               (app, namespace, gc.group, seq, json.dumps([a.to_json() for a in applied])))
                else:
                    _apply(db, app, namespace, gc.group, applied)
                db.execute("INSERT OR REPLACE INTO groups (app, ns, grp, version) VALUES (?,?,?,?)",
                           (app, namespace, gc.group, version + 1))
            if commits:
                db.execute("INSERT OR IGNORE INTO metadata (app, ns, kind, prop, rep) VALUES (?,?,'','',x'')",
                           (app, namespace))
        await self._run(self._tx, _commit)

    def _changes(self, db: sqlite3.Connection, app: str, namespace: str, gc: GroupCommit,
                 rows_of: RowsOf) -> list[_Applied]:
        """Each write of ``gc`` as a change from the group's latest state (its queued commits included)."""
        latest: dict[bytes, bytes | None] = {}
        out = []
        for w in gc.writes:
            if w.path in latest:
                old = latest[w.path]
            else:
                old = self._latest(db, app, namespace, gc.group, w.path)
            old_rows = rows_of(old) if old is not None else frozenset()
            out.append(_Applied(w.path, w.kind, w.entity, tuple(old_rows - w.rows), tuple(w.rows - old_rows)))
            latest[w.path] = w.entity
        return out

    def _latest(self, db: sqlite3.Connection, app: str, namespace: str, group: bytes, path: bytes) -> bytes | None:
        if self._consistency < 1:
            jobs = db.execute("SELECT job FROM pending WHERE app=? AND ns=? AND grp=? ORDER BY seq DESC",
                              (app, namespace, group)).fetchall()
            for (job,) in jobs:
                for write in reversed(json.loads(job)):
                    if write["path"] == path.hex():
                        return None if write["entity"] is None else bytes.fromhex(write["entity"])
        row = db.execute("SELECT entity FROM entities WHERE app=? AND ns=? AND grp=? AND path=?",
                         (app, namespace, group, path)).fetchone()
        return bytes(row[0]) if row else None

    def _catch_up(self, db: sqlite3.Connection, app: str, namespace: str, group: bytes) -> None:
        """Apply the group's queued commits (a get, an ancestor query or a transaction reads the group)."""
        if self._consistency < 1:
            self._apply_queued(db, app, namespace, group, lambda: True)

    def _apply_queued(self, db: sqlite3.Connection, app: str, namespace: str, group: bytes,
                      should_apply: Callable[[], bool]) -> None:
        jobs = db.execute("SELECT seq, job FROM pending WHERE app=? AND ns=? AND grp=? ORDER BY seq",
                          (app, namespace, group)).fetchall()
        for seq, job in jobs:
            if not should_apply():
                return
            _apply(db, app, namespace, group, [_Applied.from_json(w) for w in json.loads(job)])
            db.execute("DELETE FROM pending WHERE app=? AND ns=? AND grp=? AND seq=?", (app, namespace, group, seq))

    def _groom(self, db: sqlite3.Connection, app: str, namespace: str) -> None:
        """Before a non-ancestor query's scan: each queued commit applies with the consistency's probability."""
        if self._consistency >= 1:
            return
        groups = [bytes(g) for (g,) in db.execute("SELECT DISTINCT grp FROM pending WHERE app=? AND ns=? ORDER BY "
                                                  "grp", (app, namespace)).fetchall()]
        for group in groups:
            self._apply_queued(db, app, namespace, group, lambda: self._random.random() < self._consistency)

    async def scan_group(self, app: str, namespace: str, group: bytes, lo: bytes, hi: bytes,
                         limit: int) -> list[tuple[bytes, str, bytes]]:
        def _scan(db: sqlite3.Connection) -> list[tuple[bytes, str, bytes]]:
            self._catch_up(db, app, namespace, group)
            cur = db.execute("SELECT path, kind, entity FROM entities WHERE app=? AND ns=? AND grp=? "
                             "AND path >= ? AND path < ? ORDER BY path LIMIT ?",
                             (app, namespace, group, lo, hi, limit))
            return [(bytes(p), k, bytes(e)) for p, k, e in cur.fetchall()]
        return await self._read(_scan)

    async def scan_index(self, app: str, namespace: str, idx: bytes, lo: bytes, hi: bytes,
                         limit: int) -> list[tuple[bytes, bytes]]:
        def _scan(db: sqlite3.Connection) -> list[tuple[bytes, bytes]]:
            self._groom(db, app, namespace)
            cur = db.execute("SELECT row, path FROM index_rows WHERE app=? AND ns=? AND idx=? "
                             "AND row >= ? AND row < ? ORDER BY row LIMIT ?", (app, namespace, idx, lo, hi, limit))
            return [(bytes(r), bytes(p)) for r, p in cur.fetchall()]
        return await self._read(_scan)

    async def add_index_rows(self, app: str, namespace: str, rows: list[IndexRow]) -> None:
        def _add(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO index_rows (app, ns, idx, row, path) VALUES (?,?,?,?,?)",
                           [(app, namespace, r.idx, r.row, r.path) for r in rows])
        await self._run(self._tx, _add)

    async def delete_index_rows(self, app: str, namespace: str, rows: list[IndexRow]) -> None:
        def _delete(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM index_rows WHERE app=? AND ns=? AND idx=? AND row=?",
                           [(app, namespace, r.idx, r.row) for r in rows])
        await self._run(self._tx, _delete)

    async def namespaces(self, app: str) -> list[str]:
        def _ns(db: sqlite3.Connection) -> list[str]:
            return [r[0] for r in db.execute("SELECT ns FROM metadata WHERE app=? AND kind='' ORDER BY ns", (app,))]
        return await self._read(_ns)

    async def metadata(self, app: str, namespace: str) -> list[tuple[str, str, bytes]]:
        def _meta(db: sqlite3.Connection) -> list[tuple[str, str, bytes]]:
            cur = db.execute("SELECT kind, prop, rep FROM metadata WHERE app=? AND ns=? AND kind != '' "
                             "ORDER BY kind, prop, rep", (app, namespace))
            return [(k, p, bytes(r)) for k, p, r in cur.fetchall()]
        return await self._read(_meta)

    async def index_defs(self, app: str) -> list[StoredIndex]:
        def _defs(db: sqlite3.Connection) -> list[StoredIndex]:
            cur = db.execute("SELECT definition, state, error FROM index_defs WHERE app=? ORDER BY id", (app,))
            return [StoredIndex(IndexDef.from_json(d), s, e) for d, s, e in cur.fetchall()]
        return await self._read(_defs)

    async def put_index_def(self, app: str, index: StoredIndex) -> None:
        def _put(db: sqlite3.Connection) -> None:
            # An index is built from applied entities: everything queued is applied first.
            for ns, group in db.execute("SELECT DISTINCT ns, grp FROM pending WHERE app=?", (app,)).fetchall():
                self._catch_up(db, app, ns, bytes(group))
            db.execute("INSERT OR REPLACE INTO index_defs (app, id, definition, state, error) VALUES (?,?,?,?,?)",
                       (app, index.defn.id, index.defn.to_json(), index.state, index.error))
        await self._run(self._tx, _put)

    async def delete_index_def(self, app: str, defn: IndexDef) -> None:
        def _delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM index_defs WHERE app=? AND id=?", (app, defn.id))
        await self._run(self._tx, _delete)

    async def allocate_ids(self, app: str, count: int) -> int:
        def _alloc(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT next_id FROM id_counters WHERE app=?", (app,)).fetchone()
            start = int(row[0]) if row else 1
            db.execute("INSERT OR REPLACE INTO id_counters (app, next_id) VALUES (?, ?)",
                       (app, counter_after(start, count)))
            return start
        return await self._run(self._tx, _alloc)

    async def reserve_ids_up_to(self, app: str, max_id: int) -> None:
        def _reserve(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT next_id FROM id_counters WHERE app=?", (app,)).fetchone()
            if not row or row[0] <= max_id:
                db.execute("INSERT OR REPLACE INTO id_counters (app, next_id) VALUES (?, ?)", (app, max_id + 1))
        await self._run(self._tx, _reserve)

    async def maintain(self) -> None:
        """Nothing to do: SQLite transactions leave no interrupted commits."""
        await asyncio.Event().wait()

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await self._run(_close)
        self._pool.shutdown(wait=True)


def _apply(db: sqlite3.Connection, app: str, namespace: str, group: bytes, writes: list[_Applied]) -> None:
    """Write entities and their index rows' changes, and the metadata they show."""
    new_meta: set[tuple[str, str, bytes]] = set()
    for w in writes:
        key = (app, namespace, group, w.path)
        db.executemany("DELETE FROM index_rows WHERE app=? AND ns=? AND idx=? AND row=?",
                       [(app, namespace, r.idx, r.row) for r in w.drop])
        db.executemany("INSERT OR REPLACE INTO index_rows (app, ns, idx, row, path) VALUES (?,?,?,?,?)",
                       [(app, namespace, r.idx, r.row, r.path) for r in w.add])
        new_meta |= metadata_of(w.add)
        if w.entity is None:
            db.execute("DELETE FROM entities WHERE app=? AND ns=? AND grp=? AND path=?", key)
        else:
            db.execute("INSERT OR REPLACE INTO entities (app, ns, grp, path, kind, entity) "
                       "VALUES (?,?,?,?,?,?)", (*key, w.kind, w.entity))
    db.executemany("INSERT OR IGNORE INTO metadata (app, ns, kind, prop, rep) VALUES (?,?,?,?,?)",
                   [(app, namespace, *m) for m in new_meta])


def _version(db: sqlite3.Connection, app: str, namespace: str, group: bytes) -> int:
    row = db.execute("SELECT version FROM groups WHERE app=? AND ns=? AND grp=?", (app, namespace, group)).fetchone()
    return int(row[0]) if row else 0


async def create(data_dir: pathlib.Path, *, consistency: float = 1.0) -> EmbeddedEngine:
    """Open (creating if needed) the embedded store under ``data_dir``."""
    engine = EmbeddedEngine(data_dir / "datastore.sqlite3", consistency=consistency)
    await engine.open()
    return engine
