"""A memcache shard's cache: App Engine's semantics for expiry, policies, lock-out, counters, LRU by bytes."""

from __future__ import annotations

import pytest

from memcache_svc.store import ITEM_OVERHEAD, THIRTY_DAYS, Cache


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cache(clock):
    return Cache(10 * 1024 * 1024, clock)


K = ("app", "", b"k")


def test_relative_expiry_up_to_thirty_days(cache, clock):
    cache.set(K, b"v", 0, 10, "set")
    clock.now += 9
    assert cache.get(K) is not None
    clock.now += 2
    assert cache.get(K) is None


def test_expiry_beyond_thirty_days_is_an_absolute_time(cache, clock):
    cache.set(K, b"v", 0, int(clock.now) + THIRTY_DAYS + 100, "set")
    clock.now += THIRTY_DAYS + 99
    assert cache.get(K) is not None
    clock.now += 2
    assert cache.get(K) is None


def test_add_only_when_absent_and_replace_only_when_present(cache):
    assert cache.set(K, b"1", 0, 0, "replace") == "NOT_STORED"
    assert cache.set(K, b"1", 0, 0, "add") == "STORED"
    assert cache.set(K, b"2", 0, 0, "add") == "NOT_STORED"
    assert cache.set(K, b"3", 0, 0, "replace") == "STORED"
    assert cache.get(K).value == b"3"


def test_cas_stores_only_if_unchanged_since_read(cache):
    cache.set(K, b"1", 0, 0, "set")
    seen = cache.get(K).cas
    cache.set(K, b"2", 0, 0, "set")
    assert cache.set(K, b"3", 0, 0, "cas", seen) == "EXISTS"
    assert cache.set(K, b"3", 0, 0, "cas", cache.get(K).cas) == "STORED"


def test_delete_with_seconds_locks_out_add_replace_and_cas_until_it_ends(cache, clock):
    cache.set(K, b"1", 0, 0, "set")
    seen = cache.get(K).cas
    assert cache.delete(K, lockout_seconds=5) is True
    assert [cache.set(K, b"2", 0, 0, policy, seen) for policy in ("add", "replace", "cas")] == ["NOT_STORED"] * 3
    clock.now += 6
    assert cache.set(K, b"2", 0, 0, "add") == "STORED"


def test_a_plain_set_stores_over_a_lock_out_and_ends_it(cache):
    cache.set(K, b"1", 0, 0, "set")
    cache.delete(K, lockout_seconds=5)
    assert cache.set(K, b"2", 0, 0, "set") == "STORED"
    assert cache.set(K, b"3", 0, 0, "replace") == "STORED"


def test_deleting_a_missing_key_with_seconds_locks_nothing(cache):
    assert cache.delete(K, lockout_seconds=5) is False
    assert cache.set(K, b"1", 0, 0, "add") == "STORED"


def test_a_counter_created_from_its_initial_value_ends_a_lock_out(cache):
    cache.set(K, b"1", 0, 0, "set")
    cache.delete(K, lockout_seconds=5)
    assert cache.incr(K, 1, False, None) is None
    assert cache.incr(K, 1, False, 10) == 11
    assert cache.set(K, b"3", 0, 0, "replace") == "STORED"


def test_peek_reports_expiry_last_access_and_leaves_them_alone(cache, clock):
    cache.set(K, b"v", 0, 0, "set")
    stored_at = clock.now
    clock.now += 5
    peeked = cache.peek(K)
    assert (peeked.item.value, peeked.item.expires, peeked.item.accessed, peeked.locked_until) == (
        b"v", 0.0, stored_at, 0.0)
    cache.get(K)
    assert cache.peek(K).item.accessed == stored_at + 5


def test_peek_shows_a_delete_locked_key_without_an_item(cache, clock):
    cache.set(K, b"v", 0, 0, "set")
    cache.delete(K, lockout_seconds=30)
    assert cache.get(K) is None
    peeked = cache.peek(K)
    assert (peeked.item, peeked.locked_until) == (None, clock.now + 30)


def test_peek_does_not_move_an_item_in_the_eviction_order(clock):
    small = Cache(3 * (1 + 1 + ITEM_OVERHEAD), clock)
    for name in (b"a", b"b", b"c"):
        small.set(("app", "", name), b"v", 0, 0, "set")
    small.peek(("app", "", b"a"))
    small.set(("app", "", b"d"), b"v", 0, 0, "set")
    assert small.peek(("app", "", b"a")) is None and small.peek(("app", "", b"b")) is not None


def test_incr_wraps_at_two_to_the_64_and_decr_floors_at_zero(cache):
    cache.set(K, str(2**64 - 1).encode(), 0, 0, "set")
    assert cache.incr(K, 2, False, None) == 1
    assert cache.incr(K, 5, True, None) == 0


def test_incr_of_a_missing_key_uses_the_initial_value_or_misses(cache):
    assert cache.incr(K, 1, False, None) is None
    assert cache.incr(K, 1, False, 10) == 11
    assert cache.get(K).flags == 0
    cache.delete(K, 0)
    assert cache.incr(K, 1, False, 10, initial_flags=3) == 11
    assert cache.get(K).flags == 3


def test_incr_of_a_non_number_is_refused(cache):
    cache.set(K, b"abc", 0, 0, "set")
    with pytest.raises(ValueError):
        cache.incr(K, 1, False, None)


def test_least_recently_used_items_go_first_under_the_byte_bound(clock):
    cache = Cache(3 * (1000 + 1 + ITEM_OVERHEAD), clock)
    for name in (b"a", b"b", b"c"):
        cache.set(("app", "", name), b"x" * 1000, 0, 0, "set")
    cache.get(("app", "", b"a"))  # a is now the most recently used
    cache.set(("app", "", b"d"), b"x" * 1000, 0, 0, "set")
    assert cache.get(("app", "", b"b")) is None
    assert cache.get(("app", "", b"a")) is not None and cache.get(("app", "", b"d")) is not None
    assert cache.bytes_used <= cache.max_bytes


def test_apps_and_namespaces_do_not_share_items_flushes_or_stats(cache):
    cache.set(("a1", "", b"k"), b"1", 0, 0, "set")
    cache.set(("a1", "ns", b"k"), b"2", 0, 0, "set")
    cache.set(("a2", "", b"k"), b"3", 0, 0, "set")
    assert cache.get(("a1", "ns", b"k")).value == b"2"
    cache.flush("a1")
    assert cache.get(("a1", "", b"k")) is None and cache.get(("a2", "", b"k")).value == b"3"
    assert cache.stats("a2")[0].items == 1 and cache.stats("a1")[0].items == 0


def test_stats_count_hits_misses_and_bytes(cache, clock):
    cache.set(K, b"12345", 0, 0, "set")
    cache.get(K)
    cache.get(("app", "", b"missing"))
    clock.now += 7
    stats, oldest = cache.stats("app")
    # As the SDK's stub counts them: a key's bytes with its value's.
    assert (stats.hits, stats.misses, stats.byte_hits, stats.items, stats.bytes) == (1, 1, 6, 1, 6)
    assert oldest == 7


def test_a_flush_starts_the_apps_counters_again_unless_told_to_keep_them(cache):
    cache.set(K, b"v", 0, 0, "set")
    cache.get(K)
    cache.flush("app", reset_stats=False)
    assert cache.stats("app")[0].hits == 1
    cache.flush("app")
    assert (cache.stats("app")[0].hits, cache.stats("app")[0].items) == (0, 0)


def test_incr_keeping_width_pads_a_shorter_number_with_spaces(cache):
    cache.set(K, b"100", 0, 0, "set")
    assert cache.incr(K, 1, True, None, keep_width=True) == 99
    assert cache.get(K).value == b"99 "
    assert cache.incr(K, 1, False, None, keep_width=True) == 100
    assert cache.get(K).value == b"100"


def test_incr_without_keep_width_stores_the_bare_number(cache):
    cache.set(K, b"100", 0, 0, "set")
    cache.incr(K, 1, True, None)
    assert cache.get(K).value == b"99"


def test_reset_counters_zeroes_hits_and_misses_but_keeps_items(cache):
    cache.set(K, b"v", 0, 0, "set")
    cache.get(K)
    cache.get(("app", "", b"missing"))
    cache.reset_counters("app")
    stats, _ = cache.stats("app")
    assert (stats.hits, stats.misses, stats.byte_hits, stats.items, stats.bytes) == (0, 0, 0, 1, 2)
