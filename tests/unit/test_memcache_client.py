"""kiln.api.memcache without a service: consistent hashing, key and value encoding as App Engine's."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import grpc
import pytest

from kiln import errors
from kiln import runtime as kiln_runtime
from kiln.api import memcache
from kiln.pb.memcache.v1 import memcache_pb2 as pb
from kiln_platform import requestscope
from tests.unit.fake_datastore import FakeRpcError


def test_adding_a_shard_moves_only_about_its_share_of_keys():
    keys = [f"key-{i}".encode() for i in range(10_000)]
    before = memcache.Ring(["s1", "s2", "s3"])
    after = memcache.Ring(["s1", "s2", "s3", "s4"])
    moved = [k for k in keys if before.shard_for(k) != after.shard_for(k)]
    assert all(after.shard_for(k) == "s4" for k in moved)  # keys only move to the new shard
    assert 0.15 < len(moved) / len(keys) < 0.35  # about a quarter


def test_keys_spread_over_all_shards():
    ring = memcache.Ring(["s1", "s2", "s3"])
    counts = {s: 0 for s in ("s1", "s2", "s3")}
    for i in range(9000):
        counts[ring.shard_for(f"k{i}".encode())] += 1
    assert min(counts.values()) > 2000


def test_a_long_key_is_replaced_by_its_sha1_after_the_prefix():
    long_key = "x" * 300
    assert memcache._encode_key(long_key, b"p:") == hashlib.sha1(b"p:" + long_key.encode()).hexdigest().encode()
    assert memcache._encode_key("short", b"p:") == b"p:short"


@pytest.mark.parametrize("value", [b"bytes", "text \u00e9", 42, -7, 2**70, True, False, 1.5, [1, "a"],
                                   {"k": (1, 2)}, None])
def test_values_round_trip_with_their_type(value):
    data, flags = memcache._encode_value(value)
    decoded = memcache._decode_value(data, flags)
    assert decoded == value and type(decoded) is type(value)


def test_values_over_a_megabyte_are_refused():
    with pytest.raises(ValueError, match="1000000 bytes"):
        memcache._encode_value(b"x" * 1_000_001)


def test_unpicklable_values_are_refused_with_the_type():
    with pytest.raises(ValueError, match="picklable: generator"):
        memcache._encode_value(i for i in range(3))


def test_keys_must_be_strings_or_bytes():
    with pytest.raises(TypeError):
        memcache._encode_key(12, b"")


def test_named_shards_hash_by_name_and_dial_their_target(monkeypatch):
    keys = [f"k{i}".encode() for i in range(200)]
    shards = memcache._Shards()
    monkeypatch.setenv("KILN_MEMCACHE_ADDR", "10.0.0.5:50052,10.0.0.6:50052")
    plain = [shards.ring().shard_for(k) for k in keys]
    monkeypatch.setenv("KILN_MEMCACHE_ADDR", "10.0.0.5:50052=unix:/run/a.sock,10.0.0.6:50052=unix:/run/b.sock")
    assert [shards.ring().shard_for(k) for k in keys] == plain
    assert shards._targets == {"10.0.0.5:50052": "unix:/run/a.sock", "10.0.0.6:50052": "unix:/run/b.sock"}


def test_a_ring_of_one_shard_gives_it_every_key():
    ring = memcache.Ring(["only:1"])
    assert {ring.shard_for(f"k{i}".encode()) for i in range(200)} == {"only:1"}


# ------------------------------------------------------------------ the single-key get: what it sends, how it fails

class _RecordingStub:
    """Stands in for a shard's stub: records each Get as the transport sends it, answers or fails as told."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[pb.GetRequest, float, Any]] = []

    def Get(self, request: pb.GetRequest, *, timeout: float, metadata: Any) -> pb.GetResponse:
        self.calls.append((request, timeout, metadata))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


@pytest.fixture
def one_shard(monkeypatch):
    def use(answer: Any) -> _RecordingStub:
        stub = _RecordingStub(answer)
        monkeypatch.setenv("KILN_MEMCACHE_ADDR", "shard-a:1")
        monkeypatch.setenv("KILN_APP_TOKEN", "app-a.tok")
        memcache.reset()
        memcache._shards._stubs["shard-a:1"] = stub  # type: ignore[assignment]
        return stub
    yield use
    memcache.reset()


def _found(key: bytes, value: bytes, flags: int = memcache.TYPE_BYTES, cas_id: int = 0) -> pb.GetResponse:
    return pb.GetResponse(items=[pb.Item(key=key, value=value, flags=flags, cas_id=cas_id)])


def test_a_get_sends_one_request_with_its_key_namespace_token_and_deadline(one_shard, monkeypatch):
    stub = one_shard(_found("caf\u00e9".encode(), b"7", memcache.TYPE_INT))
    monkeypatch.setenv("HTTP_X_APPENGINE_CURRENT_NAMESPACE", "ns1")
    assert memcache.get("caf\u00e9") == 7
    [(request, timeout, metadata)] = stub.calls
    assert request == pb.GetRequest(namespace="ns1", keys=["caf\u00e9".encode()])
    assert timeout == memcache.CALL_TIMEOUT and metadata == (("authorization", "Bearer app-a.tok"),)


def test_a_get_sends_a_long_key_as_its_sha1_and_ignores_items_for_other_keys(one_shard):
    long_key = "\u00e9" * 200
    hashed = hashlib.sha1(long_key.encode()).hexdigest().encode()
    stub = one_shard(pb.GetResponse(items=[pb.Item(key=b"other", value=b"no"), pb.Item(key=hashed, value=b"yes")]))
    assert memcache.get(long_key) == b"yes"
    assert list(stub.calls[0][0].keys) == [hashed]


def test_a_get_for_cas_remembers_the_items_cas_id_in_its_namespace(one_shard):
    stub = one_shard(_found(b"k", b"v", cas_id=42))
    client = memcache.Client()
    assert client.gets("k", namespace="ns2") == b"v"
    assert stub.calls[0][0].for_cas is True
    assert client._cas_ids == {("ns2", b"k"): 42}


def test_a_get_on_a_request_thread_is_bounded_by_the_requests_deadline(one_shard):
    stub = one_shard(pb.GetResponse())
    at = time.monotonic() + 0.5
    with requestscope.serving({}, [], kiln_runtime._Deadline(at, at + 1)):
        assert memcache.get("k") is None
    assert 0 < stub.calls[0][1] <= 0.5


def test_a_get_refused_as_invalid_raises_value_error(one_shard):
    one_shard(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad key", "BAD_REQUEST"))
    with pytest.raises(ValueError, match="memcache: bad key"):
        memcache.get("k")


def test_a_get_whose_identity_is_refused_raises(one_shard):
    one_shard(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "bad token"))
    with pytest.raises(errors.UnauthenticatedError):
        memcache.get("k")


def test_a_get_from_a_shard_that_does_not_answer_is_a_miss_and_the_shard_rests(one_shard, caplog):
    stub = one_shard(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    with caplog.at_level("WARNING", logger="kiln.api.memcache"):
        assert memcache.get("k") is None
    assert any("UnavailableError" in r.getMessage() for r in caplog.records)
    assert memcache.get("k") is None
    assert len(stub.calls) == 1  # resting: the second get made no call


# ------------------------------------------------------------------ deletes owed after writes whose outcome is unknown

class _ShardStub:
    """Stands in for a shard: records every call by method; each method answers or fails as told."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Any]] = []
        self._called = threading.Condition()

    def wait_for_calls(self, count: int, seconds: float) -> None:
        """Until ``count`` calls were made (by any thread); fails the test after ``seconds``."""
        with self._called:
            assert self._called.wait_for(lambda: len(self.calls) >= count, seconds), self.calls

    def __getattr__(self, method: str) -> Any:
        def call(request: Any, *, timeout: float, metadata: Any) -> Any:
            with self._called:
                self.calls.append((method, request))
                self._called.notify_all()
            answer = self.answers[method]
            if isinstance(answer, BaseException):
                raise answer
            return answer
        return call


@pytest.fixture
def shard_stub(monkeypatch):
    """One stand-in shard; ``settler=False`` keeps the settler thread out, so only the app's calls settle debts."""
    def use(stub: _ShardStub, *, settler: bool = False) -> None:
        monkeypatch.setenv("KILN_MEMCACHE_ADDR", "shard-a:1")
        monkeypatch.setenv("KILN_APP_TOKEN", "app-a.tok")
        memcache.reset()
        memcache._shards._stubs["shard-a:1"] = stub  # type: ignore[assignment]
        if not settler:
            monkeypatch.setattr(memcache._shards, "_settle_owed", lambda: None)
    yield use
    monkeypatch.undo()
    memcache.reset()


def test_the_keys_of_a_set_that_failed_are_deleted_by_a_thread_without_another_call(shard_stub):
    stub = _ShardStub(Set=FakeRpcError(grpc.StatusCode.INTERNAL, "boom"), Delete=pb.DeleteResponse())
    shard_stub(stub, settler=True)
    assert memcache.set("a", 1) is False
    stub.wait_for_calls(2, 10)  # the settler's Delete, with no call of the app's
    assert stub.calls == [("Set", stub.calls[0][1]), ("Delete", pb.DeleteRequest(keys=[b"a"]))]
    assert not memcache._shards._owed


def test_settle_waits_for_a_resting_shard_and_sends_what_it_owes(shard_stub, monkeypatch):
    stub = _ShardStub(Set=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down"), Delete=pb.DeleteResponse())
    shard_stub(stub)
    monkeypatch.setattr(memcache, "DOWN_SECONDS", 0.2)
    assert memcache.set("a", 1) is False  # the shard now rests 0.2 s
    assert memcache.settle(10) is True
    assert [m for m, _ in stub.calls] == ["Set", "Delete"]


def test_settle_gives_up_at_its_deadline_on_a_shard_resting_longer(shard_stub):
    stub = _ShardStub(Set=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down"))
    shard_stub(stub)
    assert memcache.set("a", 1) is False  # rests DOWN_SECONDS (5 s)
    assert memcache.settle(0.01) is False
    assert [m for m, _ in stub.calls] == ["Set"]


def test_the_keys_of_a_set_that_failed_are_deleted_before_the_next_call(shard_stub):
    stub = _ShardStub(Set=FakeRpcError(grpc.StatusCode.INTERNAL, "boom"), Delete=pb.DeleteResponse(),
                      Get=pb.GetResponse())
    shard_stub(stub)
    assert memcache.set_multi({"a": 1, "b": 2}, namespace="ns") == ["a", "b"]
    assert memcache.get("a") is None
    assert [m for m, _ in stub.calls] == ["Set", "Delete", "Get"]
    assert stub.calls[1][1] == pb.DeleteRequest(namespace="ns", keys=[b"a", b"b"])
    assert memcache.get("a") is None and [m for m, _ in stub.calls][3:] == ["Get"]  # owed once, not again


def test_a_shard_that_fails_the_owed_deletes_rests_and_gets_no_other_call(shard_stub):
    stub = _ShardStub(Delete=FakeRpcError(grpc.StatusCode.INTERNAL, "boom"), Get=pb.GetResponse())
    shard_stub(stub)
    assert memcache.delete("k", seconds=5) == memcache.DELETE_NETWORK_FAILURE
    assert memcache.get("k") is None
    assert [(m, r.lockout_seconds) for m, r in stub.calls] == [("Delete", 5), ("Delete", 5)]  # the get was not sent


def test_owed_deletes_beyond_the_limit_become_one_flush(monkeypatch):
    monkeypatch.setattr(memcache, "MAX_INVALIDATIONS", 3)
    owed = memcache._Invalidations()
    owed.add("", [b"a", b"b", b"c"], 0)
    assert [m for m, _ in owed.requests()] == ["Delete"]
    owed.add("", [b"d"], 0)
    assert owed.requests() == [("Flush", pb.FlushRequest())]


def test_keys_owed_while_earlier_ones_are_being_sent_stay_owed():
    owed = memcache._Invalidations()
    owed.add("", [b"a"], 0)
    sending = owed.copy()
    owed.add("", [b"b"], 0)
    owed.add("", [b"a"], 9)  # a longer lock-out asked for meanwhile
    owed.forget(sending)
    assert owed.keys == {("", b"b"): 0, ("", b"a"): 9}


def test_a_flush_owed_while_another_is_being_sent_stays_owed():
    owed = memcache._Invalidations()
    owed.flush()
    sending = owed.copy()
    owed.flush()
    owed.forget(sending)
    assert owed.requests() == [("Flush", pb.FlushRequest())]
