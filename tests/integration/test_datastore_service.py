"""datastore_svc over gRPC, on both engines (embedded and a real Cassandra)."""

from __future__ import annotations

import uuid

import grpc
import pytest

from kiln.pb.datastore.v1 import datastore_pb2 as pb
from tests.integration.conftest import app_metadata
from tests.integration.test_datastore_queries import key as _key

pytestmark = pytest.mark.nats

APP = "dstest"
MD = app_metadata(APP)


def _entity(key, **props):
    e = pb.Entity(key=key)
    for name, value in props.items():
        e.properties[name].CopyFrom(value)
    return e


def _unique():
    return uuid.uuid4().hex


def test_put_then_get_returns_every_value_type(datastore_stub):
    e = _entity(_key("AllTypes", _unique()))
    e.properties["i"].integer_value = -(2**63)
    e.properties["f"].double_value = 1.5
    e.properties["b"].boolean_value = True
    e.properties["s"].string_value = "héllo"
    e.properties["t"].string_value = "x" * 5000
    e.properties["t"].meaning = pb.MEANING_TEXT
    e.properties["blob"].blob_value = bytes(range(256)) * 10
    e.properties["blob"].meaning = pb.MEANING_BLOB
    e.properties["ts"].timestamp_value.seconds = 1_700_000_000
    e.properties["ts"].timestamp_value.nanos = 123_456_000
    e.properties["geo"].geo_point_value.latitude = 45.5
    e.properties["geo"].geo_point_value.longitude = -122.6
    e.properties["u"].user_value.email = "a@example.com"
    e.properties["k"].key_value.CopyFrom(_key("Other", 7))
    e.properties["n"].null_value = pb.NULL_VALUE_UNSPECIFIED
    for v in ("a", "b"):
        e.properties["l"].array_value.values.add(string_value=v)
    e.properties["emb"].entity_value.properties["inner"].integer_value = 3
    key = datastore_stub.Put(pb.PutRequest(entities=[e]), metadata=MD).keys[0]
    got = datastore_stub.Get(pb.GetRequest(keys=[key]), metadata=MD).results[0].entity
    e.key.CopyFrom(key)
    e.properties["k"].key_value.partition_id.app_id = APP
    assert got == e


def test_incomplete_keys_get_distinct_new_ids(datastore_stub):
    ents = [_entity(_key("Auto", None)) for _ in range(5)]
    keys = datastore_stub.Put(pb.PutRequest(entities=ents), metadata=MD).keys
    ids = [k.path[-1].id for k in keys]
    assert all(i > 0 for i in ids)
    assert len(set(ids)) == 5
    more = datastore_stub.Put(pb.PutRequest(entities=[_entity(_key("Auto", None))]), metadata=MD).keys
    assert more[0].path[-1].id not in ids


def test_get_reports_missing_keys_in_request_order(datastore_stub):
    present = datastore_stub.Put(pb.PutRequest(entities=[_entity(_key("Order", _unique()))]), metadata=MD).keys[0]
    missing = _key("Order", _unique())
    results = datastore_stub.Get(pb.GetRequest(keys=[missing, present, missing]), metadata=MD).results
    assert [r.HasField("entity") for r in results] == [False, True, False]
    assert results[1].entity.key.path == present.path


def test_delete_removes_the_entity(datastore_stub):
    key = datastore_stub.Put(pb.PutRequest(entities=[_entity(_key("Del", _unique()))]), metadata=MD).keys[0]
    datastore_stub.Delete(pb.DeleteRequest(keys=[key]), metadata=MD)
    assert not datastore_stub.Get(pb.GetRequest(keys=[key]), metadata=MD).results[0].HasField("entity")


def test_apps_cannot_read_each_others_entities(datastore_stub):
    name = _unique()
    datastore_stub.Put(pb.PutRequest(entities=[_entity(_key("Secret", name))]), metadata=app_metadata("app-a"))
    result = datastore_stub.Get(pb.GetRequest(keys=[_key("Secret", name)]), metadata=app_metadata("app-b"))
    assert not result.results[0].HasField("entity")


def test_naming_another_app_in_a_key_is_refused(datastore_stub):
    key = _key("Secret", "x")
    key.partition_id.app_id = "app-a"
    with pytest.raises(grpc.RpcError) as err:
        datastore_stub.Get(pb.GetRequest(keys=[key]), metadata=app_metadata("app-b"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not match the calling app" in err.value.details()


def test_namespaces_are_isolated(datastore_stub):
    name = _unique()
    datastore_stub.Put(pb.PutRequest(entities=[_entity(_key("NS", name, namespace="one"))]), metadata=MD)
    other = datastore_stub.Get(pb.GetRequest(keys=[_key("NS", name, namespace="two")]), metadata=MD)
    same = datastore_stub.Get(pb.GetRequest(keys=[_key("NS", name, namespace="one")]), metadata=MD)
    assert not other.results[0].HasField("entity")
    assert same.results[0].HasField("entity")


def test_calls_without_an_app_token_are_unauthenticated(datastore_stub):
    with pytest.raises(grpc.RpcError) as err:
        datastore_stub.Get(pb.GetRequest(keys=[_key("K", "x")]))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_oversized_indexed_string_is_rejected_naming_the_property(datastore_stub):
    e = _entity(_key("Big", _unique()))
    e.properties["title"].string_value = "x" * 1501
    with pytest.raises(grpc.RpcError) as err:
        datastore_stub.Put(pb.PutRequest(entities=[e]), metadata=MD)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entities[0].title" in err.value.details()


def test_entity_over_one_mebibyte_is_rejected_and_nothing_is_written(datastore_stub):
    good = _entity(_key("Big", _unique()))
    big = _entity(_key("Big", _unique()))
    big.properties["data"].blob_value = b"x" * (1024 * 1024 + 10)
    big.properties["data"].meaning = pb.MEANING_BLOB
    with pytest.raises(grpc.RpcError) as err:
        datastore_stub.Put(pb.PutRequest(entities=[good, big]), metadata=MD)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than the limit" in err.value.details()
    assert not datastore_stub.Get(pb.GetRequest(keys=[good.key]), metadata=MD).results[0].HasField("entity")


def test_incomplete_key_in_get_is_rejected(datastore_stub):
    with pytest.raises(grpc.RpcError) as err:
        datastore_stub.Get(pb.GetRequest(keys=[_key("K", None)]), metadata=MD)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "incomplete key" in err.value.details()


def test_malformed_protobuf_is_refused_and_the_service_keeps_serving(datastore_stub):
    raw = datastore_stub.channel.unary_unary("/kiln.pb.datastore.v1.DatastoreService/Get")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff\x0f", metadata=MD)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf" in err.value.details()
    key = datastore_stub.Put(pb.PutRequest(entities=[_entity(_key("After", _unique()))]), metadata=MD).keys[0]
    assert datastore_stub.Get(pb.GetRequest(keys=[key]), metadata=MD).results[0].HasField("entity")


def test_ancestor_query_returns_descendants_of_a_kind_in_key_order(datastore_stub):
    root = _key("Book", _unique())
    kids = []
    for i in range(3):
        k = _key("Book", root.path[0].name, "Greeting", i + 1)
        kids.append(_entity(k, content=pb.Value(string_value=f"g{i}")))
    other = _entity(_key("Book", root.path[0].name, "Note", 1))
    unrelated = _entity(_key("Book", _unique(), "Greeting", 1))
    datastore_stub.Put(pb.PutRequest(entities=[*reversed(kids), other, unrelated]), metadata=MD)
    resp = datastore_stub.RunQuery(pb.RunQueryRequest(query=pb.Query(kind="Greeting", ancestor=root)), metadata=MD)
    contents = [r.entity.properties["content"].string_value for r in resp.batch.entity_results]
    assert contents == ["g0", "g1", "g2"]
    assert resp.batch.more_results == pb.QueryResultBatch.MORE_RESULTS_TYPE_NO_MORE_RESULTS


def test_ancestor_query_resumes_from_a_cursor(datastore_stub):
    root = _key("Book", _unique())
    ents = [_entity(_key("Book", root.path[0].name, "G", i + 1)) for i in range(5)]
    datastore_stub.Put(pb.PutRequest(entities=ents), metadata=MD)
    first = datastore_stub.RunQuery(pb.RunQueryRequest(query=pb.Query(kind="G", ancestor=root, limit=2)), metadata=MD)
    rest = datastore_stub.RunQuery(pb.RunQueryRequest(
        query=pb.Query(kind="G", ancestor=root, start_cursor=first.batch.end_cursor)), metadata=MD)
    ids = [r.entity.key.path[-1].id for r in [*first.batch.entity_results, *rest.batch.entity_results]]
    assert ids == [1, 2, 3, 4, 5]


def test_garbage_cursor_is_a_clear_error(datastore_stub):
    with pytest.raises(grpc.RpcError) as err:
        datastore_stub.RunQuery(pb.RunQueryRequest(query=pb.Query(ancestor=_key("B", "x"), start_cursor=b"junk")),
                                metadata=MD)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_cursor" in err.value.details()


def test_allocated_ids_are_never_handed_out_again(datastore_stub):
    first = datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), size=10), metadata=MD)
    second = datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), size=10), metadata=MD)
    assert first.end - first.start == 9
    assert second.start > first.end
    auto = datastore_stub.Put(pb.PutRequest(entities=[_entity(_key("Alloc", None))]), metadata=MD).keys[0]
    assert auto.path[-1].id > second.end


# App Engine's allocator hands out sequential ids up to 2**52 - 1 (_MAX_SEQUENTIAL_ID in Google's stub).
MAX_ID = 2**52 - 1
OUT_OF_RANGE = {
    "size over the batch limit": dict(size=1_000_000_001),
    "size near 2**63": dict(size=2**63 - 1),
    "negative size": dict(size=-5),
    "most negative size": dict(size=-(2**63)),
    "max near 2**63": dict(max=2**63 - 1),
    "max one past the largest id": dict(max=MAX_ID + 1),
    "negative max": dict(max=-1),
    "zero size and max": dict(),
}


@pytest.mark.parametrize("form", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_an_allocation_outside_the_id_space_is_refused_and_later_ones_work(datastore_stub, form):
    md = app_metadata(f"alloc-{_unique()}")
    before = datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), size=5), metadata=md)
    with pytest.raises(grpc.RpcError) as err:
        datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), **form), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("size:" in err.value.details() or "max:" in err.value.details()), err.value.details()
    after = datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), size=5), metadata=md)
    assert after.start == before.end + 1  # the counter did not move
    put = datastore_stub.Put(pb.PutRequest(entities=[_entity(_key("Alloc", None))]), metadata=md).keys[0]
    assert put.path[-1].id == after.end + 1


def test_the_largest_id_can_be_reserved_and_then_allocation_is_refused_precisely(datastore_stub):
    md = app_metadata(f"alloc-{_unique()}")
    reserved = datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), max=MAX_ID), metadata=md)
    assert (reserved.start, reserved.end) == (1, MAX_ID)
    for request in (pb.AllocateIdsRequest(key=_key("Alloc", None), size=1),
                    pb.PutRequest(entities=[_entity(_key("Alloc", None))])):
        with pytest.raises(grpc.RpcError) as err:
            getattr(datastore_stub, type(request).__name__.removesuffix("Request"))(request, metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"largest allocatable id {MAX_ID}" in err.value.details() and "0 ids are left" in err.value.details()
    # Entities with ids given by the app are unaffected, as are reservations below what is reserved.
    named = _entity(_key("Alloc", MAX_ID))
    assert datastore_stub.Put(pb.PutRequest(entities=[named]), metadata=md).keys[0].path[-1].id == MAX_ID
    datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), max=10), metadata=md)


def test_a_range_that_would_pass_the_largest_id_leaves_the_counter_where_it_was(datastore_stub):
    md = app_metadata(f"alloc-{_unique()}")
    datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), max=MAX_ID - 10), metadata=md)
    with pytest.raises(grpc.RpcError) as err:
        datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), size=11), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert f"ids {MAX_ID - 9}..{MAX_ID + 1} would pass" in details and "10 ids are left" in details
    last = datastore_stub.AllocateIds(pb.AllocateIdsRequest(key=_key("Alloc", None), size=10), metadata=md)
    assert (last.start, last.end) == (MAX_ID - 9, MAX_ID)


# --- App Engine's 20,000 index entries per entity, built-in indexes included ------------------------------------

def _listed(key, count):
    entity = _entity(key)
    entity.properties["tags"].array_value.values.extend(pb.Value(integer_value=i) for i in range(count))
    return entity


def _refused(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("Too many indexed properties for entity Big(")
    return err.value.details()


@pytest.mark.parametrize("count", [120_000, 20_001])
def test_an_entity_with_more_indexed_values_than_the_limit_is_refused_and_not_stored(datastore_stub, count):
    key = _key("Big", _unique())
    details = _refused(lambda: datastore_stub.Put(pb.PutRequest(entities=[_listed(key, count)]), metadata=MD))
    assert f"{count} indexed values" in details
    assert not datastore_stub.Get(pb.GetRequest(keys=[key]), metadata=MD).results[0].HasField("entity")


def test_a_batch_with_one_entity_over_the_limit_writes_nothing(datastore_stub):
    fine, big = _key("Big", _unique()), _key("Big", _unique())
    _refused(lambda: datastore_stub.Put(pb.PutRequest(entities=[_entity(fine), _listed(big, 120_000)]), metadata=MD))
    results = datastore_stub.Get(pb.GetRequest(keys=[fine, big]), metadata=MD).results
    assert [r.HasField("entity") for r in results] == [False, False]


def test_a_transaction_writing_an_entity_over_the_limit_commits_nothing(datastore_stub):
    fine, big = _key("Big", _unique()), _key("Big", _unique())
    tx = datastore_stub.BeginTransaction(pb.BeginTransactionRequest(cross_group=True), metadata=MD).transaction
    mutations = [pb.Mutation(upsert=_entity(fine)), pb.Mutation(upsert=_listed(big, 120_000))]
    _refused(lambda: datastore_stub.Commit(pb.CommitRequest(transaction=tx, mutations=mutations), metadata=MD))
    results = datastore_stub.Get(pb.GetRequest(keys=[fine, big]), metadata=MD).results
    assert [r.HasField("entity") for r in results] == [False, False]


def test_the_limit_itself_and_unindexed_lists_are_stored(datastore_stub):
    at_limit, unindexed = _listed(_key("Big", _unique()), 20_000), _listed(_key("Big", _unique()), 120_000)
    for value in unindexed.properties["tags"].array_value.values:
        value.exclude_from_indexes = True
    keys = datastore_stub.Put(pb.PutRequest(entities=[at_limit, unindexed]), metadata=MD).keys
    assert all(r.HasField("entity") for r in datastore_stub.Get(pb.GetRequest(keys=keys), metadata=MD).results)
