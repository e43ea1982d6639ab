"""The composite indexes App Engine requires for queries that keep ``__key__`` as an index component
(datastore_svc/indexneeds.py). The expected indexes are what Google's datastore stub (appengine-python-standard,
``require_indexes=True``, no index.yaml entries) suggested for the same queries, recorded here."""

from __future__ import annotations

import pytest

from datastore_svc import indexneeds
from datastore_svc.index import IndexDef

KEY = "__key__"


def need(filters=(), orders=(), projection=(), distinct=False, ancestor=False, kind="K"):
    return indexneeds.requirement(kind, ancestor, list(filters), list(orders), list(projection), distinct)


@pytest.mark.parametrize("query, stub_suggests", [
    (dict(filters=[(KEY, "="), ("num", ">")]), ("K", False, (KEY, "num"))),
    (dict(filters=[(KEY, "=")], projection=["a"]), ("K", False, (KEY, "a"))),
    (dict(filters=[(KEY, "<")], projection=["a"]), ("K", False, (KEY, "a"))),
    (dict(filters=[(KEY, ">=")], projection=["a"]), ("K", False, (KEY, "a"))),
    (dict(filters=[(KEY, "="), ("num", "=")], projection=["a"]), ("K", False, (KEY, "a", "num"))),
    (dict(filters=[(KEY, "="), ("num", ">")], ancestor=True), ("K", True, (KEY, "num"))),
])
def test_key_components_need_the_index_googles_stub_suggests(query, stub_suggests):
    req = need(**query)
    assert req is not None and req.names_key
    got = indexneeds.recommended(req)
    kind, ancestor, names = stub_suggests
    assert (got.kind, got.ancestor) == (kind, ancestor)
    assert {n for n, _ in got.props} == set(names)  # the stub lists equality properties in any order
    assert not any(desc for _, desc in got.props)


@pytest.mark.parametrize("query", [
    dict(projection=["a"]),                                      # one property: its built-in index
    dict(filters=[(KEY, "="), ("num", "=")]),                    # equality filters only
    dict(filters=[(KEY, "=")], orders=[("num", False)]),         # a key equality drops the orders
    dict(filters=[(KEY, "<")], orders=[(KEY, False)]),           # key order and key range: built in
    dict(filters=[("num", ">")], orders=[("num", False), (KEY, False)]),  # trailing key ascending: built in
    dict(filters=[(KEY, "=")], kind=""),                          # kindless queries never need one
])
def test_queries_the_stub_serves_without_a_composite_index(query):
    assert need(**query) is None


def test_a_descending_key_order_after_a_property_order_keeps_the_key_in_the_index():
    req = need(orders=[("a", False), (KEY, True)])
    assert req is not None and indexneeds.recommended(req).props == (("a", False), (KEY, True))


def test_requirements_without_the_key_are_left_to_the_planner():
    req = need(filters=[("a", "=")], orders=[("b", False)])
    assert req is not None and not req.names_key


def test_a_declared_index_ending_with_the_required_components_satisfies_it():
    req = need(filters=[(KEY, "="), ("c", "="), ("num", ">")])
    assert req is not None
    assert indexneeds.satisfied(req, [IndexDef("K", False, (("c", False), (KEY, False), ("num", False)))])
    assert indexneeds.satisfied(req, [IndexDef("K", False, ((KEY, False), ("c", False), ("num", True)))])
    # the inequality's property must come last; an index of another kind or missing a property does not serve
    assert not indexneeds.satisfied(req, [IndexDef("K", False, (("num", False), (KEY, False), ("c", False)))])
    assert not indexneeds.satisfied(req, [IndexDef("L", False, ((KEY, False), ("c", False), ("num", False)))])
    assert not indexneeds.satisfied(req, [IndexDef("K", False, ((KEY, False), ("num", False)))])


def test_indexes_sharing_the_ending_together_cover_the_equality_properties():
    req = need(filters=[(KEY, "="), ("c", "="), ("num", ">")])
    assert req is not None
    assert indexneeds.satisfied(req, [IndexDef("K", False, ((KEY, False), ("num", False))),
                                      IndexDef("K", False, (("c", False), ("num", False)))])


def test_an_ancestor_query_needs_an_ancestor_index_and_a_plain_query_cannot_use_one():
    plain = need(filters=[(KEY, "="), ("num", ">")])
    under = need(filters=[(KEY, "="), ("num", ">")], ancestor=True)
    assert plain is not None and under is not None
    with_ancestor = IndexDef("K", True, ((KEY, False), ("num", False)))
    without = IndexDef("K", False, ((KEY, False), ("num", False)))
    assert indexneeds.satisfied(under, [with_ancestor]) and not indexneeds.satisfied(under, [without])
    assert indexneeds.satisfied(plain, [without]) and not indexneeds.satisfied(plain, [with_ancestor])


def test_a_required_direction_must_match_and_unordered_projections_match_in_any_order():
    desc = need(orders=[("a", False), (KEY, True)])
    assert desc is not None
    assert not indexneeds.satisfied(desc, [IndexDef("K", False, (("a", False), (KEY, False)))])
    proj = need(filters=[(KEY, "<")], projection=["a", "b"])
    assert proj is not None
    assert indexneeds.satisfied(proj, [IndexDef("K", False, ((KEY, False), ("b", True), ("a", False)))])
