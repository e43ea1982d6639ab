"""The ``__BlobInfo__`` kind that Google's SDK reads through the datastore (``blobstore.BlobInfo.get``,
``BlobInfo.all()``, ``BlobInfo.gql``), answered from kiln's blobstore service by :mod:`kiln.sdk.datastore_v3`.

Why from the blobstore service and not stored as datastore entities: the blobstore service owns a blob's info and
writes it in the same store as the blob's data, last, so an info exists exactly when its data does, and deleting a
blob removes both; entities written into the datastore by a second service could disagree with the blobs (written
but the data lost, or left behind after a deletion) and services do not call each other. The price: queries on
``__BlobInfo__`` are evaluated here, over the app's listing (filters, orders, offset and limit in memory), and are
not cursorable.

Entities are kiln's datastore values (``pb.Entity``), which ``datastore_v3`` turns into the SDK's as it does every
entity: key ``__BlobInfo__``/``<blob key>`` in the empty namespace; ``content_type``, ``filename`` and ``md5_hash``
strings, ``size`` an integer, ``creation`` a datetime.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from google.appengine.runtime import apiproxy_errors

from kiln.api import _rpc
from kiln.api import blobstore as kiln_blobstore
from kiln.pb.blobstore.v1 import blobstore_pb2 as bpb
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.sdk import blobstore as sdk_blobstore
from kiln.sdk.service import CallContext

__all__ = ["KIND", "get", "is_blob_info", "query"]

KIND = kiln_blobstore.BLOB_INFO_KIND
BAD_REQUEST = 1  # datastore_v3's error code


def is_blob_info(key: pb.Key) -> bool:
    """Whether ``key`` names a ``__BlobInfo__`` entity."""
    return bool(key.path) and key.path[-1].kind == KIND


def _timeout(ctx: CallContext) -> float:
    return ctx.deadline if ctx.deadline is not None else kiln_blobstore.DEFAULT_DEADLINE


def _entity(info: bpb.BlobInfo) -> pb.Entity:
    entity = pb.Entity()
    entity.key.path.add(kind=KIND, name=info.blob_key)
    props = entity.properties
    props["content_type"].string_value = info.content_type
    props["filename"].string_value = info.filename
    props["md5_hash"].string_value = info.md5_hash
    props["size"].integer_value = info.size
    props["creation"].timestamp_value.CopyFrom(info.creation)
    return entity


def get(keys: Sequence[pb.Key], ctx: CallContext) -> list[pb.Entity | None]:
    """The entity of each ``__BlobInfo__`` key (``None`` where no blob of the app has it)."""
    names = [k.path[-1].name if len(k.path) == 1 and not k.partition_id.namespace else "" for k in keys]
    wanted = [n for n in names if kiln_blobstore.could_be_key(n)]
    found: dict[str, pb.Entity] = {}
    for start in range(0, len(wanted), 1000):
        reply = _rpc.call(sdk_blobstore.stub().GetBlobInfo, bpb.GetBlobInfoRequest(blob_keys=wanted[start:start + 1000]),
                          timeout=_timeout(ctx), table=sdk_blobstore.ERRORS)
        found.update((i.blob_key, _entity(i)) for i in reply.infos)
    return [found.get(n) for n in names]


def _scalar(value: pb.Value) -> Any:
    kind = value.WhichOneof("value_type")
    if kind == "timestamp_value":
        return value.timestamp_value.ToMicroseconds()
    if kind == "key_value":
        return tuple(e.name for e in value.key_value.path)
    return getattr(value, kind) if kind else None


_COMPARE: dict[int, Callable[[Any, Any], bool]] = {
    pb.PropertyFilter.OPERATOR_LESS_THAN: lambda a, b: a < b,
    pb.PropertyFilter.OPERATOR_LESS_THAN_OR_EQUAL: lambda a, b: a <= b,
    pb.PropertyFilter.OPERATOR_GREATER_THAN: lambda a, b: a > b,
    pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL: lambda a, b: a >= b,
    pb.PropertyFilter.OPERATOR_EQUAL: lambda a, b: a == b,
    pb.PropertyFilter.OPERATOR_NOT_EQUAL: lambda a, b: a != b,
}


def _field(entity: pb.Entity, name: str) -> Any:
    if name == "__key__":
        return tuple(e.name for e in entity.key.path)
    if name not in entity.properties:
        raise apiproxy_errors.ApplicationError(BAD_REQUEST, f"{KIND} has no property {name!r}")
    return _scalar(entity.properties[name])


def _matches(entity: pb.Entity, f: pb.Filter) -> bool:
    if f.HasField("composite_filter"):
        return all(_matches(entity, sub) for sub in f.composite_filter.filters)
    prop = f.property_filter
    have = _field(entity, prop.property.name)
    if prop.op == pb.PropertyFilter.OPERATOR_IN:
        return have in {_scalar(v) for v in prop.value.array_value.values}
    compare = _COMPARE.get(prop.op)
    if compare is None:
        raise apiproxy_errors.ApplicationError(BAD_REQUEST, f"{KIND} queries do not support this filter")
    want = _scalar(prop.value)
    try:
        return compare(have, want)
    except TypeError:  # values of different types: App Engine orders types, and no such value equals another
        return prop.op == pb.PropertyFilter.OPERATOR_NOT_EQUAL


def _order_key(orders: Sequence[pb.PropertyOrder]) -> Callable[[pb.Entity, pb.Entity], int]:
    def compare(a: pb.Entity, b: pb.Entity) -> int:
        for order in orders:
            x, y = _field(a, order.property.name), _field(b, order.property.name)
            if x != y:
                sign = -1 if order.direction == pb.PropertyOrder.DIRECTION_DESCENDING else 1
                return sign * (-1 if x < y else 1)
        return 0
    return compare


def query(q: pb.Query, offset: int, limit: int | None, ctx: CallContext) -> tuple[list[pb.Entity], int]:
    """The app's ``__BlobInfo__`` entities matching ``q`` (filters, orders; key order otherwise), after ``offset``,
    at most ``limit``; and how many the offset skipped.

    Raises:
        ApplicationError: BAD_REQUEST for what these queries cannot do (ancestors, cursors, projections…).
    """
    if q.HasField("ancestor") or q.start_cursor or q.end_cursor or q.projection or q.distinct_on:
        raise apiproxy_errors.ApplicationError(
            BAD_REQUEST, f"kiln answers {KIND} queries with filters, orders, offset and limit only (no ancestor, "
                         "cursor or projection)")
    entities: list[pb.Entity] = []
    start_after = ""
    while True:
        page = _rpc.call(sdk_blobstore.stub().QueryBlobInfo, bpb.QueryBlobInfoRequest(start_after=start_after),
                         timeout=_timeout(ctx), table=sdk_blobstore.ERRORS)
        entities.extend(_entity(i) for i in page.infos)
        if not page.more or not page.infos:
            break
        start_after = page.infos[-1].blob_key
    if q.HasField("filter"):
        entities = [e for e in entities if _matches(e, q.filter)]
    if q.order:
        entities.sort(key=functools.cmp_to_key(_order_key(q.order)))
    skipped = min(offset, len(entities))
    entities = entities[offset:]
    return (entities if limit is None else entities[:limit]), skipped
