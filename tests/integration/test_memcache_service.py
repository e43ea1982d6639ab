"""Memcache: kiln.api.memcache against real memcache_svc shards (python -m memcache_svc), including a shard that
goes down, one that is added, App Engine's semantics end to end, bad input, and the memcached text protocol
spoken to pymemcache."""

from __future__ import annotations

import concurrent.futures
import signal
import time
import types

import grpc
import pytest
from pymemcache.client.base import Client as TextClient
from pymemcache.exceptions import MemcacheClientError

from kiln import errors
from kiln_platform import auth
from kiln.api import memcache, namespace_manager
from kiln.pb.memcache.v1 import memcache_pb2 as pb
from kiln.pb.memcache.v1 import memcache_pb2_grpc
from kiln_platform.supervisor import free_port, python_module
from tests.integration import apps
from tests.integration.conftest import SECRET, app_metadata, service_env

pytestmark = pytest.mark.nats


def start_shard(supervisor, name, *extra):
    ready = supervisor.run_dir / f"{name}.addr"
    return supervisor.start(name, python_module("memcache_svc", "--listen", "127.0.0.1:0", "--ready-file",
                                                str(ready), *extra), env=service_env(), ready_file=ready)


@pytest.fixture(scope="module")
def shards(supervisor):
    return [start_shard(supervisor, f"memcache-shard-{n}") for n in range(3)]


@pytest.fixture
def as_app(shards, monkeypatch):
    def use(app_id, addresses=None):
        monkeypatch.setenv("KILN_MEMCACHE_ADDR", ",".join(addresses or [s.address for s in shards]))
        monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, app_id))
        memcache.reset()
    use("cacher")
    memcache.flush_all()
    yield use
    memcache.reset()


def test_values_keep_their_type_through_the_service(as_app):
    values = {"b": b"raw", "s": "text \u00e9", "i": 7, "t": True, "f": 2.5, "o": {"nested": [1, 2]}}
    assert memcache.set_multi(values) == []
    assert memcache.get_multi(list(values)) == values


def test_add_replace_and_their_failures(as_app):
    assert memcache.replace("k", 1) is False
    assert memcache.add("k", 1) is True
    assert memcache.add("k", 2) is False
    assert memcache.replace("k", 3) is True and memcache.get("k") == 3


def test_multi_calls_with_a_prefix_report_the_keys_not_stored(as_app):
    memcache.set("p:a", 1)
    assert sorted(memcache.add_multi({"a": 10, "b": 20}, key_prefix="p:")) == ["a"]
    assert memcache.get_multi(["a", "b", "c"], key_prefix="p:") == {"a": 1, "b": 20}


def test_delete_reports_missing_and_locks_out_add(as_app):
    memcache.set("gone", 1)
    assert memcache.delete("gone", seconds=30) == memcache.DELETE_SUCCESSFUL
    assert memcache.delete("gone") == memcache.DELETE_ITEM_MISSING
    assert memcache.add("gone", 2) is False
    assert memcache.set("gone", 3) is True


def test_counters_follow_app_engines_rules(as_app):
    assert memcache.incr("n") is None
    assert memcache.incr("n", initial_value=10) == 11
    assert memcache.decr("n", 100) == 0
    memcache.set("big", 2**64 - 1)
    assert memcache.incr("big", 2) == 1
    memcache.set("word", "abc")
    assert memcache.incr("word") is None
    assert memcache.offset_multi({"x": 5, "y": -3}, initial_value=10) == {"x": 15, "y": 7}
    with pytest.raises(ValueError):
        memcache.incr("n", -1)


def test_gets_and_cas_lose_to_a_concurrent_write(as_app):
    client = memcache.Client()
    memcache.set("c", "v1")
    assert client.gets("c") == "v1"
    memcache.set("c", "v2")  # someone else writes in between
    assert client.cas("c", "mine") is False
    assert client.gets("c") == "v2"
    assert client.cas("c", "mine") is True and memcache.get("c") == "mine"


def test_concurrent_cas_increments_lose_no_update(as_app):
    memcache.set("counter", 0)

    def bump(_):
        client = memcache.Client()
        while True:
            value = client.gets("counter")
            if client.cas("counter", value + 1):
                return

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(bump, range(40)))
    assert memcache.get("counter") == 40


def test_namespaces_and_apps_are_separate_caches(as_app):
    memcache.set("k", "default")
    memcache.set("k", "other ns", namespace="ns1")
    namespace_manager.set_namespace("ns2")
    try:
        memcache.set("k", "current ns")
        assert memcache.get("k") == "current ns"
    finally:
        namespace_manager.set_namespace("")
    assert (memcache.get("k"), memcache.get("k", namespace="ns1")) == ("default", "other ns")
    as_app("another-app")
    assert memcache.get("k") is None


def test_stats_count_this_apps_hits_misses_and_items(as_app):
    as_app("counted")  # an app of its own: hits and misses are counted since each shard started
    memcache.set_multi({"a": b"1234", "b": b"5678"})
    memcache.get("a")
    memcache.get("missing")
    stats = memcache.get_stats()
    assert (stats["hits"], stats["misses"], stats["byte_hits"], stats["items"], stats["bytes"]) == (1, 1, 5, 2, 10)


def test_flush_all_empties_only_this_apps_cache(as_app):
    memcache.set("mine", 1)
    as_app("neighbour")
    memcache.set("theirs", 2)
    as_app("cacher")
    assert memcache.flush_all() is True
    assert memcache.get("mine") is None
    as_app("neighbour")
    assert memcache.get("theirs") == 2


def test_oversized_values_and_bad_keys_are_refused_before_sending(as_app):
    with pytest.raises(ValueError):
        memcache.set("big", b"x" * 1_000_001)
    with pytest.raises(TypeError):
        memcache.set(3.5, "v")
    with pytest.raises(ValueError):
        memcache.set("k", "v", namespace="bad namespace!")


def test_a_long_key_works_through_its_hash(as_app):
    key = "k" * 1000
    assert memcache.set(key, "long") is True and memcache.get(key) == "long"


def test_the_service_refuses_bad_requests_precisely(shards):
    with grpc.insecure_channel(shards[0].address) as channel:
        stub = memcache_pb2_grpc.MemcacheServiceStub(channel)
        cases = [pb.SetRequest(items=[pb.Item(key=b"k" * 251, value=b"v")]),
                 pb.SetRequest(items=[pb.Item(key=b"k", value=b"v" * 1_000_001)]),
                 pb.SetRequest(namespace="no spaces", items=[pb.Item(key=b"k", value=b"v")]),
                 pb.SetRequest(items=[pb.Item(key=b"", value=b"v")])]
        for request in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.Set(request, metadata=app_metadata("cacher"), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        with pytest.raises(grpc.RpcError) as err:
            stub.Get(pb.GetRequest(keys=[b"k"]), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Stats(pb.StatsRequest(), metadata=app_metadata("cacher"), timeout=5) is not None


def test_lru_eviction_keeps_a_shard_within_its_memory_bound(supervisor, as_app):
    small = start_shard(supervisor, "memcache-small", "--max-bytes", str(2 * 1024 * 1024))
    as_app("cacher", [small.address])
    for i in range(40):
        assert memcache.set(f"k{i}", b"x" * 100_000) is True
    stats = memcache.get_stats()
    assert stats["bytes"] <= 2 * 1024 * 1024 and stats["items"] < 40
    assert memcache.get("k39") == b"x" * 100_000 and memcache.get("k0") is None
    small.proc.terminate()
    small.proc.wait(10)
    supervisor.children.remove(small)


def test_a_shard_that_goes_down_turns_into_misses_not_errors(supervisor, as_app):
    extra = [start_shard(supervisor, f"memcache-doomed-{n}") for n in range(2)]
    as_app("cacher", [c.address for c in extra])
    keys = [f"d{i}" for i in range(50)]
    assert memcache.set_multi({k: k for k in keys}) == []
    extra[0].proc.send_signal(signal.SIGKILL)
    extra[0].proc.wait(10)
    supervisor.children.remove(extra[0])
    found = memcache.get_multi(keys)
    assert 0 < len(found) < len(keys) and all(found[k] == k for k in found)  # the live shard's half
    failed = memcache.set_multi({k: "again" for k in keys})
    assert 0 < len(failed) < len(keys)
    assert memcache.get("d0") in (None, "d0", "again")
    extra[1].proc.terminate()
    extra[1].proc.wait(10)
    supervisor.children.remove(extra[1])


def test_adding_a_shard_moves_only_its_share_of_keys(supervisor, shards, as_app):
    keys = [f"m{i}" for i in range(300)]
    assert memcache.set_multi({k: k for k in keys}) == []
    newcomer = start_shard(supervisor, "memcache-newcomer")
    as_app("cacher", [s.address for s in shards] + [newcomer.address])
    still = memcache.get_multi(keys)
    assert 0.6 * len(keys) < len(still) < 0.9 * len(keys)  # about a quarter moved to the empty newcomer
    newcomer.proc.terminate()
    newcomer.proc.wait(10)
    supervisor.children.remove(newcomer)


@pytest.fixture(scope="module")
def text_shard(supervisor):
    port = free_port()
    child = start_shard(supervisor, "memcache-text", "--text-listen", f"127.0.0.1:{port}", "--text-app", "tools")
    return child, port


def test_pymemcache_speaks_to_the_text_protocol(text_shard):
    _, port = text_shard
    client = TextClient(("127.0.0.1", port), default_noreply=False, connect_timeout=5, timeout=5)
    assert client.set("k", b"v", expire=60) is True
    assert client.get("k") == b"v"
    assert client.add("k", b"w") is False and client.replace("k", b"w") is True
    value, cas = client.gets("k")
    assert value == b"w" and client.cas("k", b"x", cas) is True and client.cas("k", b"y", cas) is False
    assert client.incr("n", 1) is None
    client.set("n", b"41")
    assert client.incr("n", 1) == 42 and client.decr("n", 50) == 0
    assert client.append("k", b"!") is True and client.get("k") == b"x!"
    assert client.touch("k", 100) is True
    assert client.delete("k") is True and client.get("k") is None
    assert client.get_many(["n", "zz"]) == {"n": b"0 "}  # as memcached: a decremented counter keeps its width
    assert b"get_hits" in b" ".join(k for k in client.stats())
    assert client.version()
    client.close()


def test_the_text_protocol_serves_its_app_through_the_grpc_api_too(text_shard, monkeypatch):
    child, port = text_shard
    client = TextClient(("127.0.0.1", port), default_noreply=False, timeout=5)
    client.set("shared", b"from-text")
    client.close()
    monkeypatch.setenv("KILN_MEMCACHE_ADDR", child.address)
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, "tools"))
    memcache.reset()
    assert memcache.get("shared") == b"from-text"
    memcache.reset()


def test_the_text_protocol_rejects_bad_input_and_keeps_serving(text_shard):
    _, port = text_shard
    client = TextClient(("127.0.0.1", port), default_noreply=False, timeout=5)
    with pytest.raises(MemcacheClientError):
        client.set("bad key", b"v")  # pymemcache refuses it itself
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        reader = raw.makefile("rb")
        raw.sendall(b"bogus command\r\n")
        assert reader.readline() == b"ERROR\r\n"
        raw.sendall(b"incr n x\r\n")
        assert reader.readline() == b"CLIENT_ERROR invalid numeric delta argument\r\n"
        raw.sendall(b"set k 0 0 2000000\r\n" + b"v" * 2_000_000 + b"\r\n")  # as memcached: refused, data skipped
        assert reader.readline() == b"SERVER_ERROR object too large for cache\r\n"
        raw.sendall(b"get k\r\n")
        assert reader.readline() == b"END\r\n"
        reader.close()
    assert client.set("ok", b"1") is True
    client.close()


def test_items_expire_relative_or_at_an_absolute_time(as_app):
    import time
    memcache.set("short", "v", time=1)
    memcache.set("absolute", "v", time=time.time() + 1)
    memcache.set("kept", "v", time=3600)
    time.sleep(1.5)
    assert memcache.get_multi(["short", "absolute", "kept"]) == {"kept": "v"}


def test_counter_created_by_incr_reads_back_as_an_int(as_app):
    memcache.delete("fresh-counter")
    assert memcache.incr("fresh-counter", initial_value=41) == 42
    assert memcache.get("fresh-counter") == 42


# --- large responses, and which failures are misses (App Engine's client swallowed service errors only) ---------

LARGE_VALUES = {
    "6 values of 900 KB": {f"big{i}": bytes([i]) * 900_000 for i in range(6)},
    "40 strings of 200 KB": {f"s{i}": chr(0x41 + i % 26) * 200_000 for i in range(40)},
    "5 pickled lists of 1 MB": {f"p{i}": [bytes([i]) * 999_900] for i in range(5)},
}


@pytest.mark.parametrize("values", LARGE_VALUES.values(), ids=LARGE_VALUES.keys())
def test_get_multi_returns_values_totalling_more_than_four_megabytes(shards, as_app, values):
    as_app("cacher", [shards[0].address])  # one shard: the whole answer travels in one response
    assert memcache.set_multi(values) == []
    assert memcache.get_multi(list(values)) == values


def test_gets_of_many_large_values_keeps_their_cas_ids(shards, as_app):
    as_app("cacher", [shards[0].address])
    values = LARGE_VALUES["6 values of 900 KB"]
    memcache.set_multi(values)
    client = memcache.Client()
    assert client.get_multi(list(values), for_cas=True) == values
    assert client.cas("big0", b"new") is True and memcache.get("big0") == b"new"


def test_a_response_over_the_shards_limit_is_a_logged_miss(supervisor, as_app, caplog):
    # App Engine's client answered a response too large for the service with {} as well; kiln also logs it.
    small = start_shard(supervisor, "memcache-small-messages", "--max-message-bytes", str(2 * 1024 * 1024))
    try:
        as_app("cacher", [small.address])
        values = {f"v{i}": bytes([i]) * 900_000 for i in range(3)}
        assert all(memcache.set(key, value) for key, value in values.items())  # each request fits
        with caplog.at_level("WARNING", logger="kiln.api.memcache"):
            assert memcache.get_multi(list(values)) == {}
        assert any("memcache Get" in r.getMessage() and small.address in r.getMessage() for r in caplog.records)
        assert memcache.get("v0") == values["v0"]  # the shard keeps serving what fits
    finally:
        small.proc.terminate()
        small.proc.wait(10)
        supervisor.children.remove(small)


def test_a_shard_that_goes_down_is_logged_when_answered_as_a_miss(supervisor, as_app, caplog):
    doomed = start_shard(supervisor, "memcache-doomed-logged")
    as_app("cacher", [doomed.address])
    memcache.set("k", 1)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(10)
    supervisor.children.remove(doomed)
    with caplog.at_level("WARNING", logger="kiln.api.memcache"):
        assert memcache.get("k") is None
    assert any("memcache Get" in r.getMessage() and "UnavailableError" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("call", [
    lambda: memcache.get("k"),
    lambda: memcache.get_multi(["a", "b", "c"]),
    lambda: memcache.set("k", 1),
    lambda: memcache.add_multi({"a": 1}),
    lambda: memcache.delete("k"),
    lambda: memcache.incr("n", initial_value=1),
    lambda: memcache.flush_all(),
    lambda: memcache.get_stats(),
], ids=["get", "get_multi", "set", "add_multi", "delete", "incr", "flush_all", "get_stats"])
def test_an_app_the_service_does_not_accept_gets_an_error_not_a_miss(as_app, monkeypatch, call):
    monkeypatch.setenv("KILN_APP_TOKEN", "not-a-token")
    with pytest.raises(errors.UnauthenticatedError):
        call()


def test_a_request_the_service_refuses_raises_value_error(shards, as_app):
    as_app("cacher", [shards[0].address])
    too_many = [f"k{i}" for i in range(10_001)]  # over the service's 10,000 keys per call
    with pytest.raises(ValueError, match="10001 keys in one call"):
        memcache.get_multi(too_many)
    with pytest.raises(ValueError, match="10001 keys in one call"):
        memcache.delete_multi(too_many)


# ------------------------------------------------------------------ the single-key get (a call of its own)

@pytest.mark.parametrize("key", ["caf\u00e9 \u2603", "\u00e9" * 125, "\u00e9" * 200, "k" * 250, "k" * 251],
                         ids=["non-ascii", "250 bytes of non-ascii", "hashed non-ascii", "250 bytes", "hashed"])
def test_a_get_finds_what_get_multi_and_set_stored_under_every_key_form(as_app, key):
    assert memcache.set(key, "v1") is True
    assert memcache.get(key) == "v1"
    assert memcache.get(key.encode("utf-8")) == "v1"  # a str key is its UTF-8 bytes
    assert memcache.get((12345, key)) == "v1"  # App Engine's (hash, key) form
    memcache.set_multi({key: "v2"})
    assert memcache.get(key) == memcache.get_multi([key])[key] == "v2"


def test_a_get_of_a_missing_key_or_in_another_namespace_is_a_miss(as_app):
    memcache.set("k", "default")
    assert memcache.get("absent") is None
    assert memcache.get("k", namespace="other") is None
    assert memcache.get("k", namespace="") == "default"


def test_a_get_refuses_a_bad_namespace_or_key_before_sending(as_app):
    with pytest.raises(ValueError):
        memcache.get("k", namespace="bad namespace!")
    with pytest.raises(ValueError):
        memcache.get("")
    with pytest.raises(TypeError):
        memcache.get(3.5)


def test_the_service_checks_a_one_key_get_as_a_many_key_one(shards):
    with grpc.insecure_channel(shards[0].address) as channel:
        stub = memcache_pb2_grpc.MemcacheServiceStub(channel)
        for request in (pb.GetRequest(keys=[b""]), pb.GetRequest(keys=[b"k" * 251]),
                        pb.GetRequest(namespace="no spaces", keys=[b"k"])):
            with pytest.raises(grpc.RpcError) as err:
                stub.Get(request, metadata=app_metadata("checked"), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        stub.Set(pb.SetRequest(items=[pb.Item(key=b"k", value=b"v", flags=3)]), metadata=app_metadata("checked"),
                 timeout=5)
        plain = stub.Get(pb.GetRequest(keys=[b"k"]), metadata=app_metadata("checked"), timeout=5)
        for_cas = stub.Get(pb.GetRequest(keys=[b"k"], for_cas=True), metadata=app_metadata("checked"), timeout=5)
        assert [(i.key, i.value, i.flags, i.cas_id) for i in plain.items] == [(b"k", b"v", 3, 0)]
        assert [(i.key, i.value, i.flags) for i in for_cas.items] == [(b"k", b"v", 3)] and for_cas.items[0].cas_id
        assert not stub.Get(pb.GetRequest(keys=[b"k"]), metadata=app_metadata("other-app"), timeout=5).items


# ------------------------------------------------------------------ writes whose outcome is unknown


@pytest.fixture
def stallable(supervisor, as_app, monkeypatch):
    """A shard of its own, and a way to make this process rest it: stopped (SIGSTOP) so that one get runs past a
    short deadline, then continued. Calls made while it rests are not sent."""
    shard = start_shard(supervisor, "memcache-stallable")
    as_app("cacher", [shard.address])
    monkeypatch.setattr(memcache, "CALL_TIMEOUT", 0.3)
    monkeypatch.setattr(memcache, "DOWN_SECONDS", 0.5)

    def stall() -> None:
        shard.proc.send_signal(signal.SIGSTOP)
        try:
            assert memcache.get("probe") is None  # past its deadline: the shard now rests
        finally:
            shard.proc.send_signal(signal.SIGCONT)

    def rested() -> None:
        apps.wait_for(lambda: memcache._shards._down_until.get(shard.address, 0) <= time.monotonic(), 10)

    yield types.SimpleNamespace(shard=shard, stall=stall, rested=rested)
    shard.proc.terminate()
    shard.proc.wait(10)
    supervisor.children.remove(shard)


def test_a_delete_not_sent_while_a_shard_rests_is_carried_out_before_the_next_call(stallable):
    assert memcache.set("k", "old") is True
    stallable.stall()
    assert memcache.delete("k") == memcache.DELETE_NETWORK_FAILURE
    stallable.rested()
    assert memcache.get("k") is None


def test_a_set_past_its_deadline_leaves_no_value_behind(stallable):
    assert memcache.set("k", "old") is True
    stallable.shard.proc.send_signal(signal.SIGSTOP)
    try:
        assert memcache.set("k", "new") is False  # unknown: the stopped shard may still store it
    finally:
        stallable.shard.proc.send_signal(signal.SIGCONT)
    stallable.rested()
    assert memcache.get("k") is None


def test_a_cas_of_what_was_read_before_a_write_that_was_not_sent_does_not_store_it(stallable):
    # ndb's global cache: a reader locks the key and reads it for cas, then reads the datastore; a writer locks
    # it, puts, and deletes it. If the writer's memcache calls are lost, the reader's cas must not store what
    # it read before the put.
    reader, writer = memcache.Client(), memcache.Client()
    assert reader.set("entity", "locked by the reader") is True
    assert reader.gets("entity") == "locked by the reader"
    stallable.stall()
    assert writer.set("entity", "locked by the writer") is False
    assert writer.delete("entity") == memcache.DELETE_NETWORK_FAILURE
    stallable.rested()
    assert reader.cas("entity", "the entity before the put") is False
    assert memcache.get("entity") is None


def test_a_flush_not_sent_while_a_shard_rests_is_sent_before_the_next_call(stallable):
    assert memcache.set_multi({"a": 1, "b": 2}) == []
    stallable.stall()
    assert memcache.flush_all() is False
    stallable.rested()
    assert memcache.get_multi(["a", "b"]) == {}


def test_a_delete_not_sent_while_a_shard_rests_reaches_it_though_this_process_calls_it_no_more(stallable):
    # Another instance reads next: it must not find the value this one meant to delete.
    assert memcache.set("k", "old") is True
    stallable.stall()
    assert memcache.delete("k") == memcache.DELETE_NETWORK_FAILURE
    with grpc.insecure_channel(stallable.shard.address) as channel:
        other_process = memcache_pb2_grpc.MemcacheServiceStub(channel)
        apps.wait_for(lambda: not other_process.Get(pb.GetRequest(keys=[b"k"]), metadata=app_metadata("cacher"),
                                                    timeout=5).items, 10)
