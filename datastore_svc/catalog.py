"""Each app's composite indexes: the cached catalog, building and deleting them.

Writes maintain every index that is BUILDING or SERVING; queries use only
SERVING ones. A new index is stored as BUILDING, then, once every replica's
cache has had time to see it (so no later write can miss it), the entities
already stored are scanned through the kind index and its rows added; then it
is SERVING. Deleting marks it DELETING (writes stop maintaining it once caches
refresh), removes its rows and forgets it.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from datastore_svc import index
from datastore_svc.engine.base import Engine, Ref, StoredIndex
from datastore_svc.index import IndexDef, Indexer
from datastore_svc.keys import PREFIX_END, group_of
from kiln_platform import indexyaml
from kiln.errors import KilnError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

log = logging.getLogger(__name__)

Job = Callable[[str, IndexDef], Coroutine[Any, Any, None]]

BUILDING, SERVING, DELETING, ERROR = "BUILDING", "SERVING", "DELETING", "ERROR"
_PAGE = 500


class Catalog:
    """Per-app index definitions, cached for ``ttl`` seconds."""

    def __init__(self, engine: Engine, *, ttl: float) -> None:
        self._engine = engine
        self._ttl = ttl
        self._cache: dict[str, tuple[float, list[StoredIndex]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[tuple[str, IndexDef], tuple[Job, asyncio.Task[None]]] = {}

    async def all(self, app: str) -> list[StoredIndex]:
        """The app's index definitions (cached)."""
        hit = self._cache.get(app)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        found = await self._engine.index_defs(app)
        self._cache[app] = (time.monotonic(), found)
        for stored in found:  # resume work a stopped process left unfinished
            if stored.state == BUILDING:
                self._start(app, stored.defn, self._build)
            elif stored.state == DELETING:
                self._start(app, stored.defn, self._delete)
        return found

    def _start(self, app: str, defn: IndexDef, job: Job) -> None:
        """Run ``job`` (a build or a deletion) for the index; a different job already running for it is cancelled
        first (a vacuum stops a build still in progress, and a re-declared index stops its deletion)."""
        key = (app, defn)
        running = self._running.get(key)
        if running is not None and running[0] == job:
            return
        previous = running[1] if running is not None else None
        if previous is not None:
            previous.cancel()

        async def after_previous() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await job(app, defn)
        task = asyncio.create_task(after_previous())
        self._running[key] = (job, task)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            current = self._running.get(key)
            if current is not None and current[1] is t:
                del self._running[key]
        task.add_done_callback(done)

    async def indexer(self, app: str) -> Indexer:
        """What writes must maintain: every BUILDING and SERVING index."""
        return Indexer(s.defn for s in await self.all(app) if s.state in (BUILDING, SERVING))

    async def serving(self, app: str) -> list[IndexDef]:
        """What queries may use."""
        return [s.defn for s in await self.all(app) if s.state == SERVING]

    def forget(self, app: str) -> None:
        """Drop the cached entry (after this process changed the catalog)."""
        self._cache.pop(app, None)

    async def update(self, app: str, wanted: list[IndexDef], *, remove_unlisted: bool,
                     wait: bool = False) -> list[StoredIndex]:
        """Declare ``wanted``; new ones are built in the background.

        ``wait`` builds them before returning, without waiting for other
        replicas' caches: only for a single-process service (``kiln dev``).
        """
        current = {s.defn: s for s in await self._engine.index_defs(app)}
        building = []
        for defn in wanted:
            if defn not in current or current[defn].state in (DELETING, ERROR):
                await self._engine.put_index_def(app, StoredIndex(defn, BUILDING))
                building.append(defn)
        doomed = [d for d in current if remove_unlisted and d not in wanted]
        for defn in doomed:
            await self._engine.put_index_def(app, StoredIndex(defn, DELETING))
        self.forget(app)
        if wait:
            await asyncio.gather(*[self._build(app, d, settle=False) for d in building], *[self._delete(app, d) for d in doomed])
        else:
            for defn in building:
                self._start(app, defn, self._build)
            for defn in doomed:
                self._start(app, defn, self._delete)
        return await self._engine.index_defs(app)

    async def _build(self, app: str, defn: IndexDef, *, settle: bool = True) -> None:
        # Wait until every replica's cache includes the new index, so any write
        # not seen by the scan below maintains the index itself. (``settle``
        # False is for one process that has just dropped its own cache.)
        if settle:
            await asyncio.sleep(self._ttl)
        indexer = Indexer([defn])
        try:
            for namespace in await self._engine.namespaces(app):
                await self._backfill(app, namespace, defn, indexer)
        except KilnError as exc:
            log.warning("index %s of %s failed to build: %s", defn, app, exc)
            await self._engine.put_index_def(app, StoredIndex(defn, ERROR, str(exc)))
            self.forget(app)
            return
        states = {d.defn: d.state for d in await self._engine.index_defs(app)}
        if states.get(defn) != BUILDING:  # deleted (vacuumed) meanwhile, by this or another replica
            return
        await self._engine.put_index_def(app, StoredIndex(defn, SERVING))
        self.forget(app)
        log.info("index on %s (%s) of %s is serving", defn.kind, ", ".join(n for n, _ in defn.props), app)

    async def _backfill(self, app: str, namespace: str, defn: IndexDef, indexer: Indexer, *,
                        delete: bool = False) -> None:
        idx = index.kind_idx(defn.kind)
        lo = b""
        while True:
            page = await self._engine.scan_index(app, namespace, idx, lo, PREFIX_END, _PAGE)
            if not page:
                return
            refs = [Ref(group_of(path), path) for _, path in page]
            blobs = await self._engine.get(app, namespace, refs)
            rows = []
            for blob in blobs:
                if blob is not None:
                    rows += [r for r in indexer.rows(pb.Entity.FromString(blob)) if r.idx.startswith(b"C")]
            if rows and delete:
                await self._engine.delete_index_rows(app, namespace, rows)
            elif rows:
                await self._engine.add_index_rows(app, namespace, rows)
            lo = page[-1][0] + b"\x00"

    async def _delete(self, app: str, defn: IndexDef) -> None:
        await asyncio.sleep(self._ttl)
        indexer = Indexer([defn])
        for namespace in await self._engine.namespaces(app):
            await self._backfill(app, namespace, defn, indexer, delete=True)
        await self._engine.delete_index_def(app, defn)
        self.forget(app)

    async def close(self) -> None:
        """Cancel builds still running (they restart from scratch: rows are idempotent)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class AutoIndexFile:
    """``kiln dev``'s index.yaml: indexes added automatically are appended to it."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def add(self, defs: list[IndexDef]) -> None:
        """Record indexes added for queries that needed them."""
        if defs:
            indexyaml.append_autogenerated(self.path, [d.to_pb() for d in defs])
            log.info("added %d index(es) to %s", len(defs), self.path)
