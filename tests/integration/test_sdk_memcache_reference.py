"""kiln's memcache against the reference: the same sequence of Google SDK memcache calls, once served by the SDK's
own ``MemcacheServiceStub`` and once by kiln (kiln.sdk's stub, real ``python -m memcache_svc`` shards), must observe
the same results — delete lock-outs, peeks with their timestamps, counters, compare-and-set and statistics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kiln_platform import auth
from kiln_platform.supervisor import python_module
from kiln.api import _rpc
from kiln.api import memcache as kiln_memcache
from tests.integration.apps import wait_for
from tests.integration.conftest import SECRET, service_env
from tests.unit.conftest import gae_sdk  # noqa: F401 - the fixture: the SDK importable in this process

pytestmark = pytest.mark.nats

APP = "memref"
TICKET = "HTTP_X_APPENGINE_API_TICKET"
Clock = Callable[[float], object]  # a timestamp -> how it is compared (seconds from the scenario's start)


@pytest.fixture(scope="module")
def shards(supervisor):
    started = []
    for n in range(2):
        ready = supervisor.run_dir / f"memref-{n}.addr"
        started.append(supervisor.start(f"memref-{n}", python_module(
            "memcache_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready)), env=service_env(),
            ready_file=ready).address)
    return started


@pytest.fixture(scope="module")
def proxy(gae_sdk):  # noqa: F811
    from kiln.sdk import proxy

    return proxy.install(APP)


@pytest.fixture
def served_by(shards, proxy, monkeypatch) -> Iterator[Callable[[str], None]]:
    """``served_by("reference")`` or ``served_by("kiln")``: which implementation answers the SDK's memcache calls
    made by this thread, a request of the app with an open API ticket."""
    from google.appengine.api import apiproxy_stub_map
    from google.appengine.api.memcache import memcache_stub

    from kiln.sdk import tickets

    monkeypatch.setenv("KILN_MEMCACHE_ADDR", ",".join(shards))
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, APP))
    _rpc.reset()
    kiln_memcache.reset()
    ticket = tickets.open_ticket(APP, {"DEFAULT_VERSION_HOSTNAME": f"{APP}.apps.example.test"})
    monkeypatch.setenv(TICKET, ticket)
    kilns = apiproxy_stub_map.apiproxy.GetStub("memcache")

    def use(which: str) -> None:
        stub = memcache_stub.MemcacheServiceStub() if which == "reference" else kilns
        apiproxy_stub_map.apiproxy.ReplaceStub("memcache", stub)

    yield use
    apiproxy_stub_map.apiproxy.ReplaceStub("memcache", kilns)
    tickets.close(ticket)
    kiln_memcache.reset()
    _rpc.reset()


# Timestamps are whole seconds on both sides, taken a few milliseconds apart within each run: a second may turn
# between the scenario's start and a call on one side and not the other, so times are equal within this.
SECONDS_APART = 2


def since(start: int) -> Clock:
    return lambda t: ("at", t - start) if t else 0


def same(kiln: object, reference: object) -> bool:
    """Whether kiln observed what the reference did, times (``("at", seconds)``) within :data:`SECONDS_APART`."""
    if isinstance(kiln, tuple) and isinstance(reference, tuple) and len(kiln) == len(reference) == 2 and \
            kiln[0] == reference[0] == "at":
        return abs(kiln[1] - reference[1]) <= SECONDS_APART
    if isinstance(kiln, (list, tuple)) and isinstance(reference, (list, tuple)):
        return type(kiln) is type(reference) and len(kiln) == len(reference) and \
            all(same(k, r) for k, r in zip(kiln, reference))
    return kiln == reference


def peeked(memcache: Any, key: str, at: Clock) -> object:
    item = memcache.peek(key)
    if item is None:
        return None
    return (item.get_value(), at(item.get_expiration_time_sec()), at(item.get_last_access_time_sec()),
            at(item.get_delete_lock_time_sec()))


def lock_outs(memcache: Any, at: Clock) -> list[object]:
    seen: list[object] = []
    memcache.set("locked", "v")
    seen += [memcache.delete("locked", seconds=30), memcache.get("locked"), peeked(memcache, "locked", at)]
    seen += [memcache.add("locked", "a"), memcache.replace("locked", "r")]
    seen += [memcache.set("locked", "s"), memcache.replace("locked", "r2"), memcache.get("locked")]
    seen += [memcache.delete("never-there", seconds=30), memcache.add("never-there", "fresh")]
    memcache.set("counter", "7")
    seen += [memcache.delete("counter", seconds=30), memcache.incr("counter"),
             memcache.incr("counter", initial_value=5), memcache.add("counter", 1), memcache.get("counter")]
    return seen


def compare_and_set(memcache: Any, at: Clock) -> list[object]:
    client = memcache.Client()
    client.set("cas", "one")
    seen: list[object] = [client.gets("cas")]
    client.delete("cas", seconds=30)
    seen += [client.cas("cas", "two"), client.get("cas")]
    client.set("cas2", "one")
    client.gets("cas2")
    client.set("cas2", "changed")
    seen += [client.cas("cas2", "two"), client.get("cas2")]
    return seen


def peeks(memcache: Any, at: Clock) -> list[object]:
    memcache.set("forever", "f")
    memcache.set("relative", "r", time=100)
    memcache.set("absolute", "a", time=2_000_000_000)
    memcache.get("relative")
    return [peeked(memcache, key, at) for key in ("forever", "relative", "absolute", "missing")]


def statistics(memcache: Any, at: Clock) -> list[object]:
    memcache.set_multi({"a": "1234", "bb": "56"})
    memcache.get("a")
    memcache.get("missing")
    memcache.peek("bb")
    memcache.delete("a", seconds=10)
    memcache.get("a")
    stats = memcache.get_stats()
    return [stats[name] for name in ("hits", "misses", "byte_hits", "items", "bytes")]


@pytest.mark.parametrize("scenario", [lock_outs, compare_and_set, peeks, statistics])
def test_kiln_observes_what_the_sdks_own_stub_observes(served_by, scenario):
    from google.appengine.api import memcache

    results = {}
    for which in ("reference", "kiln"):
        served_by(which)
        memcache.flush_all()
        start = int(time.time())
        results[which] = scenario(memcache, since(start))
    assert same(results["kiln"], results["reference"]), results


def test_ndbs_cache_lock_survives_writes_a_resting_shard_did_not_get(served_by, shards, supervisor, monkeypatch):
    """ndb's global cache through the SDK's client: a reader locks an entity's key and reads it for cas before
    reading the datastore; the writer's lock and delete around its put reach no shard (the shard rests after a
    call ran past its deadline). The reader's cas of what it read before the put must not store it."""
    import signal

    from google.appengine.api import memcache

    served_by("kiln")
    stalled = next(c for c in supervisor.children if c.address == shards[0])
    monkeypatch.setenv("KILN_MEMCACHE_ADDR", shards[0])
    kiln_memcache.reset()
    monkeypatch.setattr(kiln_memcache, "CALL_TIMEOUT", 0.3)
    monkeypatch.setattr(kiln_memcache, "DOWN_SECONDS", 0.5)
    reader, writer = memcache.Client(), memcache.Client()
    assert reader.set("ndb-entity", "locked by the reader") is True
    assert reader.gets("ndb-entity") == "locked by the reader"
    stalled.proc.send_signal(signal.SIGSTOP)
    try:
        assert writer.get("probe") is None  # past its deadline: the shard rests
    finally:
        stalled.proc.send_signal(signal.SIGCONT)
    assert writer.set("ndb-entity", "locked by the writer") is False
    assert writer.delete("ndb-entity") == memcache.DELETE_NETWORK_FAILURE
    wait_for(lambda: kiln_memcache._shards._down_until.get(shards[0], 0) <= time.monotonic(), 10)
    assert reader.cas("ndb-entity", "the entity before the put") is False
    assert reader.get("ndb-entity") is None
