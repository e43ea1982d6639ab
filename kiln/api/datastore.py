"""The datastore API for apps, mirroring ``google.appengine.api.datastore``.

A thin client of ``datastore_svc``: :class:`Entity` is a dict of properties
with a key, and ``Put``/``Get``/``Delete``/``Query``/``AllocateIds`` are single
gRPC calls. Porting an App Engine app means importing ``kiln.api.datastore``
instead of ``google.appengine.api.datastore``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, overload

from kiln.api import _rpc
from kiln.api.datastore_types import (  # re-exported, as App Engine's module does
    Blob, BlobKey, ByteString, Category, Email, GeoPt, IM, Key, Link, PhoneNumber, PostalAddress,
    Rating, Text, from_value, keys_of, to_value,
)
from kiln.errors import KilnError, NotFoundError
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.datastore.v1 import datastore_pb2_grpc

__all__ = [
    "AllocateIds", "Blob", "BlobKey", "ByteString", "Category", "Delete", "Email", "Entity",
    "EntityNotFoundError", "Error", "Get", "GeoPt", "IM", "Key", "Link", "PhoneNumber",
    "PostalAddress", "Put", "Query", "Rating", "Text",
]

Error = KilnError


class EntityNotFoundError(NotFoundError):
    """``Get`` of a single key found no entity."""


def _stub() -> datastore_pb2_grpc.DatastoreServiceStub:
    return _rpc.stub("DATASTORE", datastore_pb2_grpc.DatastoreServiceStub)


class Entity(dict[str, Any]):
    """An entity: a dict of property values with a key."""

    def __init__(self, kind: str, parent: Key | None = None, _app: str | None = None,
                 name: str | None = None, id: int | None = None,  # noqa: A002 - App Engine's name
                 unindexed_properties: tuple[str, ...] | list[str] = (), namespace: str | None = None) -> None:
        super().__init__()
        if name is not None and id is not None:
            raise ValueError("give name or id, not both")
        ident = name if name is not None else id
        self._key = Key.from_path(kind, ident, parent=parent, namespace=namespace, _app=_app)
        self._unindexed = set(unindexed_properties)

    def key(self) -> Key:
        return self._key

    def kind(self) -> str:
        return self._key.kind()

    def parent(self) -> Key | None:
        return self._key.parent()

    def app(self) -> str:
        return self._key.app()

    def namespace(self) -> str:
        return self._key.namespace()

    def unindexed_properties(self) -> frozenset[str]:
        return frozenset(self._unindexed)

    def set_unindexed_properties(self, names: list[str] | tuple[str, ...]) -> None:
        self._unindexed = set(names)

    def to_pb(self) -> pb.Entity:
        out = pb.Entity(key=self._key.to_pb())
        for name, value in self.items():
            out.properties[name].CopyFrom(to_value(value, indexed=name not in self._unindexed, name=name))
        return out

    @classmethod
    def from_pb(cls, entity: pb.Entity) -> Entity:
        out = cls.__new__(cls)
        dict.__init__(out)
        out._key = Key(_pb=entity.key)
        out._unindexed = set()
        for name, value in entity.properties.items():
            out[name] = from_value(value)
            if value.exclude_from_indexes:
                out._unindexed.add(name)
        return out

    def __repr__(self) -> str:
        return f"datastore.Entity({self.kind()!r}, key={self._key!r}, {dict.__repr__(self)})"


@overload
def Put(entities: Entity) -> Key: ...
@overload
def Put(entities: list[Entity]) -> list[Key]: ...
def Put(entities: Entity | list[Entity]) -> Key | list[Key]:  # noqa: N802 - App Engine's name
    """Store one entity or a list; returns the complete key(s) and updates each entity's key."""
    single = isinstance(entities, Entity)
    batch = [entities] if single else list(entities)  # type: ignore[list-item]
    resp = _rpc.call(_stub().Put, pb.PutRequest(entities=[e.to_pb() for e in batch]))
    keys = [Key(_pb=k) for k in resp.keys]
    for entity, key in zip(batch, keys):
        entity._key = key
    return keys[0] if single else keys


def Get(keys: Key | str | list[Key | str]) -> Any:  # noqa: N802
    """Fetch one entity (``EntityNotFoundError`` if missing) or a list (``None`` where missing)."""
    single = not isinstance(keys, list)
    wanted = keys_of([keys] if single else keys)  # type: ignore[list-item]
    resp = _rpc.call(_stub().Get, pb.GetRequest(keys=[k.to_pb() for k in wanted]))
    found = [Entity.from_pb(r.entity) if r.HasField("entity") else None for r in resp.results]
    if single:
        if found[0] is None:
            raise EntityNotFoundError(f"no entity with key {wanted[0]!r}")
        return found[0]
    return found


def Delete(keys: Key | str | list[Key | str]) -> None:  # noqa: N802
    """Delete one key or a list; deleting a missing key is not an error."""
    wanted = keys_of(keys if isinstance(keys, list) else [keys])
    _rpc.call(_stub().Delete, pb.DeleteRequest(keys=[k.to_pb() for k in wanted]))


def AllocateIds(model_key: Key | Entity, size: int | None = None, max: int | None = None) -> tuple[int, int]:  # noqa: N802,A002
    """Reserve ids for the kind (and parent) of ``model_key``; returns ``(start, end)`` inclusive."""
    key = model_key.key() if isinstance(model_key, Entity) else model_key
    incomplete = key.to_pb()
    incomplete.path[-1].ClearField("id_type")
    req = pb.AllocateIdsRequest(key=incomplete, size=size or 0, max=max or 0)
    resp = _rpc.call(_stub().AllocateIds, req)
    return resp.start, resp.end


class Query:
    """A query by kind under an ancestor (strongly consistent), in key order.

    Filters, sort orders and cursors beyond this come with the datastore query
    engine; the service answers UNIMPLEMENTED for them until then.
    """

    def __init__(self, kind: str | None = None, keys_only: bool = False, namespace: str | None = None) -> None:
        self._kind = kind or ""
        self._keys_only = keys_only
        self._namespace = namespace or ""
        self._ancestor: Key | None = None

    def Ancestor(self, ancestor: Key | Entity) -> Query:  # noqa: N802
        """Restrict results to ``ancestor`` and its descendants."""
        self._ancestor = ancestor.key() if isinstance(ancestor, Entity) else ancestor
        self._namespace = self._ancestor.namespace()
        return self

    def Run(self, limit: int | None = None, batch_size: int = 100) -> Iterator[Any]:  # noqa: N802
        """Iterate over results (entities, or keys for keys-only queries)."""
        query = pb.Query(kind=self._kind, keys_only=self._keys_only)
        if self._ancestor is not None:
            query.ancestor.CopyFrom(self._ancestor.to_pb())
        returned = 0
        while True:
            if limit is not None:
                query.limit = limit - returned
            req = pb.RunQueryRequest(query=query, batch_size=batch_size)
            req.partition_id.namespace = self._namespace
            batch = _rpc.call(_stub().RunQuery, req).batch
            for result in batch.entity_results:
                returned += 1
                yield Key(_pb=result.entity.key) if self._keys_only else Entity.from_pb(result.entity)
            if batch.more_results != pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED:
                return
            query.start_cursor = batch.end_cursor

    def Get(self, limit: int) -> list[Any]:  # noqa: N802
        """The first ``limit`` results as a list."""
        return list(self.Run(limit=limit))

    def Count(self, limit: int | None = None) -> int:  # noqa: N802
        """How many results (up to ``limit``), counted with a keys-only query."""
        keys = Query(self._kind, keys_only=True, namespace=self._namespace)
        keys._ancestor = self._ancestor
        return sum(1 for _ in keys.Run(limit=limit))
