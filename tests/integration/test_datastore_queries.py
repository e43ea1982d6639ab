"""Datastore query semantics over gRPC, on both engines (embedded and a real Cassandra).

Each test uses an app of its own, so the data of one test never shows in another.
"""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from kiln.pb.datastore.v1 import datastore_pb2 as pb
from tests.integration import indexes
from tests.integration.conftest import app_metadata

pytestmark = pytest.mark.nats

ASC, DESC = pb.PropertyOrder.DIRECTION_ASCENDING, pb.PropertyOrder.DIRECTION_DESCENDING
OPS = {"<": pb.PropertyFilter.OPERATOR_LESS_THAN, "<=": pb.PropertyFilter.OPERATOR_LESS_THAN_OR_EQUAL,
       ">": pb.PropertyFilter.OPERATOR_GREATER_THAN, ">=": pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL,
       "=": pb.PropertyFilter.OPERATOR_EQUAL, "!=": pb.PropertyFilter.OPERATOR_NOT_EQUAL,
       "IN": pb.PropertyFilter.OPERATOR_IN}


class Client:
    """A stub bound to a fresh app, with helpers that keep the tests short."""

    def __init__(self, stub):
        self.stub = stub
        self.app = "q" + uuid.uuid4().hex[:12]
        self.md = app_metadata(self.app)

    def put(self, *entities):
        return list(self.stub.Put(pb.PutRequest(entities=entities), metadata=self.md).keys)

    def run(self, query, *, batch_size=0, namespace=""):
        req = pb.RunQueryRequest(query=query, batch_size=batch_size)
        req.partition_id.namespace = namespace
        return self.stub.RunQuery(req, metadata=self.md)

    def all(self, query, *, batch_size=3):
        """Every result, following cursors in small batches (as clients do)."""
        query = pb.Query().__class__.FromString(query.SerializeToString())
        out = []
        while True:
            batch = self.run(query, batch_size=batch_size).batch
            out += list(batch.entity_results)
            if batch.more_results != pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED:
                return out
            query.start_cursor = batch.end_cursor
            if query.HasField("limit"):
                query.limit -= len(batch.entity_results)
            query.offset = max(0, query.offset - batch.skipped_results)

    def indexes(self, *defs, remove_unlisted=False):
        indexes.declare(self.stub, self.md, *defs, remove_unlisted=remove_unlisted)


@pytest.fixture
def db(datastore_stub):
    return Client(datastore_stub)


def key(*pairs, namespace=""):
    out = pb.Key()
    out.partition_id.namespace = namespace
    for kind, ident in zip(pairs[::2], pairs[1::2]):
        elem = out.path.add(kind=kind)
        if isinstance(ident, int):
            elem.id = ident
        elif isinstance(ident, str):
            elem.name = ident  # None leaves the key incomplete
    return out


def val(v):
    """A Python value as a protobuf Value."""
    if isinstance(v, pb.Value):
        return v
    if v is None:
        return pb.Value(null_value=pb.NULL_VALUE_UNSPECIFIED)
    if isinstance(v, bool):
        return pb.Value(boolean_value=v)
    if isinstance(v, int):
        return pb.Value(integer_value=v)
    if isinstance(v, float):
        return pb.Value(double_value=v)
    if isinstance(v, str):
        return pb.Value(string_value=v)
    if isinstance(v, bytes):
        return pb.Value(blob_value=v, meaning=pb.MEANING_BYTESTRING)
    if isinstance(v, list):
        return pb.Value(array_value=pb.ArrayValue(values=[val(x) for x in v]))
    if isinstance(v, pb.Key):
        return pb.Value(key_value=v)
    raise TypeError(v)


def ent(k, **props):
    e = pb.Entity(key=k)
    for name, v in props.items():
        e.properties[name].CopyFrom(val(v))
    return e


def flt(name, op, v):
    return pb.Filter(property_filter=pb.PropertyFilter(property=pb.PropertyReference(name=name), op=OPS[op],
                                                       value=val(v)))


def q(kind="", *filters, order=(), ancestor=None, **kwargs):
    query = pb.Query(kind=kind, **kwargs)
    if len(filters) == 1:
        query.filter.CopyFrom(filters[0])
    elif filters:
        query.filter.composite_filter.op = pb.CompositeFilter.OPERATOR_AND
        query.filter.composite_filter.filters.extend(filters)
    for name in order:
        query.order.add(property=pb.PropertyReference(name=name.lstrip("-")),
                        direction=DESC if name.startswith("-") else ASC)
    if ancestor is not None:
        query.ancestor.CopyFrom(ancestor)
    return query


def names(results):
    return [r.entity.key.path[-1].name for r in results]


def people(db):
    db.put(ent(key("P", "ann"), age=31, city="Oslo", tags=["a", "b"]),
           ent(key("P", "bob"), age=25, city="Rome", tags=["b"]),
           ent(key("P", "cat"), age=40, city="Oslo", tags=["c", "a"]),
           ent(key("P", "dan"), age=25, city="Oslo"),
           ent(key("P", "eve"), city="Rome"),
           ent(key("Other", "x"), age=1))


def error_of(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_kind_query_returns_every_entity_of_the_kind_in_key_order(db):
    people(db)
    assert names(db.all(q("P"))) == ["ann", "bob", "cat", "dan", "eve"]


def test_kindless_query_returns_every_kind_in_key_order(db):
    people(db)
    assert names(db.all(q())) == ["x", "ann", "bob", "cat", "dan", "eve"]


def test_equality_filter_matches_only_equal_values(db):
    people(db)
    assert names(db.all(q("P", flt("city", "=", "Oslo")))) == ["ann", "cat", "dan"]


def test_inequality_filters_sort_by_the_property_then_key(db):
    people(db)
    assert names(db.all(q("P", flt("age", ">=", 25)))) == ["bob", "dan", "ann", "cat"]
    assert names(db.all(q("P", flt("age", ">", 25), flt("age", "<=", 40)))) == ["ann", "cat"]
    assert names(db.all(q("P", flt("age", "<", 31)))) == ["bob", "dan"]


def test_descending_order_breaks_ties_by_key_ascending(db):
    people(db)
    assert names(db.all(q("P", order=["-age"]))) == ["cat", "ann", "bob", "dan"]


def test_entities_without_the_sorted_property_are_left_out(db):
    people(db)
    assert "eve" not in names(db.all(q("P", order=["age"])))


def test_not_equal_filter_returns_both_sides(db):
    people(db)
    assert names(db.all(q("P", flt("age", "!=", 25)))) == ["ann", "cat"]


def test_in_filter_matches_any_listed_value_once(db):
    people(db)
    assert sorted(names(db.all(q("P", flt("city", "IN", ["Rome", "Oslo"]))))) == ["ann", "bob", "cat", "dan", "eve"]
    assert names(db.all(q("P", flt("tags", "IN", ["a", "b"])))) == ["ann", "bob", "cat"]


def test_several_equality_filters_need_no_composite_index(db):
    people(db)
    assert names(db.all(q("P", flt("city", "=", "Oslo"), flt("age", "=", 25)))) == ["dan"]
    assert names(db.all(q("P", flt("tags", "=", "a"), flt("tags", "=", "b")))) == ["ann"]


def test_list_property_matches_when_any_value_matches_and_appears_once(db):
    people(db)
    assert names(db.all(q("P", flt("tags", "=", "a")))) == ["ann", "cat"]
    assert names(db.all(q("P", flt("tags", ">=", "a")))) == ["ann", "cat", "bob"]


def test_list_property_sorts_by_smallest_value_ascending_and_largest_descending(db):
    db.put(ent(key("L", "one"), v=[5, 1]), ent(key("L", "two"), v=[3]), ent(key("L", "three"), v=[4, 9]))
    assert names(db.all(q("L", order=["v"]))) == ["one", "two", "three"]
    assert names(db.all(q("L", order=["-v"]))) == ["three", "one", "two"]


def test_mixed_value_types_sort_in_app_engine_order(db):
    db.put(ent(key("M", "str"), v="a"), ent(key("M", "int"), v=7), ent(key("M", "float"), v=1.5),
           ent(key("M", "null"), v=None), ent(key("M", "bool"), v=False), ent(key("M", "key"), v=key("Z", 1)))
    assert names(db.all(q("M", order=["v"]))) == ["null", "int", "bool", "str", "float", "key"]


def test_inequality_filter_matches_only_its_value_type(db):
    db.put(ent(key("M", "str"), v="a"), ent(key("M", "int"), v=7), ent(key("M", "null"), v=None))
    assert names(db.all(q("M", flt("v", ">", 0)))) == ["int"]


def test_inequality_on_two_properties_is_refused(db):
    err = error_of(lambda: db.run(q("P", flt("age", ">", 1), flt("city", ">", "A"))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only one property" in err.details()


def test_first_sort_order_must_be_the_inequality_property(db):
    err = error_of(lambda: db.run(q("P", flt("age", ">", 1), order=["city"])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'age'" in err.details()


def test_query_needing_a_composite_index_fails_naming_the_index(db):
    people(db)
    err = error_of(lambda: db.run(q("P", flt("city", "=", "Oslo"), order=["-age"])))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(err.trailing_metadata())["kiln-error-code"] == "NEED_INDEX"
    assert "- kind: P\n  properties:\n  - name: city\n  - name: age\n    direction: desc" in err.details()


def test_declared_composite_index_is_built_for_existing_entities_and_serves(db):
    people(db)
    db.indexes(("P", False, ["city", "-age"]))
    assert names(db.all(q("P", flt("city", "=", "Oslo"), order=["-age"]))) == ["cat", "ann", "dan"]
    db.put(ent(key("P", "fay"), age=50, city="Oslo"))
    assert names(db.all(q("P", flt("city", "=", "Oslo"), order=["-age"]))) == ["fay", "cat", "ann", "dan"]


def test_vacuum_right_after_a_declaration_deletes_the_index_still_being_built(db):
    people(db)
    keep = pb.CompositeIndex(kind="P", properties=[pb.PropertyOrder(property=pb.PropertyReference(name="city")),
                                                   pb.PropertyOrder(property=pb.PropertyReference(name="age"))])
    dropped = pb.CompositeIndex(kind="P", properties=[pb.PropertyOrder(property=pb.PropertyReference(name="age")),
                                                      pb.PropertyOrder(property=pb.PropertyReference(name="city"))])
    db.stub.UpdateIndexes(pb.UpdateIndexesRequest(indexes=[keep, dropped]), metadata=db.md)
    db.stub.UpdateIndexes(pb.UpdateIndexesRequest(indexes=[keep], remove_unlisted=True), metadata=db.md)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = db.stub.ListIndexes(pb.ListIndexesRequest(), metadata=db.md).indexes
        if [(i.properties[0].property.name, i.state) for i in listed] == [("city", pb.CompositeIndex.STATE_SERVING)]:
            break
        time.sleep(0.1)
    assert [(i.properties[0].property.name, i.state) for i in listed] == [("city", pb.CompositeIndex.STATE_SERVING)]
    time.sleep(1)  # a build finishing late must not bring the vacuumed index back
    listed = db.stub.ListIndexes(pb.ListIndexesRequest(), metadata=db.md).indexes
    assert [i.properties[0].property.name for i in listed] == ["city"]


def test_composite_index_serves_equality_plus_inequality(db):
    people(db)
    db.indexes(("P", False, ["city", "age"]))
    assert names(db.all(q("P", flt("city", "=", "Oslo"), flt("age", "<", 35)))) == ["dan", "ann"]


def test_ancestor_query_with_sort_order_uses_an_ancestor_index(db):
    parent = key("Book", "b")
    db.put(*[ent(key("Book", "b", "G", n), date=d) for n, d in (("x", 3), ("y", 1), ("z", 2))],
           ent(key("G", "elsewhere"), date=9))
    err = error_of(lambda: db.run(q("G", order=["-date"], ancestor=parent)))
    assert "ancestor: yes" in err.details()
    db.indexes(("G", True, ["-date"]))
    assert names(db.all(q("G", order=["-date"], ancestor=parent))) == ["x", "z", "y"]


def test_ancestor_query_with_equality_filter_needs_no_index(db):
    parent = key("Book", "b")
    db.put(ent(key("Book", "b", "G", "x"), author="ann"), ent(key("Book", "b", "G", "y"), author="bob"),
           ent(key("G", "z"), author="ann"))
    assert names(db.all(q("G", flt("author", "=", "ann"), ancestor=parent))) == ["x"]


def test_key_filters_select_a_key_range(db):
    people(db)
    assert names(db.all(q("P", flt("__key__", ">", key("P", "bob")), flt("__key__", "<=", key("P", "dan"))))) \
        == ["cat", "dan"]


def test_limit_and_offset_skip_and_cut(db):
    people(db)
    batch = db.run(q("P", order=["age"], offset=1, limit=2)).batch
    assert names(batch.entity_results) == ["dan", "ann"]
    assert batch.skipped_results == 1
    assert batch.more_results == pb.QueryResultBatch.MORE_RESULTS_TYPE_MORE_RESULTS_AFTER_LIMIT


def test_cursors_resume_exactly_where_the_last_batch_ended(db):
    db.put(*[ent(key("C", f"n{i:03}"), v=i % 7) for i in range(50)])
    every = names(db.all(q("C", order=["-v"]), batch_size=50))
    paged = names(db.all(q("C", order=["-v"]), batch_size=4))
    assert paged == every
    assert len(set(paged)) == 50


def test_result_cursor_resumes_after_that_result(db):
    people(db)
    first = db.run(q("P", order=["age"], limit=2)).batch.entity_results
    rest = db.run(q("P", order=["age"], start_cursor=first[0].cursor)).batch.entity_results
    assert names(rest) == ["dan", "ann", "cat"]


def test_end_cursor_stops_right_after_the_result_it_came_from(db):
    people(db)
    results = db.run(q("P")).batch.entity_results
    assert names(db.all(q("P", end_cursor=results[2].cursor))) == ["ann", "bob", "cat"]


def test_garbage_cursor_is_invalid_argument(db):
    err = error_of(lambda: db.run(q("P", start_cursor=b"nonsense")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_keys_only_query_returns_keys_without_properties(db):
    people(db)
    results = db.all(q("P", flt("city", "=", "Rome"), keys_only=True))
    assert names(results) == ["bob", "eve"]
    assert all(not r.entity.properties for r in results)


def test_projection_returns_only_projected_values_one_result_per_list_value(db):
    people(db)
    db.indexes(("P", False, ["city", "tags"]))
    results = db.all(q("P", flt("city", "=", "Oslo"), projection=["tags"]))
    got = [(r.entity.key.path[-1].name, dict(r.entity.properties)["tags"].string_value) for r in results]
    assert sorted(got) == [("ann", "a"), ("ann", "b"), ("cat", "a"), ("cat", "c")]
    assert all(set(r.entity.properties) == {"tags"} for r in results)


def test_single_property_projection_is_ordered_by_that_property(db):
    people(db)
    results = db.all(q("P", projection=["age"]))
    assert [r.entity.properties["age"].integer_value for r in results] == [25, 25, 31, 40]


def test_distinct_projection_returns_each_combination_once(db):
    people(db)
    results = db.all(q("P", projection=["city"], distinct_on=["city"]), batch_size=1)
    assert [r.entity.properties["city"].string_value for r in results] == ["Oslo", "Rome"]


def test_projecting_a_property_with_an_equality_filter_is_refused(db):
    err = error_of(lambda: db.run(q("P", flt("city", "=", "Oslo"), projection=["city"])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_namespaces_keep_query_results_apart(db):
    db.put(ent(key("N", "a", namespace="one"), v=1), ent(key("N", "b", namespace="two"), v=1))
    req = pb.RunQueryRequest(query=q("N"))
    req.partition_id.namespace = "one"
    assert names(db.stub.RunQuery(req, metadata=db.md).batch.entity_results) == ["a"]


def test_updated_entity_leaves_queries_on_its_old_value(db):
    db.put(ent(key("U", "a"), v=1))
    db.put(ent(key("U", "a"), v=2))
    assert names(db.all(q("U", flt("v", "=", 1)))) == []
    assert names(db.all(q("U", flt("v", "=", 2)))) == ["a"]


def test_deleted_entity_leaves_every_index(db):
    people(db)
    db.stub.Delete(pb.DeleteRequest(keys=[key("P", "ann")]), metadata=db.md)
    assert "ann" not in names(db.all(q("P", order=["age"])))
    assert "ann" not in names(db.all(q("P")))


def test_gql_query_with_positional_and_named_bindings(db):
    people(db)
    gql = pb.GqlQuery(query_string="SELECT * FROM P WHERE city = :1 AND age > :min ORDER BY age DESC")
    gql.positional_bindings.add(string_value="Oslo")
    gql.named_bindings["min"].integer_value = 20
    db.indexes(("P", False, ["city", "-age"]))
    resp = db.stub.RunQuery(pb.RunQueryRequest(gql_query=gql), metadata=db.md)
    assert names(resp.batch.entity_results) == ["cat", "ann", "dan"]
    assert resp.query.kind == "P"


def test_gql_literals_and_limit(db):
    db.put(ent(key("K", "a"), ref=key("P", "ann")), ent(key("K", "b"), ref=key("P", "bob")))
    gql = pb.GqlQuery(query_string="SELECT __key__ FROM K WHERE ref = KEY('P', 'bob') LIMIT 5")
    resp = db.stub.RunQuery(pb.RunQueryRequest(gql_query=gql), metadata=db.md)
    assert [r.entity.key.path[-1].name for r in resp.batch.entity_results] == ["b"]


def test_bad_gql_names_the_token_and_position(db):
    gql = pb.GqlQuery(query_string="SELECT * FROM P WHERE age >> 3")
    err = error_of(lambda: db.stub.RunQuery(pb.RunQueryRequest(gql_query=gql), metadata=db.md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "position 27 near '>'" in err.details()


def test_kind_metadata_query_lists_kinds_with_entities(db):
    people(db)
    db.put(ent(key("Gone", "g")))
    db.stub.Delete(pb.DeleteRequest(keys=[key("Gone", "g")]), metadata=db.md)
    assert [r.entity.key.path[-1].name for r in db.all(q("__kind__"))] == ["Other", "P"]


def test_property_metadata_query_lists_properties_and_representations(db):
    db.put(ent(key("R", "a"), v=1, s="x"), ent(key("R", "b"), v="text"))
    results = db.all(q("__property__", ancestor=key("__kind__", "R")))
    got = {r.entity.key.path[-1].name: [v.string_value for v in
                                         r.entity.properties["property_representation"].array_value.values]
           for r in results}
    assert got == {"s": ["STRING"], "v": ["INT64", "STRING"]}


def test_namespace_metadata_query_lists_namespaces(db):
    db.put(ent(key("N", "a", namespace="blue")), ent(key("N", "b")))
    results = db.all(q("__namespace__"))
    assert [r.entity.key.path[-1].WhichOneof("id_type") for r in results] == ["id", "name"]
    assert results[1].entity.key.path[-1].name == "blue"


def test_filter_value_without_a_type_is_invalid_argument(db):
    query = q("P")
    query.filter.property_filter.property.name = "age"
    query.filter.property_filter.op = pb.PropertyFilter.OPERATOR_EQUAL
    query.filter.property_filter.value.CopyFrom(pb.Value())
    err = error_of(lambda: db.run(query))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "age" in err.details()


def test_incomplete_ancestor_is_invalid_argument(db):
    ancestor = pb.Key(path=[pb.PathElement(kind="Book")])
    err = error_of(lambda: db.run(q("G", ancestor=ancestor)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_query_for_another_apps_partition_is_refused(db):
    req = pb.RunQueryRequest(query=q("P"))
    req.partition_id.app_id = "someone-else"
    err = error_of(lambda: db.stub.RunQuery(req, metadata=db.md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_ancestor_of_another_app_is_refused(db):
    ancestor = key("Book", "b")
    ancestor.partition_id.app_id = "someone-else"
    err = error_of(lambda: db.run(q("G", ancestor=ancestor)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "app" in err.details()


def test_negative_limit_is_refused_and_the_service_keeps_serving(db):
    people(db)
    err = error_of(lambda: db.run(q("P", limit=-1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert names(db.all(q("P"))) == ["ann", "bob", "cat", "dan", "eve"]


def test_composite_index_with_a_repeated_property_is_refused(db):
    req = pb.UpdateIndexesRequest()
    index = req.indexes.add(kind="P")
    for _ in range(2):
        index.properties.add(property=pb.PropertyReference(name="a"), direction=ASC)
    err = error_of(lambda: db.stub.UpdateIndexes(req, metadata=db.md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert db.stub.ListIndexes(pb.ListIndexesRequest(), metadata=db.md).indexes == []


def test_key_filter_naming_another_app_is_refused(db):
    other = key("P", "ann")
    other.partition_id.app_id = "someone-else"
    err = error_of(lambda: db.run(q("K", flt("ref", "=", other))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another app" in err.details()
