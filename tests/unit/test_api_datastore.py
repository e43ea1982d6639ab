"""kiln.api.datastore without a server: filters, query protobufs, paging, cursors, transactions, errors."""

from __future__ import annotations

import threading

import grpc
import pytest

from kiln import errors
from kiln.api import datastore, datastore_errors
from kiln.api.datastore import Cursor, Entity, Key, Query
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from tests.unit.fake_datastore import (  # noqa: F401 - fake is a fixture
    AFTER_LIMIT, NOT_FINISHED, FakeRpcError, batch, conflict, fake, result_entity,
)

OP = pb.PropertyFilter

# -- filter strings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parsed"), [
    ("age >", ("age", ">")), ("age>=", None), ("age >=", ("age", ">=")), ("age <", ("age", "<")),
    ("age <=", ("age", "<=")), ("name", ("name", "=")), ("name =", ("name", "=")), ("name ==", ("name", "=")),
    ("  name   =  ", ("name", "=")), ("x !=", ("x", "!=")), ("tags IN", ("tags", "IN")), ("tags in", ("tags", "IN")),
    ("__key__ >", ("__key__", ">")), ("address.city =", ("address.city", "=")),
])
def test_filter_strings_parse_like_app_engine(text, parsed):
    if parsed is None:
        with pytest.raises(datastore_errors.BadFilterError):
            datastore.parse_filter(text)
    else:
        assert datastore.parse_filter(text) == parsed


@pytest.mark.parametrize("text", ["", "   ", "a b c", "age =>", "age LIKE", "age !== ", "age>"])
def test_malformed_filter_strings_are_bad_filters(text):
    with pytest.raises(datastore_errors.BadFilterError, match="invalid filter"):
        Query("K")[text] = 1


def test_filters_become_an_and_of_property_filters():
    query = Query("Person")
    query["age >"] = 18
    query["name ="] = "x"
    query["tags IN"] = ["a", "b"]
    out = query._ToPb()
    assert out.kind == "Person"
    assert out.filter.composite_filter.op == pb.CompositeFilter.OPERATOR_AND
    filters = [f.property_filter for f in out.filter.composite_filter.filters]
    assert [(f.property.name, f.op) for f in filters] == [
        ("age", OP.OPERATOR_GREATER_THAN), ("name", OP.OPERATOR_EQUAL), ("tags", OP.OPERATOR_IN)]
    assert filters[0].value.integer_value == 18
    assert [v.string_value for v in filters[2].value.array_value.values] == ["a", "b"]


def test_a_single_filter_is_not_wrapped_and_a_list_equality_means_every_value():
    single = Query("K", {"a": 1})._ToPb()
    assert single.filter.property_filter.property.name == "a"
    both = Query("K", {"tags =": ["x", "y"]})._ToPb()
    values = [f.property_filter.value.string_value for f in both.filter.composite_filter.filters]
    assert values == ["x", "y"]


def test_filter_values_are_checked_when_set():
    query = Query("K")
    with pytest.raises(datastore_errors.BadFilterError, match="IN needs a list"):
        query["tags IN"] = "a"
    with pytest.raises(datastore_errors.BadFilterError, match="__key__"):
        query["__key__ >"] = "not a key"
    with pytest.raises(datastore_errors.BadValueError):
        query["x ="] = object()
    query["__key__ >"] = Key.from_path("K", 1)
    assert query._ToPb().filter.property_filter.value.key_value.path[0].id == 1


def test_inequality_filters_on_two_properties_are_refused():
    query = Query("K")
    query["a >"] = 1
    query["a <"] = 5  # the same property twice is fine
    with pytest.raises(datastore_errors.BadFilterError, match="one property"):
        query["b !="] = 2


def test_the_first_order_must_be_the_inequality_property():
    query = Query("K", {"a >": 1})
    with pytest.raises(datastore_errors.BadArgumentError, match="first sort order"):
        query.Order("b")
    query.Order("a", ("b", Query.DESCENDING))
    with pytest.raises(datastore_errors.BadArgumentError):
        Query("K").Order("b")["a >"] = 1


def test_orders_accept_names_and_direction_tuples_only():
    out = Query("K").Order(("date", Query.DESCENDING), "name")._ToPb()
    assert [(o.property.name, o.direction) for o in out.order] == [
        ("date", pb.PropertyOrder.DIRECTION_DESCENDING), ("name", pb.PropertyOrder.DIRECTION_ASCENDING)]
    for bad in ["", ("a", 3), ("a",), 5]:
        with pytest.raises(datastore_errors.BadArgumentError):
            Query("K").Order(bad)


def test_query_options_reach_the_protobuf():
    parent = Key.from_path("P", "p", namespace="ns")
    out = Query("K", projection=["a", "b"], distinct=True).Ancestor(parent)._ToPb(limit=5, offset=2)
    assert list(out.projection) == ["a", "b"] and list(out.distinct_on) == ["a", "b"]
    assert out.ancestor.path[0].name == "p" and out.limit == 5 and out.offset == 2
    assert Query("K", keys_only=True).IsKeysOnly() and Query("K", keys_only=True)._ToPb().keys_only
    assert not Query("K")._ToPb().HasField("limit")
    with pytest.raises(datastore_errors.BadQueryError):
        Query("K", keys_only=True, projection=["a"])
    with pytest.raises(datastore_errors.BadQueryError):
        Query("K", distinct=True)
    with pytest.raises(datastore_errors.BadArgumentError):
        Query("K")._ToPb(limit=-1)


# -- cursors -----------------------------------------------------------------------------------------


def test_cursor_round_trips_through_its_urlsafe_form():
    raw = bytes(range(256))
    cursor = Cursor.from_bytes(raw)
    text = cursor.urlsafe()
    assert text.isascii() and not set(text) & set("+/=")
    for again in (Cursor(urlsafe=text), Cursor(urlsafe=text.encode()), Cursor.from_websafe_string(text),
                  Cursor(urlsafe=text + "=" * (-len(text) % 4))):
        assert again == cursor and again.to_bytes() == raw
    assert cursor.to_websafe_string() == text
    assert hash(Cursor(urlsafe=text)) == hash(cursor)


@pytest.mark.parametrize("text", ["not base64!", "a", "é", "ab/cd"])
def test_invalid_cursor_strings_are_bad_values(text):
    with pytest.raises(datastore_errors.BadValueError, match="cursor"):
        Cursor(urlsafe=text)


# -- running queries ---------------------------------------------------------------------------------


def test_run_follows_batches_reducing_offset_and_limit(fake):
    fake.query_responses = [
        batch(result_entity("K", "a"), result_entity("K", "b"), more=NOT_FINISHED, end_cursor=b"end1", skipped=3),
        batch(result_entity("K", "c"), more=AFTER_LIMIT, end_cursor=b"end2"),
    ]
    query = Query("K")
    got = [e.key().name() for e in query.Run(limit=10, offset=5, batch_size=2)]
    assert got == ["a", "b", "c"]
    first, second = fake.requests("RunQuery")
    assert first.batch_size == 2 and first.query.offset == 5 and first.query.limit == 10
    assert not first.query.start_cursor
    assert second.query.start_cursor == b"end1" and second.query.offset == 2 and second.query.limit == 8
    assert query.GetCursor().to_bytes() == b"@c"
    assert query.GetCompiledCursor() == query.GetCursor()


def test_cursor_is_after_the_last_result_handed_out(fake):
    fake.query_responses = [batch(result_entity("K", "a"), result_entity("K", "b"), end_cursor=b"end")]
    query = Query("K")
    results = query.Run()
    with pytest.raises(datastore_errors.BadQueryError):
        Query("K").GetCursor()  # never run
    next(results)
    assert query.GetCursor().to_bytes() == b"@a"
    assert list(results)
    assert query.GetCursor().to_bytes() == b"@b"


def test_cursor_of_an_empty_result_is_the_batch_end(fake):
    fake.query_responses = [batch(end_cursor=b"here")]
    query = Query("K")
    assert query.Get(5) == []
    assert query.GetCursor().to_bytes() == b"here"


def test_start_and_end_cursors_are_sent(fake):
    fake.query_responses = [batch(), batch()]
    Query("K", cursor=Cursor.from_bytes(b"s"), end_cursor=Cursor.from_bytes(b"e").urlsafe()).Get(3)
    list(Query("K").Run(start_cursor=Cursor.from_bytes(b"s2")))
    first, second = fake.requests("RunQuery")
    assert (first.query.start_cursor, first.query.end_cursor) == (b"s", b"e")
    assert second.query.start_cursor == b"s2"


def test_a_batch_that_does_not_advance_is_an_internal_error(fake):
    fake.query_responses = [batch(more=NOT_FINISHED)]
    with pytest.raises(datastore_errors.InternalError):
        Query("K").Get(5)


def test_keys_only_results_are_keys_and_count_uses_keys_only(fake):
    fake.query_responses = [batch(result_entity("K", "a")), batch(result_entity("K", "a"), result_entity("K", "b"))]
    (key,) = Query("K", keys_only=True).Get(5)
    assert isinstance(key, Key) and key.name() == "a"
    assert Query("K", {"x =": 1}).Count(limit=7) == 2
    count_request = fake.requests("RunQuery")[1]
    assert count_request.query.keys_only and count_request.query.limit == 7


def test_gql_continuation_uses_the_query_the_service_returned(fake):
    structured = pb.Query(kind="K", limit=3)
    fake.query_responses = [
        batch(result_entity("K", "a"), more=NOT_FINISHED, end_cursor=b"c1", query=structured),
        batch(result_entity("K", "b"), end_cursor=b"c2", query=structured),
    ]
    run = datastore.run_query(pb.GqlQuery(query_string="SELECT * FROM K LIMIT 3"), lambda r: r.entity.key.path[0].name)
    assert list(run) == ["a", "b"]
    first, second = fake.requests("RunQuery")
    assert first.WhichOneof("query_type") == "gql_query"
    assert second.WhichOneof("query_type") == "query"
    assert second.query.kind == "K" and second.query.limit == 2 and second.query.start_cursor == b"c1"


# -- put, get, delete, ids ---------------------------------------------------------------------------


def test_put_get_delete_round_trip(fake):
    entity = Entity("Person", name="ann")
    entity["age"] = 30
    entity.set_unindexed_properties(["age"])
    key = datastore.Put(entity)
    assert key.name() == "ann" and entity.key() == key
    got = datastore.Get(key)
    assert got["age"] == 30 and got.unindexed_properties() == frozenset({"age"})
    auto = Entity("Person")
    assert datastore.Put([auto])[0].id() is not None
    assert datastore.Get([key, Key.from_path("Person", "missing")])[1] is None
    datastore.Delete(entity)
    with pytest.raises(datastore.EntityNotFoundError):
        datastore.Get(key)
    assert datastore.Put([]) == [] and datastore.Get([]) == []


def test_allocate_ids_needs_size_or_max(fake):
    assert datastore.AllocateIds(Key.from_path("K", 1), size=3) == (1000, 1002)
    with pytest.raises(datastore_errors.BadArgumentError):
        datastore.AllocateIds(Key.from_path("K", 1))


@pytest.mark.parametrize("form", [dict(size=0), dict(size=-1), dict(size=1_000_000_001), dict(size=2**64),
                                  dict(size=1.5), dict(max=-1), dict(max=2**63), dict(max="9")],
                         ids=["size 0", "negative size", "size over 1e9", "size 2**64", "float size", "negative max",
                              "max 2**63", "string max"])
def test_allocate_ids_refuses_out_of_range_arguments_before_calling(fake, form):
    with pytest.raises(datastore_errors.BadArgumentError, match="size:|max:"):
        datastore.AllocateIds(Key.from_path("K", 1), **form)
    assert fake.requests("AllocateIds") == []


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code", "expected"), [
    (grpc.StatusCode.DEADLINE_EXCEEDED, None, datastore_errors.Timeout),
    (grpc.StatusCode.INTERNAL, None, datastore_errors.InternalError),
    (grpc.StatusCode.FAILED_PRECONDITION, "NEED_INDEX", datastore_errors.NeedIndexError),
    (grpc.StatusCode.INVALID_ARGUMENT, None, datastore_errors.BadRequestError),
    (grpc.StatusCode.ABORTED, "CONCURRENT_TRANSACTION", errors.ConcurrentTransactionError),
])
def test_service_errors_arrive_under_app_engine_names(fake, status, code, expected):
    fake.errors["Get"] = FakeRpcError(status, "details here", code)
    with pytest.raises(expected, match="details here") as err:
        datastore.Get([Key.from_path("K", 1)])
    assert isinstance(err.value, datastore_errors.Error)


def test_app_engine_error_names_catch_what_kiln_raises():
    assert datastore_errors.NeedIndexError is errors.NeedIndexError
    assert datastore_errors.BadRequestError is errors.BadRequestError
    assert datastore_errors.Error is errors.KilnError
    assert issubclass(datastore_errors.TransactionFailedError, errors.ConflictError)
    assert issubclass(datastore_errors.Timeout, errors.DeadlineExceededError)
    assert issubclass(datastore_errors.CommittedButStillApplying, datastore_errors.Timeout)
    for name in ("BadValueError", "BadPropertyError", "BadArgumentError", "BadFilterError", "BadQueryError",
                 "BadKeyError", "EntityNotFoundError", "QueryNotFoundError", "TransactionNotFoundError",
                 "Rollback", "InternalError", "ReferencePropertyResolveError"):
        assert issubclass(getattr(datastore_errors, name), datastore_errors.Error), name
    assert datastore.EntityNotFoundError is datastore_errors.EntityNotFoundError


# -- transactions ------------------------------------------------------------------------------------


def test_writes_in_a_transaction_are_buffered_until_commit(fake):
    parent = Key.from_path("Book", "b")

    def work():
        assert datastore.IsInTransaction()
        child = Entity("Page", parent=parent)
        key = datastore.Put(child)
        assert key.id() is not None and key.parent() == parent  # final key at once
        named = Entity("Page", parent=parent, name="n")
        datastore.Put([named, Entity("Page", parent=parent)])
        datastore.Delete(Key.from_path("Book", "b", "Page", "old"))
        assert datastore.Get([key]) == [None]  # a transaction does not see its own writes
        return key

    key = datastore.RunInTransaction(work)
    assert not datastore.IsInTransaction()
    assert "Put" not in fake.methods() and "Delete" not in fake.methods()
    # One AllocateIds per group of incomplete keys, each sized for the group.
    assert [r.size for r in fake.requests("AllocateIds")] == [1, 1]
    (commit,) = fake.requests("Commit")
    assert [m.WhichOneof("operation") for m in commit.mutations] == ["upsert", "upsert", "upsert", "delete"]
    assert fake.requests("Get")[0].read_options.transaction == commit.transaction
    assert datastore.Get(key).key() == key


def test_incomplete_keys_of_one_kind_and_parent_share_one_allocation(fake):
    def work():
        return datastore.Put([Entity("A"), Entity("A"), Entity("B"), Entity("A")])

    keys = datastore.RunInTransaction(work)
    assert len({k.id() for k in keys}) == 4
    assert sorted(r.size for r in fake.requests("AllocateIds")) == [1, 3]


def test_the_last_write_of_a_key_in_a_transaction_wins(fake):
    key = Key.from_path("K", "k")

    def work():
        first = Entity("K", name="k")
        first["v"] = 1
        datastore.Put(first)
        datastore.Delete(key)
        second = Entity("K", name="k")
        second["v"] = 2
        datastore.Put(second)

    datastore.RunInTransaction(work)
    (commit,) = fake.requests("Commit")
    assert len(commit.mutations) == 1 and commit.mutations[0].upsert.properties["v"].integer_value == 2


def test_rollback_exception_rolls_back_silently(fake):
    def work():
        datastore.Put(Entity("K", name="x"))
        raise datastore_errors.Rollback()

    assert datastore.RunInTransaction(work) is None
    assert "Commit" not in fake.methods() and len(fake.requests("Rollback")) == 1
    assert fake.entities == {}


def test_other_exceptions_roll_back_and_propagate(fake):
    def work():
        datastore.Put(Entity("K", name="x"))
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        datastore.RunInTransaction(work)
    assert "Commit" not in fake.methods() and len(fake.requests("Rollback")) == 1
    assert not datastore.IsInTransaction()


def test_conflicts_are_retried_three_times_then_fail(fake):
    calls = []
    fake.failing_commits = 10
    with pytest.raises(datastore_errors.TransactionFailedError, match="4 attempts"):
        datastore.RunInTransaction(lambda: calls.append(1))
    assert len(calls) == 4 and len(fake.requests("BeginTransaction")) == 4


def test_a_conflict_then_success_returns_the_result_of_the_last_attempt(fake):
    attempts = []
    fake.failing_commits = 2
    assert datastore.RunInTransaction(lambda: attempts.append(1) or len(attempts)) == 3


def test_custom_retries_and_options(fake):
    fake.failing_commits = 100
    with pytest.raises(datastore_errors.TransactionFailedError):
        datastore.RunInTransactionCustomRetries(0, lambda: None)
    assert len(fake.requests("BeginTransaction")) == 1
    fake.failing_commits = 5
    assert datastore.RunInTransactionOptions(datastore.TransactionOptions(retries=5, xg=True), lambda: "ok") == "ok"
    assert fake.requests("BeginTransaction")[-1].cross_group
    assert datastore.CreateTransactionOptions(xg=True) == datastore.TransactionOptions(xg=True)
    with pytest.raises(datastore_errors.BadArgumentError):
        datastore.TransactionOptions(retries=-1)


def test_a_read_that_reports_a_conflict_restarts_the_attempt(fake):
    fake.errors["Get"] = conflict()
    key = Key.from_path("K", 1)
    assert datastore.RunInTransaction(lambda: datastore.Get([key])) == [None]
    assert len(fake.requests("BeginTransaction")) == 2 and len(fake.requests("Rollback")) == 1


def test_optimistic_concurrency_detects_a_write_between_read_and_commit(fake):
    key = datastore.Put(Entity("Counter", name="c"))
    interfering = []

    def increment():
        counter = datastore.Get(key)
        if not interfering:  # another writer sneaks in during the first attempt
            interfering.append(1)
            datastore_put_outside(key)
        counter["n"] = counter.get("n", 0) + 1
        datastore.Put(counter)

    def datastore_put_outside(k):
        other = Entity("Counter", name="c")
        other["n"] = 100
        fake.Put(pb.PutRequest(entities=[other.to_pb()]))

    datastore.RunInTransaction(increment)
    assert datastore.Get(key)["n"] == 101
    assert len(fake.requests("BeginTransaction")) == 2


def test_nested_transactions_are_refused_unless_joined(fake):
    with pytest.raises(datastore_errors.BadRequestError, match="nested"):
        datastore.RunInTransaction(lambda: datastore.RunInTransaction(lambda: None))
    allowed = datastore.TransactionOptions(propagation=datastore.TransactionOptions.ALLOWED)
    assert datastore.RunInTransaction(lambda: datastore.RunInTransactionOptions(allowed, lambda: "joined")) == "joined"
    mandatory = datastore.TransactionOptions(propagation=datastore.TransactionOptions.MANDATORY)
    with pytest.raises(datastore_errors.BadRequestError):
        datastore.RunInTransactionOptions(mandatory, lambda: None)
    independent = datastore.TransactionOptions(propagation=datastore.TransactionOptions.INDEPENDENT)

    def outer():
        handle = datastore._current().handle
        inner = datastore.RunInTransactionOptions(independent, lambda: datastore._current().handle)
        return handle, inner, datastore._current().handle

    outer_handle, inner_handle, restored = datastore.RunInTransaction(outer)
    assert outer_handle != inner_handle and restored == outer_handle


def test_transactions_belong_to_their_thread(fake):
    seen = []

    def work():
        thread = threading.Thread(target=lambda: seen.append(datastore.IsInTransaction()))
        thread.start()
        thread.join()
        return datastore.IsInTransaction()

    assert datastore.RunInTransaction(work) is True
    assert seen == [False]


def test_only_ancestor_queries_run_in_a_transaction(fake):
    fake.query_responses = [batch()]
    with pytest.raises(datastore_errors.BadRequestError, match="ancestor"):
        datastore.RunInTransaction(lambda: Query("K").Get(1))
    datastore.RunInTransaction(lambda: Query("K").Ancestor(Key.from_path("P", 1)).Get(1))
    (request,) = fake.requests("RunQuery")
    assert request.read_options.transaction == b"tx2"  # the second transaction's handle
