"""The storage engine interface the datastore service is written against.

Engines store opaque serialized entities under ``(app, namespace, group,
path)``: ``group`` is the encoded root element (the entity group) and ``path``
the encoded full key path (see :mod:`datastore_svc.keys`), so byte order is key
order. Callers check :attr:`Engine.features` for optional abilities, never the
engine's type.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One stored entity."""

    group: bytes
    path: bytes
    kind: str
    entity: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Ref:
    """Where an entity lives."""

    group: bytes
    path: bytes


class Engine(Protocol):
    """Async storage for entities. Every method is safe to call concurrently."""

    #: Names of optional abilities, e.g. ``"ancestor_query"``.
    features: frozenset[str]

    async def get(self, app: str, namespace: str, refs: list[Ref]) -> list[bytes | None]:
        """Return the stored entity bytes for each ref, ``None`` where absent, in order."""
        ...

    async def put(self, app: str, namespace: str, rows: list[Row]) -> None:
        """Store rows; each entity group's rows are written atomically."""
        ...

    async def delete(self, app: str, namespace: str, refs: list[Ref]) -> None:
        """Remove entities; missing ones are ignored."""
        ...

    async def allocate_ids(self, app: str, count: int) -> int:
        """Reserve ``count`` ids for ``app`` that were never handed out before; return the first."""
        ...

    async def reserve_ids_up_to(self, app: str, max_id: int) -> None:
        """Make sure no id <= ``max_id`` is ever handed out by :meth:`allocate_ids`."""
        ...

    async def scan_group(self, app: str, namespace: str, group: bytes, prefix: bytes,
                         start_after: bytes | None, limit: int) -> list[tuple[bytes, str, bytes]]:
        """Return up to ``limit`` ``(path, kind, entity)`` in key order whose path starts with ``prefix``."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...

