"""The Cassandra engine: entities and indexes in Apache Cassandra (production).

Schema (``shared/CASSANDRA.md`` has the research behind it):

- ``entities``: one partition per entity group ``(app, ns, grp)``, rows
  clustered by encoded key path, so a get reads one row and an ancestor query
  is one clustering slice. Static columns hold the group's state: ``gv`` (its
  version, +1 per commit), ``commit_ts`` (microseconds, strictly increasing per
  group), ``pending`` (the index changes of the last commit, so anyone can
  redo them) and ``lock_txid`` (a cross-group transaction holding the group).
  This table is written **only** with lightweight transactions (Paxos): a
  group's commit is one conditional batch ``IF gv = <read version> AND
  lock_txid = null``, atomic and isolated, which is also the optimistic
  concurrency check of transactions.
- ``index_rows``: every index (kind, property, composite) as clustering-ordered
  rows in partitions ``(app, ns, idx, shard)``; queries are slices, never
  ``ALLOW FILTERING``. Written only with plain writes ``USING TIMESTAMP
  commit_ts`` after the group's commit, so replaying a commit's index changes
  (by the next writer of the group, which redoes ``pending``) can never undo a
  later commit's. The rows live in other partitions than the group, so they
  cannot join its conditional batch; they go in unlogged batches (not atomic,
  which replaying needs not be). A commit redoes its group's previous
  ``pending`` before its own batch replaces it, unless this process wrote
  those rows itself. Each index is spread over ``index_shards`` partitions by a
  hash of the entity's key (fixed when the keyspace is created, kept in
  ``settings``), so no index partition holds more than its share of a kind;
  a scan reads each shard about its share of the rows and merges them in order.
- ``commit_hints``: before its conditional batch, a commit writes a hint
  ``(bucket of 10 s, timeuuid) -> group``; after its index rows it marks the
  hint done (an upsert with the table's TTL: no tombstone). Rows expire after
  6 h under time-window compaction. The sweeper reads each bucket from a
  checkpoint kept in ``settings`` (a restarted process resumes there, at most an
  hour back), redoes ``pending`` of the groups of hints not done, and marks a
  hint done once its group shows a commit at or after the hint.
- ``xg_txns``: cross-group transaction records, the commit point of a
  two-phase commit (LWT only, expiring after a day).
- ``metadata``, ``index_defs``, ``id_counters`` (LWT only) as named.

Consistency: group reads for transactions and commits are SERIAL (they finish
any in-flight Paxos round), except a commit's first read, LOCAL_QUORUM (its
conditional batch re-checks ``gv``); gets outside transactions and index reads are
LOCAL_QUORUM; LWT commits use LOCAL_QUORUM. A get of several keys reads them with
``IN`` reads. Requests are not merged into shared statements: at 32 in flight
one event-loop turn held about 2.5 of them, and merging cost more CPU per
request than it saved (measured). The driver is imported only when this engine
is chosen; its exceptions become :class:`~kiln.errors.UnavailableError`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import itertools
import logging
import math
import random
import struct
import time
import uuid
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from datastore_svc.engine.base import GroupCommit, Ref, RowsOf, StoredIndex, Write, counter_after
from datastore_svc.index import IndexDef, IndexRow, metadata_of
from kiln_platform import cassandra as kiln_cassandra
from kiln_platform.config import StorageConfig
from kiln.errors import ConcurrentTransactionError, UnavailableError

log = logging.getLogger(__name__)

_SEQ = "sequential"
_RETRIES = 50
# A cross-group transaction older than App Engine's 60 s limit that never
# reached its commit point is abandoned by whoever finds its locks.
_XG_ABANDON_SECONDS = 60.0
_ADD, _DEL = 1, 2
# Commit hints: a partition per ten seconds, each row TTL'd; the sweeper reads each bucket once it is old
# enough (and the open one's older hints), then moves a checkpoint past it. A restarted process resumes
# from the checkpoint, never further back than the horizon.
_HINT_BUCKET_SECONDS = 10
_HINT_HORIZON_SECONDS = 3600
_HINT_TTL_SECONDS = 6 * 3600
_SWEEP_SECONDS = 5.0
# A commit normally finishes its index writes well within this; the sweeper leaves younger hints of
# commits that may still be running alone (hints from before this process started are handled at once).
_SWEEP_GRACE_SECONDS = 5.0
# A hint whose group shows no commit since it was written is kept until no commit can still be running
# (the driver's request timeout is 30 s); then its commit never happened.
_HINT_GIVE_UP_SECONDS = 120.0
_SWEEP_CHECKPOINT = "hint_sweep_checkpoint"
# Groups whose last commit's index changes this process applied (the next commit need not redo them).
_APPLIED_CACHE = 65536
# Index rows written per unlogged batch: Cassandra warns above 10 partitions or 5 KiB per batch.
_INDEX_BATCH_ROWS = 10
_INDEX_BATCH_BYTES = 4096
#: Keys per ``IN`` read of a multi-key get (the read names each key's group and path; Cassandra looks up
#: groups x paths, so the lists stay short).
GET_IN_SIZE = 25
_HDR = struct.Struct(">BIII")


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> Any:
    return collections.namedtuple("Row", names, rename=True)


def _row_factory(colnames: list[str], rows: list[Any]) -> list[Any]:
    """Rows as named tuples, with one class per column list (the driver's default builds one per result)."""
    make = _row_class(tuple(colnames))._make
    return [make(r) for r in rows]


def _tables(ks: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {ks}.entities (
              app text, ns text, grp blob, path blob, kind text, entity blob, version bigint,
              gv bigint static, commit_ts bigint static, pending blob static, lock_txid uuid static,
              PRIMARY KEY ((app, ns, grp), path))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.index_rows (
              app text, ns text, idx blob, shard smallint, row blob, path blob,
              PRIMARY KEY ((app, ns, idx, shard), row))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.xg_txns (
              app text, txid uuid, status text, staged blob, created timestamp,
              PRIMARY KEY ((app, txid))) WITH default_time_to_live = 86400""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.metadata (
              app text, ns text, kind text, prop text, rep blob,
              PRIMARY KEY ((app, ns), kind, prop, rep))""",
        f"CREATE TABLE IF NOT EXISTS {ks}.namespaces (app text, ns text, PRIMARY KEY (app, ns))",
        f"""CREATE TABLE IF NOT EXISTS {ks}.index_defs (
              app text, id blob, definition text, state text, error text, PRIMARY KEY (app, id))""",
        # Written once per commit and marked done (a TTL'd cell, no tombstone); rows expire whole, and
        # time-window compaction drops expired SSTables without reading them.
        f"""CREATE TABLE IF NOT EXISTS {ks}.commit_hints (
              bucket bigint, id timeuuid, app text, ns text, grp blob, done boolean,
              PRIMARY KEY (bucket, id)) WITH default_time_to_live = {_HINT_TTL_SECONDS}
              AND gc_grace_seconds = 3600
              AND compaction = {{'class': 'TimeWindowCompactionStrategy',
                                 'compaction_window_unit': 'HOURS', 'compaction_window_size': 1}}""",
        f"CREATE TABLE IF NOT EXISTS {ks}.settings (name text PRIMARY KEY, value text)",
        f"""CREATE TABLE IF NOT EXISTS {ks}.id_counters (
              app text, space text, next_id bigint, op_id uuid,
              PRIMARY KEY ((app, space)))""",
    ]


def _uuid1_ticks(u: uuid.UUID) -> int:
    """The Unix time in a version-1 UUID, in 100-ns ticks."""
    return int(u.time - 0x01B21DD213814000)


def _uuid1_seconds(u: uuid.UUID) -> float:
    """The Unix time in a version-1 UUID."""
    return _uuid1_ticks(u) / 1e7


def encode_changes(changes: Iterable[tuple[int, IndexRow]]) -> bytes:
    """Serialize index changes (``_ADD``/``_DEL`` and the row) for the ``pending`` record."""
    out = bytearray()
    for op, r in changes:
        out += _HDR.pack(op, len(r.idx), len(r.row), len(r.path)) + r.idx + r.row + r.path
    return bytes(out)


def decode_changes(raw: bytes) -> list[tuple[int, IndexRow]]:
    """Invert :func:`encode_changes`."""
    out = []
    pos = 0
    while pos < len(raw):
        op, a, b, c = _HDR.unpack_from(raw, pos)
        pos += _HDR.size
        out.append((op, IndexRow(raw[pos:pos + a], raw[pos + a:pos + a + b], raw[pos + a + b:pos + a + b + c])))
        pos += a + b + c
    return out


class CassandraEngine:
    """Cassandra-backed :class:`~datastore_svc.engine.base.Engine` (see module docstring)."""

    features = frozenset({"atomic_cross_group"})

    def __init__(self, keyspace: kiln_cassandra.Keyspace, index_shards: int) -> None:
        self._keyspace = keyspace
        self._batch: Callable[[], Any] = lambda: keyspace.batch(consistency="LOCAL_QUORUM", serial="SERIAL")
        self._known_meta: set[tuple[str, str, tuple[str, str, bytes]]] = set()
        self._known_ns: set[tuple[str, str]] = set()
        # (app, ns, group) -> commit_ts of the group's last commit whose index changes this process wrote.
        self._applied: collections.OrderedDict[tuple[str, str, bytes], int] = collections.OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        # app -> the id counter's value this process last saw (tried first by the next allocation), and the lock
        # that keeps one allocation per app in flight here (concurrent ones would only refuse each other's LWT).
        self._counters: dict[str, int] = {}
        self._counter_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._swept: int | None = None  # the last hint bucket fully handled
        self._started = time.time()
        self._shards = index_shards
        ks = keyspace.name

        def prep(cql: str, consistency: kiln_cassandra.Consistency = "LOCAL_QUORUM") -> Any:
            return keyspace.prepare(cql, consistency=consistency, serial="SERIAL")

        pk = "app=? AND ns=? AND grp=?"
        self._get = prep(f"SELECT entity, lock_txid FROM {ks}.entities WHERE {pk} AND path=?")
        self._get_in = prep(f"SELECT path, entity, lock_txid FROM {ks}.entities WHERE app=? AND ns=? AND grp IN ? "
                            "AND path IN ?")
        self._get_serial = prep(f"SELECT entity, lock_txid FROM {ks}.entities WHERE {pk} AND path=?", "SERIAL")
        state = f"SELECT gv, commit_ts, pending, lock_txid FROM {ks}.entities WHERE {pk} LIMIT 1"
        self._state = prep(state, "SERIAL")
        # Commits read the group at LOCAL_QUORUM: their conditional batch
        # re-checks gv with Paxos, so a stale read only costs a retry.
        self._state_commit = prep(state)
        self._old_with_state = prep(f"SELECT path, entity, gv, commit_ts, pending, lock_txid FROM {ks}.entities "
                                    f"WHERE {pk} AND path IN ?")
        self._old = prep(f"SELECT path, entity FROM {ks}.entities WHERE {pk} AND path IN ?")
        self._bump = prep(f"UPDATE {ks}.entities SET gv=?, commit_ts=?, pending=? WHERE {pk} IF gv=? AND lock_txid=null")
        self._bump_new = prep(f"UPDATE {ks}.entities SET gv=?, commit_ts=?, pending=? WHERE {pk} IF gv=null AND lock_txid=null")
        self._put = prep(f"INSERT INTO {ks}.entities (app, ns, grp, path, kind, entity, version) VALUES (?,?,?,?,?,?,?)")
        self._del = prep(f"DELETE FROM {ks}.entities WHERE {pk} AND path=?")
        self._lock = prep(f"UPDATE {ks}.entities SET lock_txid=? WHERE {pk} IF gv=? AND lock_txid=null")
        self._lock_new = prep(f"UPDATE {ks}.entities SET lock_txid=? WHERE {pk} IF gv=null AND lock_txid=null")
        self._unlock = prep(f"UPDATE {ks}.entities SET lock_txid=null WHERE {pk} IF lock_txid=?")
        self._apply_xg = prep(f"UPDATE {ks}.entities SET gv=?, commit_ts=?, pending=?, lock_txid=null WHERE {pk} "
                              "IF lock_txid=?")
        self._scan = prep(f"SELECT path, kind, entity FROM {ks}.entities WHERE {pk} AND path >= ? AND path < ? "
                          "LIMIT ?")
        self._irow_add = prep(f"INSERT INTO {ks}.index_rows (app, ns, idx, shard, row, path) VALUES (?,?,?,?,?,?) "
                              "USING TIMESTAMP ?")
        self._irow_del = prep(f"DELETE FROM {ks}.index_rows USING TIMESTAMP ? WHERE app=? AND ns=? AND idx=? "
                              "AND shard=? AND row=?")
        self._irow_drop = prep(f"DELETE FROM {ks}.index_rows WHERE app=? AND ns=? AND idx=? AND shard=? AND row=?")
        self._iscan = prep(f"SELECT row, path FROM {ks}.index_rows WHERE app=? AND ns=? AND idx=? AND shard=? "
                           "AND row >= ? AND row < ? LIMIT ?")
        self._hint_add = prep(f"INSERT INTO {ks}.commit_hints (bucket, id, app, ns, grp) VALUES (?,?,?,?,?)")
        self._hint_done = prep(f"UPDATE {ks}.commit_hints SET done=true WHERE bucket=? AND id=?")
        self._hint_read = prep(f"SELECT id, app, ns, grp, done FROM {ks}.commit_hints WHERE bucket=?")
        self._checkpoint_read = prep(f"SELECT value FROM {ks}.settings WHERE name='{_SWEEP_CHECKPOINT}'")
        self._checkpoint_write = prep(f"INSERT INTO {ks}.settings (name, value) VALUES ('{_SWEEP_CHECKPOINT}', ?)")
        self._xg_new = prep(f"INSERT INTO {ks}.xg_txns (app, txid, status, created) VALUES (?,?,'preparing',?) "
                            "IF NOT EXISTS")
        self._xg_commit = prep(f"UPDATE {ks}.xg_txns SET status='committed', staged=? WHERE app=? AND txid=? "
                               "IF status='preparing'")
        self._xg_abort = prep(f"UPDATE {ks}.xg_txns SET status='aborted' WHERE app=? AND txid=? "
                              "IF status='preparing'")
        self._xg_read = prep(f"SELECT status, staged, created FROM {ks}.xg_txns WHERE app=? AND txid=?", "SERIAL")
        self._meta_add = prep(f"INSERT INTO {ks}.metadata (app, ns, kind, prop, rep) VALUES (?,?,?,?,?)")
        self._meta_read = prep(f"SELECT kind, prop, rep FROM {ks}.metadata WHERE app=? AND ns=?")
        self._ns_add = prep(f"INSERT INTO {ks}.namespaces (app, ns) VALUES (?,?)")
        self._ns_read = prep(f"SELECT ns FROM {ks}.namespaces WHERE app=?")
        self._def_put = prep(f"INSERT INTO {ks}.index_defs (app, id, definition, state, error) VALUES (?,?,?,?,?)")
        self._def_del = prep(f"DELETE FROM {ks}.index_defs WHERE app=? AND id=?")
        self._def_read = prep(f"SELECT definition, state, error FROM {ks}.index_defs WHERE app=?")
        self._ctr_read = prep(f"SELECT next_id, op_id FROM {ks}.id_counters WHERE app=? AND space=?", "SERIAL")
        self._ctr_init = prep(f"INSERT INTO {ks}.id_counters (app, space, next_id, op_id) VALUES (?,?,?,?) "
                              "IF NOT EXISTS")
        self._ctr_cas = prep(f"UPDATE {ks}.id_counters SET next_id=?, op_id=? WHERE app=? AND space=? IF next_id=?")

    async def _exec(self, stmt: Any, params: Any = None) -> list[Any]:
        """Run a statement; returns its rows (one page: callers bound their reads with LIMIT)."""
        return await self._keyspace.execute(stmt, params)

    # ------------------------------------------------------------------ reads

    async def get(self, app: str, namespace: str, refs: list[Ref], *, strong: bool = False,
                  eventual: bool = False) -> list[bytes | None]:
        stmt = self._get_serial if strong else self._get

        async def one(ref: Ref) -> bytes | None:
            row = _first(await self._exec(stmt, (app, namespace, ref.group, ref.path)))
            if row is not None and row.lock_txid is not None:
                # A cross-group commit holds the group: finish or undo it, then read again.
                await self._resolve_lock(app, namespace, ref.group, row.lock_txid)
                row = _first(await self._exec(stmt, (app, namespace, ref.group, ref.path)))
            return bytes(row.entity) if row is not None and row.entity is not None else None

        if len(refs) == 1:
            return [await one(refs[0])]
        if strong:  # SERIAL reads name one partition each
            return list(await asyncio.gather(*(one(r) for r in refs)))
        chunks = [refs[i:i + GET_IN_SIZE] for i in range(0, len(refs), GET_IN_SIZE)]
        found: dict[bytes, Any] = {}
        for rows in await asyncio.gather(*(self._get_chunk(app, namespace, chunk) for chunk in chunks)):
            found.update(rows)
        out: list[bytes | None] = []
        for ref in refs:
            row = found.get(ref.path)
            if row is not None and row.lock_txid is not None:
                out.append(await one(ref))
            else:
                out.append(bytes(row.entity) if row is not None and row.entity is not None else None)
        return out

    async def _get_chunk(self, app: str, namespace: str, refs: list[Ref]) -> dict[bytes, Any]:
        """One read for several keys: every row is in exactly one of the named groups, so groups x paths
        finds each key once and nothing else."""
        groups = sorted({r.group for r in refs})
        paths = sorted({r.path for r in refs})
        rows = await self._exec(self._get_in, (app, namespace, groups, paths))
        return {bytes(r.path): r for r in rows}

    async def group_versions(self, app: str, namespace: str, groups: list[bytes]) -> list[int]:
        async def one(group: bytes) -> int:
            state = await self._group_state(app, namespace, group)
            return int(state.gv) if state is not None and state.gv is not None else 0
        return list(await asyncio.gather(*(one(g) for g in groups)))

    async def _group_state(self, app: str, namespace: str, group: bytes, *, serial: bool = True) -> Any:
        """The group's static state, after resolving a cross-group lock left on it."""
        for _ in range(_RETRIES):
            state = _first(await self._exec(self._state if serial else self._state_commit, (app, namespace, group)))
            if state is None or state.lock_txid is None:
                return state
            if not await self._resolve_lock(app, namespace, group, state.lock_txid):
                await asyncio.sleep(0.01 + random.random() * 0.05)
        raise UnavailableError("cassandra: an entity group stayed locked by a cross-group transaction")

    async def scan_group(self, app: str, namespace: str, group: bytes, lo: bytes, hi: bytes,
                         limit: int) -> list[tuple[bytes, str, bytes]]:
        await self._group_state(app, namespace, group, serial=False)  # ancestor queries see finished commits only
        rows = await self._exec(self._scan, (app, namespace, group, lo, hi, limit))
        return [(bytes(r.path), r.kind, bytes(r.entity)) for r in rows if r.path is not None]

    async def scan_index(self, app: str, namespace: str, idx: bytes, lo: bytes, hi: bytes,
                         limit: int) -> list[tuple[bytes, bytes]]:
        """The first ``limit`` rows over every shard, merged.

        Rows are spread over the shards by a hash, so each shard holds about ``limit / shards`` of the first
        ``limit``: each is read that far plus a margin (three standard deviations), not ``limit`` deep.
        Rows up to the lowest last row of the shards cut short are certainly the smallest; only if fewer
        than ``limit`` are, the cut shards are read on from where they stopped.
        """
        if self._shards == 1:
            rows = await self._exec(self._iscan, (app, namespace, idx, 0, lo, hi, limit))
            return [(bytes(r.row), bytes(r.path)) for r in rows]
        share = limit / self._shards
        first = min(limit, int(share + 3 * math.sqrt(share * (1 - 1 / self._shards))) + 2)
        slices = [[(bytes(r.row), bytes(r.path)) for r in rows] for rows in await asyncio.gather(
            *(self._exec(self._iscan, (app, namespace, idx, shard, lo, hi, first)) for shard in range(self._shards)))]
        cut = [shard for shard, rows in enumerate(slices) if len(rows) == first]
        if cut and first < limit:
            bound = min(slices[shard][-1][0] for shard in cut)
            if sum(1 for rows in slices for row, _ in rows if row <= bound) < limit:
                more = await asyncio.gather(*(self._exec(self._iscan, (app, namespace, idx, shard,
                                                                      slices[shard][-1][0] + b"\x00", hi,
                                                                      limit - first)) for shard in cut))
                for shard, rows in zip(cut, more):
                    slices[shard] += [(bytes(r.row), bytes(r.path)) for r in rows]
            else:
                slices = [[r for r in rows if r[0] <= bound] for rows in slices]
        return list(itertools.islice(heapq.merge(*slices), limit))

    # ------------------------------------------------------------------ commits

    async def commit(self, app: str, namespace: str, commits: list[GroupCommit], rows_of: RowsOf, *,
                     atomic: bool) -> None:
        if atomic and len(commits) > 1:
            await self._commit_xg(app, namespace, commits, rows_of)
        else:
            await asyncio.gather(*(self._commit_group(app, namespace, gc, rows_of) for gc in commits))
        await self._note_namespace(app, namespace)

    async def _commit_group(self, app: str, namespace: str, gc: GroupCommit, rows_of: RowsOf) -> None:
        key = (app, namespace, gc.group)
        hint: tuple[int, uuid.UUID] | None = None
        old: dict[bytes, bytes] | None
        for attempt in range(_RETRIES):
            # The recovery hint must be stored before the conditional batch, so it goes with the first read.
            hint_write: list[Awaitable[Any]] = []
            if hint is None:
                hint = self._new_hint()
                hint_write.append(self._exec(self._hint_add, (*hint, app, namespace, gc.group)))
            if attempt == 0 and gc.fresh and gc.expected_version is None:
                # A group whose root id this call allocated has no state and no entities: no read. Its
                # conditional batch still checks ``gv = null``; if the guess was wrong, it is not applied and
                # the next attempt reads the group as usual.
                await asyncio.gather(*hint_write)
                state, old = None, {}
            else:
                state, old = await self._read_for_commit(app, namespace, gc, key, serial=attempt > 0,
                                                         also=hint_write)
            gv = state.gv if state is not None else None
            if gc.expected_version is not None and (gv or 0) != gc.expected_version:
                self._mark_done(hint)
                raise ConcurrentTransactionError(
                    "the transaction conflicted with a concurrent commit to the same entity group; retry it")
            if state is not None and state.pending and self._applied.get(key) != state.commit_ts:
                # The group's last commit may not have finished its index writes: redo them first, as this
                # commit's record replaces its record.
                await self._apply_changes(app, namespace, decode_changes(state.pending), state.commit_ts,
                                          group=gc.group)
            if not gc.writes:
                self._mark_done(hint)
                return
            if old is None:
                old = await self._old_versions(app, namespace, gc)
            changes = self._changes(gc, old, rows_of)
            commit_ts = max(int(time.time() * 1_000_000), (state.commit_ts or 0) + 1 if state else 0)
            batch = self._batch()
            record = encode_changes(changes)
            if gv is None:
                batch.add(self._bump_new, (1, commit_ts, record, app, namespace, gc.group))
            else:
                batch.add(self._bump, (gv + 1, commit_ts, record, app, namespace, gc.group, gv))
            self._add_writes(batch, app, namespace, gc, commit_ts)
            if _first(await self._exec(batch))[0]:  # [applied]
                await self._apply_changes(app, namespace, changes, commit_ts, group=gc.group)
                self._mark_done(hint)
                return
            if gc.expected_version is not None:
                self._mark_done(hint)
                raise ConcurrentTransactionError(
                    "the transaction conflicted with a concurrent commit to the same entity group; retry it")
            await asyncio.sleep(random.random() * 0.01 * (attempt + 1))
        raise UnavailableError("cassandra: too much contention on one entity group (App Engine allows about one "
                               "write per second per group)")

    async def _read_for_commit(self, app: str, namespace: str, gc: GroupCommit, key: tuple[str, str, bytes], *,
                               serial: bool, also: list[Awaitable[Any]]) -> tuple[Any, dict[bytes, bytes] | None]:
        """The group's state and, when known here, the stored versions of the entities ``gc`` writes.

        Old versions must be read no earlier than the state they are checked against (the batch's ``IF gv``),
        so they are either read in one statement with the state (one partition read is isolated from a
        conditional batch) or after it. The single read serves a group this process wrote before, when it
        finds a written entity (the static columns come with its rows); a group never written (no state)
        holds no entities, so a new group's put reads nothing else. ``None`` for old: read them next.
        """
        if not serial and gc.writes and key in self._applied:
            rows, *_ = await asyncio.gather(
                self._exec(self._old_with_state, (app, namespace, gc.group, [w.path for w in gc.writes])), *also)
            also = []
            if rows and rows[0].lock_txid is None:
                return rows[0], {bytes(r.path): bytes(r.entity) for r in rows if r.entity is not None}
        state, *_ = await asyncio.gather(self._group_state(app, namespace, gc.group, serial=serial), *also)
        return state, ({} if state is None else None)

    async def _old_versions(self, app: str, namespace: str, gc: GroupCommit) -> dict[bytes, bytes]:
        """The stored entities ``gc`` overwrites or deletes."""
        paths = [w.path for w in gc.writes]
        return {bytes(r.path): bytes(r.entity) for r in await self._exec(self._old, (app, namespace, gc.group, paths))
                if r.entity is not None}

    @staticmethod
    def _changes(gc: GroupCommit, old: dict[bytes, bytes], rows_of: RowsOf) -> list[tuple[int, IndexRow]]:
        """Index rows to add and delete: new rows against the stored entities' rows."""
        changes: list[tuple[int, IndexRow]] = []
        for w in gc.writes:
            before = rows_of(old[w.path]) if w.path in old else frozenset()
            changes += [(_DEL, r) for r in before - w.rows] + [(_ADD, r) for r in w.rows - before]
        return changes

    def _add_writes(self, batch: Any, app: str, namespace: str, gc: GroupCommit, commit_ts: int) -> None:
        for w in gc.writes:
            if w.entity is None:
                batch.add(self._del, (app, namespace, gc.group, w.path))
            else:
                batch.add(self._put, (app, namespace, gc.group, w.path, w.kind, w.entity, commit_ts))

    async def _apply_changes(self, app: str, namespace: str, changes: list[tuple[int, IndexRow]],
                             commit_ts: int, *, group: bytes | None = None) -> None:
        """Write a commit's index changes; idempotent, and never undoes a later commit (timestamps).

        The rows live in other partitions than the group, so they cannot join its conditional batch; they go
        in unlogged batches (one message each, not atomic, which replaying ``pending`` does not need). With
        ``group``, remember that this commit's changes are written, so the group's next commit skips them.
        """
        stmts: list[Awaitable[Any]] = []
        batch: Any = None
        size = 0
        for op, r in changes:
            if batch is None or len(batch) >= _INDEX_BATCH_ROWS or size >= _INDEX_BATCH_BYTES:
                batch, size = self._keyspace.batch(consistency="LOCAL_QUORUM", serial="SERIAL"), 0
                stmts.append(self._exec(batch))
            if op == _ADD:
                batch.add(self._irow_add, (app, namespace, r.idx, self._shard(r), r.row, r.path, commit_ts))
            else:
                batch.add(self._irow_del, (commit_ts, app, namespace, r.idx, self._shard(r), r.row))
            size += len(r.idx) + len(r.row) + len(r.path)
        await _bounded(stmts)
        await self._note_metadata(app, namespace, metadata_of(r for op, r in changes if op == _ADD))
        if group is not None:
            key = (app, namespace, group)
            if self._applied.get(key, -1) < commit_ts:
                self._applied[key] = commit_ts
                self._applied.move_to_end(key)
                if len(self._applied) > _APPLIED_CACHE:
                    self._applied.popitem(last=False)

    async def _note_metadata(self, app: str, namespace: str, facts: set[tuple[str, str, bytes]]) -> None:
        new = [f for f in facts if (app, namespace, f) not in self._known_meta]
        await asyncio.gather(*(self._exec(self._meta_add, (app, namespace, *f)) for f in new))
        self._known_meta.update((app, namespace, f) for f in new)

    async def _note_namespace(self, app: str, namespace: str) -> None:
        if (app, namespace) not in self._known_ns:
            await self._exec(self._ns_add, (app, namespace))
            self._known_ns.add((app, namespace))

    # ------------------------------------------------------------------ recovery

    @staticmethod
    def _new_hint() -> tuple[int, uuid.UUID]:
        return int(time.time() // _HINT_BUCKET_SECONDS), uuid.uuid1()

    async def _hint(self, app: str, namespace: str, group: bytes) -> tuple[int, uuid.UUID]:
        """Record that a commit to ``group`` is starting (plain write; the sweeper re-checks the group)."""
        hint = self._new_hint()
        await self._exec(self._hint_add, (*hint, app, namespace, group))
        return hint

    def _mark_done(self, hint: tuple[int, uuid.UUID] | None) -> None:
        """Mark a commit's hint done, off the response path (an upsert: no tombstone). If it is lost, the
        sweeper checks the group instead."""
        if hint is not None:
            self._later(self._exec(self._hint_done, hint))

    def _later(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except UnavailableError as exc:
                log.warning("background write failed (the sweeper covers it): %s", exc)
        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for the writes started off the response path."""
        while self._background:
            await asyncio.gather(*list(self._background))

    async def sweep_once(self, *, older_than: float = _SWEEP_GRACE_SECONDS) -> int:
        """Finish what crashed commits left: resolve locks and redo index changes of hinted groups.

        Reads the hint buckets from the last checkpoint (at most the horizon back) up to the one holding
        ``now - older_than``, and handles every hint not marked done that is older than that or than this
        process: it redoes the group's last commit's index changes (SERIAL read; idempotent), and marks the
        hint done once the group shows a commit at or after the hint (that commit, or a later one that
        redid it first) or the hint is too old for its commit to be still running. The checkpoint moves
        past each bucket that is closed and fully handled. Returns how many hints were handled.
        """
        now = time.time()
        cutoff = now - older_than
        last = int(max(cutoff, min(now, self._started)) // _HINT_BUCKET_SECONDS)
        if self._swept is None:
            row = _first(await self._exec(self._checkpoint_read))
            self._swept = int(row.value) if row is not None else -1
        first = max(self._swept + 1, int((now - _HINT_HORIZON_SECONDS) // _HINT_BUCKET_SECONDS))
        handled = 0
        closed_through = self._swept
        settled = True
        for bucket in range(first, last + 1):
            ok = True
            for row in await self._exec(self._hint_read, (bucket,)):
                if row.done:
                    continue
                written = _uuid1_seconds(row.id)
                if written >= cutoff and written >= self._started:
                    ok = False
                    continue
                try:
                    state = await self._finish_group(row.app, row.ns, bytes(row.grp))
                except UnavailableError as exc:
                    log.warning("sweeper: group still busy, will retry: %s", exc)
                    ok = False
                    continue
                committed_since = state is not None and (state.commit_ts or 0) * 10 + 10 >= _uuid1_ticks(row.id)
                if not committed_since and now - written < _HINT_GIVE_UP_SECONDS:
                    ok = False  # its commit may still be on its way: look again next time
                    continue
                await self._exec(self._hint_done, (bucket, row.id))
                handled += 1
            closed = (bucket + 1) * _HINT_BUCKET_SECONDS <= cutoff
            settled = settled and ok and closed
            if settled:
                closed_through = bucket
        if closed_through != self._swept:
            self._swept = closed_through
            await self._exec(self._checkpoint_write, (str(closed_through),))
        return handled

    async def _finish_group(self, app: str, namespace: str, group: bytes) -> Any:
        """Redo the index changes of the group's last commit unless this process wrote them; its state."""
        state = await self._group_state(app, namespace, group)
        if state is not None and state.pending and self._applied.get((app, namespace, group)) != state.commit_ts:
            await self._apply_changes(app, namespace, decode_changes(state.pending), state.commit_ts, group=group)
        return state

    async def maintain(self) -> None:
        """Run the sweeper now (a restarted process finishes what it left) and every few seconds."""
        while True:
            try:
                handled = await self.sweep_once()
            except UnavailableError as exc:
                log.warning("sweeper: %s", exc)
            else:
                if handled:
                    log.info("sweeper: finished %d interrupted commit(s)", handled)
            await asyncio.sleep(_SWEEP_SECONDS)

    # ------------------------------------------------------------------ cross-group transactions

    async def _commit_xg(self, app: str, namespace: str, commits: list[GroupCommit], rows_of: RowsOf) -> None:
        """Two-phase commit: lock every group at its read version, record the commit point, apply."""
        txid = uuid.uuid4()
        # Hints first: if this process dies anywhere below, the sweeper finds the groups.
        hints = list(await asyncio.gather(*(self._hint(app, namespace, gc.group) for gc in commits)))
        await self._exec(self._xg_new, (app, txid, int(time.time() * 1000)))
        locked: list[bytes] = []
        staged: list[tuple[GroupCommit, list[tuple[int, IndexRow]], int]] = []
        try:
            for gc in sorted(commits, key=lambda c: c.group):
                state = await self._group_state(app, namespace, gc.group)
                gv = state.gv if state is not None else None
                if (gv or 0) != gc.expected_version:
                    raise ConcurrentTransactionError(
                        "the transaction conflicted with a concurrent commit to an entity group; retry it")
                params: tuple[Any, ...] = (txid, app, namespace, gc.group)
                applied = _first(await self._exec(self._lock_new if gv is None else self._lock,
                                                   params if gv is None else (*params, gv)))[0]
                if not applied:
                    raise ConcurrentTransactionError(
                        "the transaction conflicted with a concurrent commit to an entity group; retry it")
                locked.append(gc.group)
                if state is not None and state.pending:
                    await self._apply_changes(app, namespace, decode_changes(state.pending), state.commit_ts,
                                              group=gc.group)
                changes = self._changes(gc, await self._old_versions(app, namespace, gc), rows_of) if gc.writes else []
                commit_ts = max(int(time.time() * 1_000_000), (state.commit_ts or 0) + 1 if state else 0)
                staged.append((gc, changes, commit_ts))
            record = _encode_staged(staged)
            if not _first(await self._exec(self._xg_commit, (record, app, txid)))[0]:
                raise ConcurrentTransactionError("the transaction was abandoned by a concurrent reader; retry it")
        except BaseException:
            await self._abort_xg(app, namespace, txid, locked)
            for hint in hints:
                self._mark_done(hint)
            raise
        # Committed: from here on anyone who finds a lock can finish the job.
        await asyncio.gather(*(self._apply_staged(app, namespace, txid, gc, changes, ts)
                               for gc, changes, ts in staged))
        for hint in hints:
            self._mark_done(hint)

    async def _abort_xg(self, app: str, namespace: str, txid: uuid.UUID, locked: list[bytes]) -> None:
        try:
            await self._exec(self._xg_abort, (app, txid))
            row = _first(await self._exec(self._xg_read, (app, txid)))
            if row is not None and row.status == "committed":
                return  # the commit point was reached after all; whoever finds the locks applies it
            await asyncio.gather(*(self._exec(self._unlock, (app, namespace, g, txid)) for g in locked))
        except UnavailableError:
            log.warning("could not abort cross-group transaction %s; readers will resolve its locks", txid)

    async def _apply_staged(self, app: str, namespace: str, txid: uuid.UUID, gc: GroupCommit,
                            changes: list[tuple[int, IndexRow]], commit_ts: int) -> None:
        batch = self._batch()
        batch.add(self._apply_xg, (gc.expected_version + 1 if gc.expected_version is not None else 1, commit_ts,
                                   encode_changes(changes), app, namespace, gc.group, txid))
        self._add_writes(batch, app, namespace, gc, commit_ts)
        if _first(await self._exec(batch))[0]:
            await self._apply_changes(app, namespace, changes, commit_ts, group=gc.group)

    async def _resolve_lock(self, app: str, namespace: str, group: bytes, txid: uuid.UUID) -> bool:
        """Finish (committed) or undo (aborted, abandoned) the transaction holding ``group``.

        Returns False when the transaction is still preparing and young: wait for it.
        """
        row = _first(await self._exec(self._xg_read, (app, txid)))
        if row is not None and row.status == "preparing":
            age = time.time() - row.created.timestamp() if row.created else _XG_ABANDON_SECONDS
            if age < _XG_ABANDON_SECONDS:
                return False
            await self._exec(self._xg_abort, (app, txid))
            row = _first(await self._exec(self._xg_read, (app, txid)))
        if row is not None and row.status == "committed":
            for gc, changes, ts in _decode_staged(row.staged or b""):
                if gc.group == group:
                    await self._apply_staged(app, namespace, txid, gc, changes, ts)
                    return True
        await self._exec(self._unlock, (app, namespace, group, txid))
        return True

    # ------------------------------------------------------------------ indexes and metadata

    async def add_index_rows(self, app: str, namespace: str, rows: list[IndexRow]) -> None:
        # Timestamp 1: older than any commit, so a later commit's delete or
        # insert of the same row always wins over a backfilled one.
        await _bounded(self._exec(self._irow_add, (app, namespace, r.idx, self._shard(r), r.row, r.path, 1))
                       for r in rows)

    async def delete_index_rows(self, app: str, namespace: str, rows: list[IndexRow]) -> None:
        await _bounded(self._exec(self._irow_drop, (app, namespace, r.idx, self._shard(r), r.row)) for r in rows)

    def _shard(self, row: IndexRow) -> int:
        return zlib.crc32(row.path) % self._shards if self._shards > 1 else 0

    async def namespaces(self, app: str) -> list[str]:
        return sorted(r.ns for r in await self._exec(self._ns_read, (app,)))

    async def metadata(self, app: str, namespace: str) -> list[tuple[str, str, bytes]]:
        return sorted((r.kind, r.prop, bytes(r.rep)) for r in await self._exec(self._meta_read, (app, namespace))
                      if r.kind)

    async def index_defs(self, app: str) -> list[StoredIndex]:
        rows = await self._exec(self._def_read, (app,))
        return [StoredIndex(IndexDef.from_json(r.definition), r.state, r.error or "") for r in rows]

    async def put_index_def(self, app: str, index: StoredIndex) -> None:
        await self._exec(self._def_put, (app, index.defn.id, index.defn.to_json(), index.state, index.error))

    async def delete_index_def(self, app: str, defn: IndexDef) -> None:
        await self._exec(self._def_del, (app, defn.id))

    # ------------------------------------------------------------------ ids

    async def _cas_counter(self, app: str, new_next: Any) -> int:
        """Advance the counter with LWT; ``new_next(current)`` gives the new value or None to stop.

        The counter's value this process last saw is remembered per app and tried first, without a read: the
        conditional update checks it (``IF next_id = ?``), and when another process moved the counter since,
        the update is not applied and returns the current value, which the next attempt uses. The counter only
        grows, so a remembered value that is too low can only cost a failed update, never a duplicate id. One
        allocation per app is in flight in this process at a time: concurrent ones would refuse each other's
        conditional update (Paxos contention on one partition), so they take turns, each starting from the value
        the previous one left.
        """
        lock = self._counter_locks.get(app)
        if lock is None:
            lock = self._counter_locks[app] = asyncio.Lock()
        async with lock:
            return await self._cas_counter_locked(app, new_next)

    async def _cas_counter_locked(self, app: str, new_next: Any) -> int:
        from cassandra import WriteTimeout
        known = self._counters.get(app)
        for _ in range(100):
            if known is None:
                row = _first(await self._exec(self._ctr_read, (app, _SEQ)))
                current = row.next_id if row else None
            else:
                current = known
            target = new_next(current if current is not None else 1)
            if target is None:
                return int(current if current is not None else 1)
            op = uuid.uuid4()
            try:
                if current is None:
                    res = await self._exec(self._ctr_init, (app, _SEQ, target, op))
                else:
                    res = await self._exec(self._ctr_cas, (target, op, app, _SEQ, current))
            except UnavailableError as exc:
                self._counters.pop(app, None)
                if not isinstance(exc.__cause__, WriteTimeout):
                    raise
                check = _first(await self._exec(self._ctr_read, (app, _SEQ)))
                if check is not None and check.op_id == op:
                    self._remember_counter(app, target)
                    return int(current if current is not None else 1)
                known = None
                continue
            outcome = _first(res)
            if outcome[0]:  # [applied]
                self._remember_counter(app, target)
                return int(current if current is not None else 1)
            # Not applied: the row as it is now comes back with the answer (its next_id; for IF NOT EXISTS, the
            # existing row).
            known = getattr(outcome, "next_id", None)
            await asyncio.sleep(0)
        raise UnavailableError("cassandra: id allocation contention did not settle")

    def _remember_counter(self, app: str, next_id: int) -> None:
        if len(self._counters) >= _APPLIED_CACHE:
            self._counters.clear()
        self._counters[app] = next_id

    async def allocate_ids(self, app: str, count: int) -> int:
        return await self._cas_counter(app, lambda current: counter_after(current, count))

    async def reserve_ids_up_to(self, app: str, max_id: int) -> None:
        await self._cas_counter(app, lambda current: max_id + 1 if current <= max_id else None)

    async def close(self) -> None:
        await self.drain()
        await self._keyspace.close()


# Statements one call keeps in flight at most: an entity at the 20,000-entry limit writes 40,001 index rows,
# and that many at once overrun a node's write queue and time out.
MAX_IN_FLIGHT = 128


async def _bounded(statements: Iterable[Awaitable[Any]]) -> None:
    """Await ``statements`` (not yet started coroutines) with at most :data:`MAX_IN_FLIGHT` running."""
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(statement: Awaitable[Any]) -> None:
        async with gate:
            await statement
    await asyncio.gather(*(one(s) for s in statements))


def _pack(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def _unpack(raw: bytes, pos: int, count: int) -> tuple[list[bytes], int]:
    out = []
    for _ in range(count):
        (size,) = struct.unpack_from(">I", raw, pos)
        out.append(raw[pos + 4:pos + 4 + size])
        pos += 4 + size
    return out, pos


def _encode_staged(staged: list[tuple[GroupCommit, list[tuple[int, IndexRow]], int]]) -> bytes:
    """The writes and index changes of every group of a cross-group commit (its recovery record)."""
    out = bytearray()
    for gc, changes, ts in staged:
        out += _pack(gc.group, struct.pack(">qqI", -1 if gc.expected_version is None else gc.expected_version, ts,
                                           len(gc.writes)), encode_changes(changes))
        for w in gc.writes:
            out += _pack(w.path, w.kind.encode(), b"" if w.entity is None else b"\x01" + w.entity)
    return bytes(out)


def _decode_staged(raw: bytes) -> list[tuple[GroupCommit, list[tuple[int, IndexRow]], int]]:
    out = []
    pos = 0
    while pos < len(raw):
        (group, head, changes), pos = _unpack(raw, pos, 3)
        expected, ts, count = struct.unpack(">qqI", head)
        writes = []
        for _ in range(count):
            (path, kind, entity), pos = _unpack(raw, pos, 3)
            writes.append(Write(path, kind.decode(), entity[1:] if entity else None))
        out.append((GroupCommit(group, tuple(writes), None if expected < 0 else expected), decode_changes(changes), ts))
    return out


async def _settled_shards(keyspace: kiln_cassandra.Keyspace, wanted: int) -> int:
    """The keyspace's shard count: the first service to create it decides (LWT), everyone reads it."""
    ks = keyspace.name
    await keyspace.execute(f"INSERT INTO {ks}.settings (name, value) VALUES ('index_shards', %s) IF NOT EXISTS",
                           (str(wanted),))
    read = keyspace.statement(f"SELECT value FROM {ks}.settings WHERE name = 'index_shards'", consistency="SERIAL")
    shards = int((await keyspace.execute(read))[0][0])
    if shards != wanted:
        log.warning("keyspace %s has %d index shards (created so); ignoring the configured %d", ks, shards, wanted)
    return shards


async def create(settings: StorageConfig, *, index_shards: int = 1) -> CassandraEngine:
    """Connect to Cassandra as ``settings`` say and create the schema if needed.

    ``index_shards`` applies when this call creates the keyspace; an existing
    keyspace keeps the count it was created with (changing it needs a reindex).
    """
    keyspace = await kiln_cassandra.open_keyspace(settings, _tables, row_factory=_row_factory)
    try:
        shards = await _settled_shards(keyspace, index_shards)
        # Preparing the statements blocks on the cluster.
        engine = await asyncio.get_running_loop().run_in_executor(None, CassandraEngine, keyspace, shards)
    except BaseException:
        await keyspace.close()
        raise
    log.info("cassandra engine ready: keyspace %s", keyspace.name)
    return engine
