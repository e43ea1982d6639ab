"""Query normalisation: App Engine's rules, checked before any storage is touched."""

from __future__ import annotations

import pytest

from datastore_svc import query
from datastore_svc.index import IndexDef
from kiln.errors import BadRequestError, NeedIndexError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

OPS = {"<": pb.PropertyFilter.OPERATOR_LESS_THAN, ">": pb.PropertyFilter.OPERATOR_GREATER_THAN,
       "=": pb.PropertyFilter.OPERATOR_EQUAL, "!=": pb.PropertyFilter.OPERATOR_NOT_EQUAL,
       "IN": pb.PropertyFilter.OPERATOR_IN}


def make(kind="K", *filters, order=(), **kwargs):
    q = pb.Query(kind=kind, **kwargs)
    if filters:
        q.filter.composite_filter.op = pb.CompositeFilter.OPERATOR_AND
        for name, op, value in filters:
            f = q.filter.composite_filter.filters.add().property_filter
            f.property.name, f.op = name, OPS[op]
            if isinstance(value, list):
                f.value.array_value.values.extend(pb.Value(integer_value=v) for v in value)
            else:
                f.value.integer_value = value
    for name in order:
        q.order.add(property=pb.PropertyReference(name=name.lstrip("-")),
                    direction=pb.PropertyOrder.DIRECTION_DESCENDING if name.startswith("-")
                    else pb.PropertyOrder.DIRECTION_ASCENDING)
    return q


def test_in_and_not_equal_split_into_sub_queries():
    norm = query.normalize(make("K", ("a", "IN", [1, 2, 3]), ("b", "!=", 5)), "")
    assert len(norm.subs) == 6


def test_more_than_thirty_sub_queries_is_refused():
    with pytest.raises(BadRequestError, match="at most 30"):
        query.normalize(make("K", ("a", "IN", list(range(6))), ("b", "IN", list(range(6)))), "")


def test_inequality_without_order_sorts_by_its_property():
    sub = query.normalize(make("K", ("a", ">", 1)), "").subs[0]
    assert sub.orders == [("a", False)]


def test_order_on_an_equality_property_is_dropped():
    sub = query.normalize(make("K", ("a", "=", 1), order=["a", "b"]), "").subs[0]
    assert sub.orders == [("b", False)]


def test_trailing_key_ascending_order_is_implicit():
    sub = query.normalize(make("K", order=["a", "__key__"]), "").subs[0]
    assert sub.orders == [("a", False)]


def test_orders_after_key_are_dropped():
    sub = query.normalize(make("K", order=["-__key__", "a"]), "").subs[0]
    assert sub.orders == [("__key__", True)]


def test_kindless_query_cannot_filter_on_properties():
    with pytest.raises(BadRequestError, match="kindless"):
        query.normalize(make("", ("a", "=", 1)), "")


def test_distinct_needs_orders_within_the_projection():
    with pytest.raises(BadRequestError, match="distinct"):
        query.normalize(make("K", order=["b"], projection=["a"], distinct_on=["a"]), "")


def test_key_descending_needs_a_composite_index():
    sub = query.normalize(make("K", order=["-__key__"]), "").subs[0]
    with pytest.raises(NeedIndexError, match="__key__"):
        query.choose(sub, None, "app", "", [], [])  # type: ignore[arg-type]


def test_matching_composite_index_is_chosen():
    sub = query.normalize(make("K", ("a", "=", 1), order=["-b"]), "").subs[0]
    planned = query.choose(sub, None, "app", "", [IndexDef("K", False, (("a", False), ("b", True)))], [])  # type: ignore[arg-type]
    assert planned.composite == IndexDef("K", False, (("a", False), ("b", True)))


def test_index_with_the_wrong_direction_does_not_serve():
    sub = query.normalize(make("K", ("a", "=", 1), order=["-b"]), "").subs[0]
    with pytest.raises(NeedIndexError):
        query.choose(sub, None, "app", "", [IndexDef("K", False, (("a", False), ("b", False)))], [])  # type: ignore[arg-type]


def test_range_bounds_stay_within_the_value_type():
    r = query.Range([(">", b"\x20" + bytes(9))])
    lo, hi = r.field_bounds(False)
    assert hi == b"\x21"
    lo_d, hi_d = r.field_bounds(True)
    assert lo_d == bytes([255 - 0x20])
