"""Datastore transactions over gRPC, on both engines, including a service killed mid-commit."""

from __future__ import annotations

import concurrent.futures
import signal
import threading

import grpc
import pytest

from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln_platform.supervisor import python_module
from tests.integration.conftest import service_env
from tests.integration.test_datastore_queries import Client, ent, error_of, flt, key, names, q

pytestmark = pytest.mark.nats


@pytest.fixture
def db(datastore_stub):
    return Client(datastore_stub)


def begin(db, xg=False):
    return db.stub.BeginTransaction(pb.BeginTransactionRequest(cross_group=xg), metadata=db.md).transaction


def tx_get(db, tx, *keys):
    req = pb.GetRequest(keys=keys)
    req.read_options.transaction = tx
    return [r.entity if r.HasField("entity") else None for r in db.stub.Get(req, metadata=db.md).results]


def commit(db, tx, *entities, deletes=()):
    mutations = [pb.Mutation(upsert=e) for e in entities] + [pb.Mutation(delete=k) for k in deletes]
    return db.stub.Commit(pb.CommitRequest(transaction=tx, mutations=mutations), metadata=db.md)


def value(db, k):
    found = db.stub.Get(pb.GetRequest(keys=[k]), metadata=db.md).results[0]
    return found.entity.properties["n"].integer_value if found.HasField("entity") else None


def test_committed_transaction_writes_every_mutation(db):
    db.put(ent(key("A", "x"), n=1))
    tx = begin(db)
    commit(db, tx, ent(key("A", "x", "B", "y"), n=2), deletes=[key("A", "x")])
    assert value(db, key("A", "x")) is None
    assert value(db, key("A", "x", "B", "y")) == 2


def test_transaction_writes_are_invisible_until_commit(db):
    tx = begin(db)
    tx_get(db, tx, key("A", "x"))
    assert value(db, key("A", "x")) is None
    commit(db, tx, ent(key("A", "x"), n=5))
    assert value(db, key("A", "x")) == 5


def test_conflicting_commit_fails_with_concurrent_transaction(db):
    db.put(ent(key("A", "x"), n=1))
    first, second = begin(db), begin(db)
    tx_get(db, first, key("A", "x"))
    tx_get(db, second, key("A", "x"))
    commit(db, first, ent(key("A", "x"), n=2))
    err = error_of(lambda: commit(db, second, ent(key("A", "x"), n=3)))
    assert err.code() == grpc.StatusCode.ABORTED
    assert dict(err.trailing_metadata())["kiln-error-code"] == "CONCURRENT_TRANSACTION"
    assert value(db, key("A", "x")) == 2


def test_read_after_a_concurrent_commit_fails_instead_of_seeing_a_torn_snapshot(db):
    db.put(ent(key("A", "x"), n=1), ent(key("A", "x", "C", "c"), n=1))
    tx = begin(db)
    tx_get(db, tx, key("A", "x"))
    db.put(ent(key("A", "x", "C", "c"), n=2))
    err = error_of(lambda: tx_get(db, tx, key("A", "x", "C", "c")))
    assert err.code() == grpc.StatusCode.ABORTED


def test_ancestor_query_inside_a_transaction_sees_committed_data(db):
    db.put(ent(key("A", "x", "C", "1"), n=1), ent(key("A", "x", "C", "2"), n=2))
    tx = begin(db)
    req = pb.RunQueryRequest(query=q("C", ancestor=key("A", "x")))
    req.read_options.transaction = tx
    assert names(db.stub.RunQuery(req, metadata=db.md).batch.entity_results) == ["1", "2"]


def test_non_ancestor_query_inside_a_transaction_is_refused(db):
    tx = begin(db)
    req = pb.RunQueryRequest(query=q("C", flt("n", "=", 1)))
    req.read_options.transaction = tx
    err = error_of(lambda: db.stub.RunQuery(req, metadata=db.md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ancestor" in err.details()


def test_second_group_without_xg_is_refused(db):
    tx = begin(db)
    tx_get(db, tx, key("A", "x"))
    err = error_of(lambda: tx_get(db, tx, key("A", "y")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "xg=True" in err.details()


def test_cross_group_transaction_commits_every_group_together(db):
    tx = begin(db, xg=True)
    tx_get(db, tx, key("A", "1"), key("A", "2"), key("A", "3"))
    commit(db, tx, *[ent(key("A", str(i)), n=i) for i in (1, 2, 3)])
    assert [value(db, key("A", str(i))) for i in (1, 2, 3)] == [1, 2, 3]


def test_cross_group_conflict_writes_nothing(db):
    tx = begin(db, xg=True)
    tx_get(db, tx, key("A", "1"), key("A", "2"))
    db.put(ent(key("A", "2"), n=9))
    err = error_of(lambda: commit(db, tx, ent(key("A", "1"), n=1), ent(key("A", "2"), n=1)))
    assert err.code() == grpc.StatusCode.ABORTED
    assert value(db, key("A", "1")) is None
    assert value(db, key("A", "2")) == 9


def test_more_than_25_groups_is_refused(db):
    tx = begin(db, xg=True)
    err = error_of(lambda: tx_get(db, tx, *[key("G", i) for i in range(1, 27)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "25" in err.details()


def test_rolled_back_transaction_cannot_commit(db):
    tx = begin(db)
    db.stub.Rollback(pb.RollbackRequest(transaction=tx), metadata=db.md)
    err = error_of(lambda: commit(db, tx, ent(key("A", "x"), n=1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert value(db, key("A", "x")) is None


def test_another_apps_transaction_handle_is_refused(db, datastore_stub):
    tx = begin(db)
    other = Client(datastore_stub)
    err = error_of(lambda: commit(other, tx, ent(key("A", "x"), n=1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def increment(db, k, *, xg_other=None):
    """Add one to n of k (and of xg_other) in a transaction, retrying conflicts as run_in_transaction does."""
    for _ in range(200):
        tx = begin(db, xg=xg_other is not None)
        try:
            keys = [k] + ([xg_other] if xg_other is not None else [])
            found = tx_get(db, tx, *keys)
            updated = [ent(kk, n=(f.properties["n"].integer_value if f else 0) + 1) for kk, f in zip(keys, found)]
            commit(db, tx, *updated)
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
    raise AssertionError("too many conflicts")


def test_concurrent_increments_in_transactions_lose_no_update(db):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: increment(db, key("Counter", "c")), range(40)))
    assert value(db, key("Counter", "c")) == 40


def test_concurrent_cross_group_increments_stay_equal(db):
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: increment(db, key("Pair", "a"), xg_other=key("Pair", "b")), range(24)))
    assert value(db, key("Pair", "a")) == value(db, key("Pair", "b")) == 24


@pytest.mark.parametrize("engine", ["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def test_service_killed_mid_commit_leaves_every_transaction_whole(engine, request, supervisor, tmp_path):
    """SIGKILL the service while cross-group commits run; a new one must show each pair equal."""
    run = supervisor.run_dir
    if engine == "cassandra":
        storage = ["--storage", "cassandra", "--cassandra-hosts", request.getfixturevalue("cassandra_hosts"),
                   "--cassandra-keyspace", "kiln_kill"]
    else:
        storage = ["--storage", "embedded", "--data-dir", str(tmp_path / "kill")]

    def start(name):
        ready = run / f"{name}.addr"
        child = supervisor.start(name, python_module(
            "datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), *storage), env=service_env(),
            ready_file=ready, timeout=180)
        channel = grpc.insecure_channel(child.address)
        return child, channel, Client(datastore_pb2_grpc.DatastoreServiceStub(channel))

    child, channel, db = start(f"datastore_svc-kill-{engine}-1")
    pairs = [(key("Pair", f"a{i}"), key("Pair", f"b{i}")) for i in range(6)]
    stop = threading.Event()

    def work(pair):
        while not stop.is_set():
            try:
                increment(db, pair[0], xg_other=pair[1])
            except (grpc.RpcError, AssertionError):
                return

    threads = [threading.Thread(target=work, args=(p,)) for p in pairs]
    for t in threads:
        t.start()
    while sum(value(db, a) or 0 for a, _ in pairs) < 30:
        pass
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    channel.close()

    _, channel2, db2 = start(f"datastore_svc-kill-{engine}-2")
    db2.app, db2.md = db.app, db.md
    try:
        got = [(value(db2, a), value(db2, b)) for a, b in pairs]
        assert all(x == y for x, y in got), got
        assert sum(x or 0 for x, _ in got) >= 30
    finally:
        channel2.close()


def test_transaction_takes_the_namespace_of_its_first_key(db):
    tx = begin(db)
    tx_get(db, tx, key("A", "x", namespace="blue"))
    commit(db, tx, ent(key("A", "x", namespace="blue"), n=4))
    found = db.stub.Get(pb.GetRequest(keys=[key("A", "x", namespace="blue")]), metadata=db.md).results[0]
    assert found.entity.properties["n"].integer_value == 4


def test_transaction_cannot_mix_namespaces(db):
    tx = begin(db, xg=True)
    tx_get(db, tx, key("A", "x", namespace="blue"))
    err = error_of(lambda: tx_get(db, tx, key("A", "x", namespace="red")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "namespace" in err.details()
