"""Running a planned query: fetch, check, project, skip, limit, and the cursors.

A cursor is a version byte and a canonical position (see :mod:`datastore_svc.query`).
Sub-queries of an ``IN``/``!=`` query share sort orders, so their positions
compare directly and one cursor resumes all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from datastore_svc.engine.base import Engine, Ref
from datastore_svc.keys import group_of
from datastore_svc.query import Item, Normalized, Planned, check, distinct_key, projected
from kiln.errors import BadRequestError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

CURSOR_VERSION = b"\x02"
FETCH_CHUNK = 100


def parse_cursor(cursor: bytes, what: str) -> bytes | None:
    """The position in a cursor from this service, ``None`` for an empty cursor."""
    if not cursor:
        return None
    if not cursor.startswith(CURSOR_VERSION) or len(cursor) < 2:
        raise BadRequestError(f"{what}: not a cursor returned by this service for this query")
    return cursor[1:]


def make_cursor(position: bytes) -> bytes:
    """A cursor for a position."""
    return CURSOR_VERSION + position


@dataclasses.dataclass
class Batch:
    """One response's worth of results."""

    results: list[tuple[pb.Entity, bytes]]  # entity (or key-only / projected), position
    skipped: int
    end_position: bytes | None
    exhausted: bool


async def run(engine: Engine, app: str, namespace: str, norm: Normalized, plans: Sequence[Planned], *,
              start: bytes | None, end: bytes | None, offset: int, want: int) -> Batch:
    """Collect up to ``want`` results after skipping ``offset`` (see module docstring)."""
    target = start + b"\x00" if start is not None else b""
    results: list[tuple[pb.Entity, bytes]] = []
    skipped = 0
    last: bytes | None = start
    last_group: bytes | None = None
    seen: set[bytes] = set()
    multi = len(plans) > 1
    while len(results) < want:
        chunk: list[tuple[Planned, Item]] = []
        while len(chunk) < FETCH_CHUNK:
            found = await _next(plans, target)
            if found is None:
                break
            planned, item = found
            if end is not None and item.canon > end:  # a cursor is just after its result
                break
            chunk.append(found)
            target = item.canon + b"\x00"
        if not chunk:
            return Batch(results, skipped, last, True)
        entities = await _entities(engine, app, namespace, [item for _, item in chunk])
        for (planned, item), entity in zip(chunk, entities):
            last = item.canon
            if entity is None or not check(planned, item, entity, bool(norm.projection)):
                continue
            if norm.distinct:
                group = distinct_key(planned, item)
                if group == last_group:
                    continue
                last_group = group
                # Past every row with these values: resuming skips the rest of the group.
                last = group + b"\xff"
            elif multi and not norm.projection:
                if item.path in seen:
                    continue
                seen.add(item.path)
            if skipped < offset:
                skipped += 1
                continue
            results.append((_shape(norm, planned, item, entity), last))
            if len(results) == want:
                # Stop here: the chunk's later candidates are re-read from this position next time.
                return Batch(results, skipped, last, False)
    return Batch(results, skipped, last, False)


async def _next(plans: Sequence[Planned], target: bytes) -> tuple[Planned, Item] | None:
    best: tuple[Planned, Item] | None = None
    for planned in plans:
        item = await planned.plan.seek(target)
        if item is not None and (best is None or item.canon < best[1].canon):
            best = (planned, item)
    return best


async def _entities(engine: Engine, app: str, namespace: str, items: list[Item]) -> list[pb.Entity | None]:
    """The entities of the candidates (group scans carry theirs; the rest are fetched in one call)."""
    missing = [i for i, item in enumerate(items) if item.entity is None]
    fetched = await engine.get(app, namespace, [Ref(group_of(items[i].path), items[i].path)
                                                for i in missing], eventual=True) if missing else []
    blobs: list[bytes | None] = [item.entity for item in items]
    for i, blob in zip(missing, fetched):
        blobs[i] = blob
    return [pb.Entity.FromString(b) if b is not None else None for b in blobs]


def _shape(norm: Normalized, planned: Planned, item: Item, entity: pb.Entity) -> pb.Entity:
    if norm.keys_only:
        return pb.Entity(key=entity.key)
    if norm.projection:
        return projected(planned, item, entity.key)
    return entity
