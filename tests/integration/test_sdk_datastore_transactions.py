"""Transactions of ndb and ext.db (Google's SDK, unmodified) on kiln's datastore, through ``kiln.sdk.datastore_v3``.

The transaction semantics kiln tests for ``kiln.api`` (tests/integration/test_datastore_transactions.py): writes
take effect at commit and not before, an exception rolls back, cross-group transactions need ``xg``, concurrent
transactions on one entity group lose no update (the SDK's own retries, after kiln answers
``CONCURRENT_TRANSACTION``), and a transaction that keeps losing fails with the SDK's ``TransactionFailedError``.
"""

from __future__ import annotations

import threading

import pytest

from tests.integration.apps import wait_for
from tests.integration.sdkds import gae_sdk, sdk_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.nats


@pytest.fixture(params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def sdk(request, gae_sdk, monkeypatch):  # noqa: F811 - the fixture imported above
    return sdk_fixture(request, gae_sdk, monkeypatch)


@pytest.fixture
def m(sdk):
    from tests.integration import sdk_models

    return sdk_models


def fresh(key):
    return key.get(use_cache=False, use_memcache=False)


def test_committed_transaction_writes_every_entity_of_the_group(sdk, m):
    ndb = sdk.ndb
    root = ndb.Key("Root", "r")

    @ndb.transactional
    def write():
        return ndb.put_multi([m.Item(parent=root, id="a", name="a"), m.Item(parent=root, name="new")])

    keys = write()
    assert [fresh(k).name for k in keys] == ["a", "new"]
    assert keys[1].id() is not None


def test_writes_inside_a_transaction_are_invisible_until_commit(sdk, m):
    ndb = sdk.ndb
    key = ndb.Key("Item", "x")
    seen = {}

    def body():
        m.Item(key=key, name="inside").put()
        seen["inside"] = fresh(key)
        seen["outside"] = _in_thread(lambda: fresh(key))

    ndb.transaction(body)
    assert seen == {"inside": None, "outside": None}
    assert fresh(key).name == "inside"


def test_incomplete_key_put_in_a_transaction_has_its_id_at_once(sdk, m):
    ndb = sdk.ndb
    found = {}

    def body():
        key = m.Item(name="auto").put()
        found["key"] = key
        return key

    key = ndb.transaction(body)
    assert key.id() is not None and found["key"] == key
    assert fresh(key).name == "auto"


def test_exception_rolls_the_transaction_back_and_propagates(sdk, m):
    ndb = sdk.ndb
    key = m.Counter(id="c", count=1).put()
    open_before = sdk.service.open_transactions()

    def body():
        counter = fresh(key)
        counter.count = 99
        counter.put()
        m.Item(id="side", name="effect").put()
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        ndb.transaction(body)
    assert fresh(key).count == 1
    assert fresh(ndb.Key("Item", "side")) is None
    wait_for(lambda: sdk.service.open_transactions() == open_before, 10)  # ndb does not wait for its rollback


def test_db_run_in_transaction_commits_and_rolls_back(sdk, m):
    db = sdk.db
    counter = m.DbCounter(key_name="c", count=0)
    counter.put()

    def bump(by):
        c = db.get(counter.key())
        c.count += by
        c.put()
        if by < 0:
            raise db.Rollback()
        return c.count

    assert db.run_in_transaction(bump, 5) == 5
    assert db.run_in_transaction(bump, -100) is None
    assert db.get(counter.key()).count == 5


def test_second_entity_group_without_xg_is_refused(sdk, m):
    ndb = sdk.ndb
    from google.appengine.api import datastore_errors

    def body():
        m.Item(id="a", name="a").put()
        m.Item(id="b", name="b").put()
        fresh(ndb.Key("Item", "a"))
        fresh(ndb.Key("Item", "b"))

    with pytest.raises(datastore_errors.BadRequestError, match="cross-group"):
        ndb.transaction(body)
    assert fresh(ndb.Key("Item", "a")) is None


def test_cross_group_transaction_commits_every_group_together(sdk, m):
    ndb = sdk.ndb

    def body():
        for name in ("a", "b", "c"):
            m.Item(id=name, name=name).put()

    ndb.transaction(body, xg=True)
    assert [fresh(ndb.Key("Item", n)).name for n in ("a", "b", "c")] == ["a", "b", "c"]


def test_deletes_in_a_transaction_take_effect_at_commit(sdk, m):
    ndb = sdk.ndb
    key = m.Item(id="gone", name="gone").put()
    seen = []

    def body():
        key.delete()
        seen.append(_in_thread(lambda: fresh(key)))

    ndb.transaction(body)
    assert seen[0].name == "gone"
    assert fresh(key) is None


def test_ancestor_query_inside_a_transaction_sees_committed_data(sdk, m):
    ndb = sdk.ndb
    root = ndb.Key("Root", "q")
    m.Item(parent=root, id="a", name="a", n=1).put()

    def body():
        m.Item(parent=root, id="b", name="b", n=2).put()
        return [e.name for e in m.Item.query(ancestor=root)]

    assert ndb.transaction(body) == ["a"]
    assert [e.name for e in m.Item.query(ancestor=root)] == ["a", "b"]


def test_non_ancestor_query_inside_a_transaction_is_refused(sdk, m):
    ndb = sdk.ndb
    from google.appengine.api import datastore_errors

    with pytest.raises(datastore_errors.BadRequestError):
        ndb.transaction(lambda: m.Item.query().fetch())


def _increment(ndb, key, times, *, xg_key=None):
    def once():
        counter = fresh(key)
        counter.count += 1
        puts = [counter]
        if xg_key is not None:
            other = fresh(xg_key)
            other.count += 1
            puts.append(other)
        ndb.put_multi(puts)

    for _ in range(times):
        ndb.transaction(once, retries=100, xg=xg_key is not None)


def _in_thread(fn):
    """Run ``fn`` in another thread (another ndb context, outside this thread's transaction) and return its result."""
    out, errors = [], []

    def run():
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    if errors:
        raise errors[0]
    assert out, "the thread did not finish"
    return out[0]


def _run_threads(target, count):
    errors = []

    def guarded():
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not [t for t in threads if t.is_alive()], "a thread did not finish"
    assert errors == []


def test_concurrent_increments_in_transactions_lose_no_update(sdk, m):
    ndb = sdk.ndb
    key = m.Counter(id="hits", count=0).put()
    _run_threads(lambda: _increment(ndb, key, 5), 4)
    assert fresh(key).count == 20


def test_concurrent_cross_group_increments_stay_equal(sdk, m):
    ndb = sdk.ndb
    a, b = m.Counter(id="a", count=0).put(), m.Counter(id="b", count=0).put()
    _run_threads(lambda: _increment(ndb, a, 4, xg_key=b), 3)
    assert (fresh(a).count, fresh(b).count) == (12, 12)


def test_db_concurrent_increments_lose_no_update(sdk, m):
    db = sdk.db
    counter = m.DbCounter(key_name="c", count=0)
    counter.put()

    def bump():
        c = db.get(counter.key())
        c.count += 1
        c.put()

    def worker():
        for _ in range(4):
            db.run_in_transaction_options(db.create_transaction_options(retries=100), bump)

    _run_threads(worker, 3)
    assert db.get(counter.key()).count == 12


def test_transaction_that_always_loses_fails_with_transaction_failed_error(sdk, m):
    ndb = sdk.ndb
    from google.appengine.api import datastore_errors

    key = m.Counter(id="contended", count=0).put()
    attempts = []

    def body():
        counter = fresh(key)
        attempts.append(1)
        # Another writer commits to the same entity group after this transaction read it, every time.
        _in_thread(lambda: m.Counter(key=key, count=1000 + len(attempts)).put())
        counter.count += 1
        counter.put()

    with pytest.raises(datastore_errors.TransactionFailedError):
        ndb.transaction(body, retries=2)
    assert len(attempts) == 3
    assert fresh(key).count == 1003


def test_unknown_transaction_handle_is_bad_request(sdk):
    from google.appengine.datastore import datastore_v3_bytes_pb2 as v3
    from google.appengine.runtime import apiproxy_errors

    from kiln.sdk.service import CallContext

    tx = v3.Transaction(handle=12345, app="s~" + sdk.app_id)
    with pytest.raises(apiproxy_errors.ApplicationError) as raised:
        sdk.service.handle("Commit", tx, v3.CommitResponse(), CallContext(app_id=sdk.app_id))
    assert raised.value.application_error == 1
    assert "transaction 12345" in raised.value.error_detail
