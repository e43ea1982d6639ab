"""App Engine's metadata queries: ``__namespace__``, ``__kind__`` and ``__property__``.

Results are entities with App Engine's keys: ``__namespace__`` named by the
namespace (id 1 for the default namespace), ``__kind__`` named by the kind,
``__property__`` as a child of its ``__kind__`` key with a
``property_representation`` list (``INT64``, ``STRING``…). They come from the
engine's metadata, checked against the indexes so that kinds and properties
whose entities were all deleted no longer show, as in App Engine.
"""

from __future__ import annotations

from datastore_svc import index, values
from datastore_svc.engine.base import Engine
from datastore_svc.keys import encode_path
from datastore_svc.query import FF, KeyRange, flatten
from kiln.errors import BadRequestError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

KINDS = ("__namespace__", "__kind__", "__property__")
_REPRESENTATIONS = {
    values.NULL: "NULL", values.INT: "INT64", values.BOOL: "BOOLEAN", values.STRING: "STRING",
    values.DOUBLE: "DOUBLE", values.GEO: "POINT", values.USER: "USER", values.KEY: "REFERENCE",
}
_OPS = {pb.PropertyFilter.OPERATOR_LESS_THAN: "<", pb.PropertyFilter.OPERATOR_LESS_THAN_OR_EQUAL: "<=",
        pb.PropertyFilter.OPERATOR_GREATER_THAN: ">", pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL: ">=",
        pb.PropertyFilter.OPERATOR_EQUAL: "="}


async def run(engine: Engine, app: str, namespace: str, query: pb.Query) -> list[pb.Entity]:
    """Every result of a metadata query, in key order, before offset, limit and cursors."""
    if query.order or query.projection or query.distinct_on:
        raise BadRequestError(f"{query.kind} queries support only __key__ filters, an ancestor (for "
                              "__property__) and keys_only")
    keys = KeyRange()
    for name, op, value in flatten(query.filter) if query.HasField("filter") else []:
        if name != "__key__" or op not in _OPS.values() or not value.HasField("key_value"):
            raise BadRequestError(f"{query.kind} queries can only filter on __key__ with =, <, <=, >, >=")
        keys.add(op, encode_path(value.key_value.path))
    if query.kind == "__namespace__":
        found = [_entity(app, "", ("__namespace__", ns or 1)) for ns in await engine.namespaces(app)]
    elif query.kind == "__kind__":
        found = [_entity(app, namespace, ("__kind__", kind)) for kind in await _kinds(engine, app, namespace)]
    else:
        found = await _properties(engine, app, namespace)
    if query.HasField("ancestor"):
        anc = encode_path(query.ancestor.path)
        found = [e for e in found if encode_path(e.key.path).startswith(anc)]
    found = [e for e in found if keys.contains(encode_path(e.key.path))]
    found.sort(key=lambda e: encode_path(e.key.path))
    if query.keys_only:
        found = [pb.Entity(key=e.key) for e in found]
    return found


def _entity(app: str, namespace: str, *path: tuple[str, int | str]) -> pb.Entity:
    key = pb.Key(partition_id=pb.PartitionId(app_id=app, namespace=namespace))
    for kind, ident in path:
        if isinstance(ident, int):
            key.path.add(kind=kind, id=ident)
        else:
            key.path.add(kind=kind, name=ident)
    return pb.Entity(key=key)


async def _kinds(engine: Engine, app: str, namespace: str) -> list[str]:
    out = []
    for kind, prop, _ in await engine.metadata(app, namespace):
        if not prop and await engine.scan_index(app, namespace, index.kind_idx(kind), b"", FF, 1):
            out.append(kind)
    return out


async def _properties(engine: Engine, app: str, namespace: str) -> list[pb.Entity]:
    reps: dict[tuple[str, str], list[str]] = {}
    for kind, prop, cls in await engine.metadata(app, namespace):
        if not prop:
            continue
        idx = index.prop_idx(kind, prop, False)
        if await engine.scan_index(app, namespace, idx, cls, bytes([cls[0] + 1]), 1):
            reps.setdefault((kind, prop), []).append(_REPRESENTATIONS.get(cls, "UNKNOWN"))
    out = []
    for (kind, prop), names in reps.items():
        entity = _entity(app, namespace, ("__kind__", kind), ("__property__", prop))
        entity.properties["property_representation"].array_value.values.extend(
            pb.Value(string_value=n) for n in sorted(names))
        out.append(entity)
    return out
