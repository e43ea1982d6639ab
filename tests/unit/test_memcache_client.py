"""kiln.api.memcache without a service: consistent hashing, key and value encoding as App Engine's."""

from __future__ import annotations

import hashlib

import pytest

from kiln.api import memcache


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
