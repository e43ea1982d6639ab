"""ndb's memcache-backed cache (Google's SDK, unmodified) on kiln's memcache and datastore, through kiln's API proxy.

ndb keeps entities in memcache under ``NDB9:<urlsafe key>`` and keeps that cache coherent with the datastore by
its own protocol: a read locks the slot, reads the datastore and stores with CAS; a write or delete locks the slot
out first; a transaction's commit does the same. These tests check that reads are really served from memcache and
that no reader ever sees a value the datastore has replaced, also with several threads (each its own ndb context)
writing through transactions, on both engines.
"""

from __future__ import annotations

import threading

import pytest

from tests.integration.sdkds import gae_sdk, sdk_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.nats


@pytest.fixture(params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def sdk(request, gae_sdk, monkeypatch):  # noqa: F811 - the fixture imported above
    return sdk_fixture(request, gae_sdk, monkeypatch)


@pytest.fixture
def m(sdk):
    from tests.integration import sdk_models

    return sdk_models


@pytest.fixture
def datastore_calls(sdk, monkeypatch):
    """The datastore_v3 methods called from now on, in order."""
    calls = []
    service = sdk.service
    handle = service.handle

    def counting(method, request, response, ctx):
        calls.append(method)
        return handle(method, request, response, ctx)

    monkeypatch.setattr(service, "handle", counting)
    return calls


def cached_entry(key):
    """What ndb's cache holds for ``key`` in memcache (through the SDK's memcache client, kiln's memcache)."""
    from google.appengine.api import memcache

    return memcache.get("NDB9:" + key.urlsafe().decode(), namespace=key.namespace())


def in_thread(fn):
    """Run ``fn`` in another thread (its own ndb context and in-context cache) and return its result."""
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


def test_a_read_fills_memcache_and_the_next_read_makes_no_datastore_call(sdk, m, datastore_calls):
    key = m.Cached(id="c", value=1).put()
    assert key.get().value == 1
    assert isinstance(cached_entry(key), bytes)  # the serialized entity (a lock would be the integer 0)
    datastore_calls.clear()
    assert in_thread(lambda: key.get().value) == 1
    assert datastore_calls == []


def test_a_put_from_another_context_is_seen_by_the_next_read(sdk, m):
    key = m.Cached(id="c", value=1).put()
    assert key.get().value == 1  # cached now
    in_thread(lambda: m.Cached(id="c", value=2).put())
    assert key.get().value == 2
    assert in_thread(lambda: key.get().value) == 2


def test_a_delete_from_another_context_is_seen_by_the_next_read(sdk, m):
    key = m.Cached(id="c", value=1).put()
    assert key.get().value == 1
    in_thread(key.delete)
    assert key.get() is None
    assert in_thread(key.get) is None


def test_a_transactions_write_replaces_the_cached_value_at_commit(sdk, m):
    ndb = sdk.ndb
    key = m.Cached(id="c", value=1).put()
    assert key.get().value == 1

    def bump():
        entity = key.get()
        entity.value += 10
        entity.put()
        assert in_thread(lambda: key.get().value) == 1  # not committed yet: readers keep the old value

    ndb.transaction(bump)
    assert key.get().value == 11
    assert in_thread(lambda: key.get().value) == 11


def test_a_rolled_back_transaction_leaves_the_cached_value(sdk, m):
    ndb = sdk.ndb
    key = m.Cached(id="c", value=5).put()
    assert key.get().value == 5

    def fail():
        entity = key.get()
        entity.value = 99
        entity.put()
        raise ValueError("no")

    with pytest.raises(ValueError):
        ndb.transaction(fail)
    assert key.get().value == 5


def test_concurrent_transactional_increments_leave_cache_and_datastore_equal_and_exact(sdk, m):
    ndb = sdk.ndb
    key = m.Cached(id="n", value=0).put()
    errors = []

    def worker():
        try:
            for _ in range(5):
                def incr():
                    entity = key.get()
                    entity.value += 1
                    entity.put()
                ndb.transaction(incr, retries=100)
                key.get()  # a read between writes refills the cache
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert key.get().value == 20
    assert key.get(use_memcache=False).value == 20
    assert in_thread(lambda: key.get().value) == 20
