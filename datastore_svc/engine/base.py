"""The storage engine interface the datastore service is written against.

Engines store three things for each app and namespace:

- entities, by entity group: ``group`` is the encoded root element and
  ``path`` the encoded full key path (:mod:`datastore_svc.keys`), so byte order
  is key order; each group has a version that every commit to it bumps;
- index rows (:class:`~datastore_svc.index.IndexRow`): sorted byte rows in
  partitions named by an index id; every query is range scans over them;
- metadata: the kinds, properties and namespaces ever written, and the app's
  composite index definitions.

The service computes what to write (entities and their index rows); the engine
makes each group's commit atomic, checks group versions for optimistic
transactions, and keeps index rows in step with entities. Callers check
:attr:`Engine.features` for optional abilities, never the engine's type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from datastore_svc.index import IndexDef, IndexRow
from kiln.errors import BadRequestError

#: The largest id the allocator hands out or reserves. App Engine's allocator counted its sequential ids up
#: to 2**52 - 1 (``_MAX_SEQUENTIAL_ID`` in Google's datastore stub; ids above were its scattered ids), which
#: also keeps every counter value far from the end of int64.
MAX_ALLOCATED_ID = (1 << 52) - 1


def counter_after(next_id: int, count: int) -> int:
    """The id counter after handing out ``count`` ids from ``next_id``; every engine allocates through this.

    Raises:
        BadRequestError: the range would pass :data:`MAX_ALLOCATED_ID` (the counter must then stay as it is).
    """
    last = next_id + count - 1
    if last > MAX_ALLOCATED_ID:
        left = max(MAX_ALLOCATED_ID - next_id + 1, 0)
        raise BadRequestError(f"cannot allocate {count} ids: ids {next_id}..{last} would pass the largest "
                              f"allocatable id {MAX_ALLOCATED_ID} (2**52 - 1); {left} ids are left")
    return next_id + count


@dataclasses.dataclass(frozen=True, slots=True)
class Ref:
    """Where an entity lives."""

    group: bytes
    path: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    """One entity write: ``entity`` is the serialized entity, ``None`` to delete."""

    path: bytes
    kind: str
    entity: bytes | None
    rows: frozenset[IndexRow] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class GroupCommit:
    """The writes to one entity group; ``expected_version`` set makes it conditional.

    ``fresh``: the group's root id was allocated by the same call, so no commit can have reached the group yet;
    an engine may skip reading its state (a wrong guess must only cost a retry, never a guarantee).
    """

    group: bytes
    writes: tuple[Write, ...]
    expected_version: int | None = None
    fresh: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class StoredIndex:
    """A composite index definition with its state (``BUILDING``/``SERVING``/``DELETING``/``ERROR``)."""

    defn: IndexDef
    state: str
    error: str = ""


#: Gives the index rows of a stored (serialized) entity; the engine uses it for old values.
RowsOf = Callable[[bytes], frozenset[IndexRow]]


class Engine(Protocol):
    """Async storage. Every method is safe to call concurrently."""

    #: Names of optional abilities.
    features: frozenset[str]

    async def get(self, app: str, namespace: str, refs: list[Ref], *, strong: bool = False,
                  eventual: bool = False) -> list[bytes | None]:
        """The stored entity for each ref, ``None`` where absent, in order.

        ``strong`` asks for a linearizable read (inside transactions). ``eventual`` marks a non-ancestor query's
        read of its results, which may see the state its index rows show (an engine that delays applying commits
        to such queries, as the embedded one can, returns entities as applied, not the groups' latest).
        """
        ...

    async def group_versions(self, app: str, namespace: str, groups: list[bytes]) -> list[int]:
        """The current version of each group (0 for a group never written), read strongly."""
        ...

    async def commit(self, app: str, namespace: str, commits: list[GroupCommit], rows_of: RowsOf, *,
                     atomic: bool) -> None:
        """Apply the writes and keep the index rows in step.

        Each group's commit is atomic. With ``atomic`` the whole list is: all
        groups or none (cross-group transactions).

        Raises:
            ConcurrentTransactionError: a group's version is not ``expected_version``;
                nothing was written.
        """
        ...

    async def scan_group(self, app: str, namespace: str, group: bytes, lo: bytes, hi: bytes,
                         limit: int) -> list[tuple[bytes, str, bytes]]:
        """Up to ``limit`` ``(path, kind, entity)`` of one group with ``lo <= path < hi``, in key order."""
        ...

    async def scan_index(self, app: str, namespace: str, idx: bytes, lo: bytes, hi: bytes,
                         limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(row, path)`` of index ``idx`` with ``lo <= row < hi``, ascending."""
        ...

    async def add_index_rows(self, app: str, namespace: str, rows: list[IndexRow]) -> None:
        """Insert index rows (building a new index for existing entities)."""
        ...

    async def delete_index_rows(self, app: str, namespace: str, rows: list[IndexRow]) -> None:
        """Remove index rows (deleting an index)."""
        ...

    async def namespaces(self, app: str) -> list[str]:
        """Every namespace the app has written to, sorted."""
        ...

    async def metadata(self, app: str, namespace: str) -> list[tuple[str, str, bytes]]:
        """``(kind, property, value class)`` ever written in a namespace, sorted; property "" marks a kind."""
        ...

    async def index_defs(self, app: str) -> list[StoredIndex]:
        """The app's composite index definitions."""
        ...

    async def put_index_def(self, app: str, index: StoredIndex) -> None:
        """Add or update a composite index definition."""
        ...

    async def delete_index_def(self, app: str, defn: IndexDef) -> None:
        """Forget a composite index definition."""
        ...

    async def allocate_ids(self, app: str, count: int) -> int:
        """Reserve ``count`` ids for ``app`` that were never handed out before; return the first."""
        ...

    async def reserve_ids_up_to(self, app: str, max_id: int) -> None:
        """Make sure no id <= ``max_id`` is ever handed out by :meth:`allocate_ids`."""
        ...

    async def maintain(self) -> None:
        """Background upkeep (finishing interrupted commits); runs until cancelled."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...
