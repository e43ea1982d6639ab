"""GQL on the service side: a ``GqlQuery`` message becomes a structured ``Query``.

Parsing is cached by query text, so an app that re-runs one GQL string (as the
App Engine docs recommend) pays for the parse once per service process.
Bindings arrive as protobuf ``Value`` messages; literals in the text (``KEY``,
``USER``, ``GEOPT``, ``DATETIME``, ``DATE``, ``TIME``) become values here, in
the caller's app and the query's namespace.
"""

from __future__ import annotations

import datetime
import functools
from typing import Any

from kiln import gql
from kiln.errors import BadRequestError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

_OPS = {
    "<": pb.PropertyFilter.OPERATOR_LESS_THAN, "<=": pb.PropertyFilter.OPERATOR_LESS_THAN_OR_EQUAL,
    ">": pb.PropertyFilter.OPERATOR_GREATER_THAN, ">=": pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL,
    "=": pb.PropertyFilter.OPERATOR_EQUAL, "!=": pb.PropertyFilter.OPERATOR_NOT_EQUAL,
    "IN": pb.PropertyFilter.OPERATOR_IN,
}
_EPOCH = datetime.datetime(1970, 1, 1)


@functools.lru_cache(maxsize=512)
def _parse(text: str) -> gql.GqlStatement:
    return gql.parse(text)


def to_query(msg: pb.GqlQuery, app_id: str, namespace: str) -> pb.Query:
    """Parse (cached), bind and convert a GQL query.

    Raises:
        GqlError: bad GQL or bindings; the message names the token and position.
    """
    stmt = _parse(msg.query_string)
    bound = gql.bind(stmt, [_argument(v) for v in msg.positional_bindings],
                     {name: _argument(v) for name, v in msg.named_bindings.items()})
    query = pb.Query(kind=bound.kind or "", keys_only=bound.keys_only, projection=bound.projection)
    if bound.distinct:
        query.distinct_on.extend(bound.projection)
    if bound.ancestor is not None:
        ancestor = _value(bound.ancestor, app_id, namespace)
        if not ancestor.HasField("key_value"):
            raise gql.BindingError("ANCESTOR IS needs a key", None, "ANCESTOR")
        query.ancestor.CopyFrom(ancestor.key_value)
    filters = []
    for cond in bound.conditions:
        value = _value(cond.value, app_id, namespace)
        op = cond.op
        if value.HasField("array_value") and op == "=":
            op = "IN"  # App Engine treats '= (list)' as IN
        filters.append(pb.Filter(property_filter=pb.PropertyFilter(
            property=pb.PropertyReference(name=cond.prop), op=_OPS[op], value=value)))
    if len(filters) == 1:
        query.filter.CopyFrom(filters[0])
    elif filters:
        query.filter.composite_filter.op = pb.CompositeFilter.OPERATOR_AND
        query.filter.composite_filter.filters.extend(filters)
    for order in bound.orders:
        query.order.add(property=pb.PropertyReference(name=order.prop),
                        direction=pb.PropertyOrder.DIRECTION_DESCENDING if order.descending
                        else pb.PropertyOrder.DIRECTION_ASCENDING)
    if bound.limit is not None:
        query.limit = bound.limit
    if bound.offset is not None:
        query.offset = bound.offset
    return query


def _argument(value: pb.Value) -> Any:
    # gql.bind wants plain ints for LIMIT/OFFSET and sequences for IN.
    if value.HasField("integer_value"):
        return value.integer_value
    if value.HasField("array_value"):
        return tuple(value.array_value.values)
    return value


def _value(value: Any, app_id: str, namespace: str) -> pb.Value:
    if isinstance(value, pb.Value):
        return value
    if isinstance(value, tuple | gql.ListLiteral):
        items = value.values if isinstance(value, gql.ListLiteral) else value
        return pb.Value(array_value=pb.ArrayValue(values=[_value(v, app_id, namespace) for v in items]))
    if value is None:
        return pb.Value(null_value=pb.NULL_VALUE_UNSPECIFIED)
    if isinstance(value, bool):
        return pb.Value(boolean_value=value)
    if isinstance(value, int):
        return pb.Value(integer_value=value)
    if isinstance(value, float):
        return pb.Value(double_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, datetime.datetime):
        return _timestamp(value - _EPOCH)
    if isinstance(value, datetime.date):
        return _timestamp(datetime.datetime.combine(value, datetime.time()) - _EPOCH, pb.MEANING_DATE)
    if isinstance(value, datetime.time):
        # App Engine stores a time as that time on 1970-01-01.
        return _timestamp(datetime.datetime.combine(_EPOCH.date(), value) - _EPOCH, pb.MEANING_TIME)
    if isinstance(value, gql.KeyLiteral):
        return pb.Value(key_value=_key(value, app_id, namespace))
    if isinstance(value, gql.UserLiteral):
        return pb.Value(user_value=pb.User(email=value.email))
    if isinstance(value, gql.GeoPtLiteral):
        return pb.Value(geo_point_value=pb.GeoPoint(latitude=value.lat, longitude=value.lon))
    raise BadRequestError(f"GQL: cannot use a value of type {type(value).__name__}")


def _timestamp(delta: datetime.timedelta, meaning: int = pb.MEANING_UNSPECIFIED) -> pb.Value:
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    out = pb.Value(meaning=meaning)  # type: ignore[arg-type]
    out.timestamp_value.seconds, rest = divmod(micros, 1_000_000)
    out.timestamp_value.nanos = rest * 1000
    return out


def _key(literal: gql.KeyLiteral, app_id: str, namespace: str) -> pb.Key:
    if literal.encoded is not None:
        import base64
        try:
            raw = base64.urlsafe_b64decode(literal.encoded + "=" * (-len(literal.encoded) % 4))
            return pb.Key.FromString(raw)
        except Exception:  # noqa: BLE001 - any decoding failure is a bad key string
            raise BadRequestError(f"GQL: KEY({literal.encoded!r}) is not an encoded key") from None
    key = pb.Key(partition_id=pb.PartitionId(app_id=app_id, namespace=namespace))
    for kind, ident in literal.path:
        if isinstance(ident, int):
            key.path.add(kind=kind, id=ident)
        else:
            key.path.add(kind=kind, name=ident)
    return key
