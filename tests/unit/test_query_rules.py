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


def key_filter(q: pb.Query, op: str, name: str) -> pb.Query:
    """Add a ``__key__`` filter on the key ``K``/``name`` to ``q`` (which has a composite filter or none)."""
    if not q.HasField("filter"):
        q.filter.composite_filter.op = pb.CompositeFilter.OPERATOR_AND
    f = q.filter.composite_filter.filters.add().property_filter
    f.property.name = "__key__"
    f.op = {"=": pb.PropertyFilter.OPERATOR_EQUAL, "<": pb.PropertyFilter.OPERATOR_LESS_THAN}[op]
    f.value.key_value.path.add(kind="K", name=name)
    return q


def test_a_kindless_query_sorted_by_key_descending_is_refused_unless_a_key_equality_makes_the_order_moot():
    # Found by the datastore differential, as Google's stub decides: a __key__ equality drops the orders, but not
    # when __key__ also has an inequality.
    assert query.normalize(key_filter(make("", order=["-__key__"]), "=", "e1"), "").subs[0].orders == []
    with pytest.raises(BadRequestError, match="kindless"):
        query.normalize(key_filter(make("", order=["-__key__"]), "<", "e1"), "")
    with pytest.raises(BadRequestError, match="kindless"):
        query.normalize(key_filter(key_filter(make("", order=["-__key__"]), "=", "e1"), "<", "e1"), "")


def test_a_key_equality_does_not_excuse_the_first_order_when_the_key_also_has_an_inequality():
    q = key_filter(key_filter(make("K", order=["a"]), "=", "e1"), "<", "e1")
    with pytest.raises(BadRequestError, match="first sort order"):
        query.normalize(q, "")


def test_a_key_equality_with_an_inequality_on_a_property_needs_an_index_naming_the_key():
    sub = query.normalize(key_filter(make("K", ("n", ">", 1)), "=", "e1"), "").subs[0]
    with pytest.raises(NeedIndexError, match="__key__"):
        query.choose(sub, None, "app", "", [], [])  # type: ignore[arg-type] - refused before any storage


def test_several_equality_filters_on_one_property_with_a_sort_ask_for_the_property_once_as_googles_stub_does():
    sub = query.normalize(make("K", ("a", "=", 1), ("a", "=", 2), order=["-b"]), "").subs[0]
    assert query.needed_index(sub) == IndexDef("K", False, (("a", False), ("b", True)))
    with pytest.raises(NeedIndexError) as raised:
        query.choose(sub, None, "app", "", [], [])  # type: ignore[arg-type]
    assert str(raised.value).count("name: a") == 1 and "name: b" in str(raised.value)


def test_several_equality_filters_on_one_property_are_served_by_the_index_naming_it_once():
    sub = query.normalize(make("K", ("a", "=", 1), ("a", "=", 2), ("b", ">", 0)), "").subs[0]
    defn = IndexDef("K", False, (("a", False), ("b", False)))
    planned = query.choose(sub, None, "app", "", [defn], [])  # type: ignore[arg-type]
    assert planned.composite == defn
    assert planned.components == [("b", False)]
