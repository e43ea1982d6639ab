"""The cache of one memcache shard: items per (app, namespace, key), LRU under a byte bound, expiry, CAS.

One LRU order spans every app, so memory goes to what is used; each app's
items and statistics are its own (an app can reach only keys under its own
name). An item costs its key, value and a fixed overhead against the bound.
Expired items are dropped when touched and by :meth:`Cache.sweep`.

Semantics follow App Engine's memcache: expiry times up to 30 days are
relative seconds and larger ones absolute Unix times; ``delete`` with
``seconds`` locks the key out of ``add`` (and ``replace``) for that long;
``incr`` wraps at 2**64 and ``decr`` stops at zero; a value that is not a
decimal number cannot be incremented.

The lock-out follows Google's SDK stub (the reference): only a key that was
there is locked; a plain ``set`` stores over the lock and ends it; ``add``,
``replace`` and ``cas`` are refused while it lasts; a locked key is a miss for
``get`` and shown, valueless, by :meth:`Cache.peek`.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from collections.abc import Callable

THIRTY_DAYS = 30 * 24 * 3600
ITEM_OVERHEAD = 64  # bytes counted per item beyond key and value (bookkeeping)
MAX_KEY_BYTES = 250
MAX_VALUE_BYTES = 1_000_000
U64 = 2**64

Key = tuple[str, str, bytes]  # app, namespace, key


@dataclasses.dataclass
class Item:
    value: bytes
    flags: int
    expires: float  # absolute time, 0 = never
    cas: int
    accessed: float

    def size(self, key: Key) -> int:
        return len(key[2]) + len(self.value) + ITEM_OVERHEAD


@dataclasses.dataclass(frozen=True)
class Peeked:
    """What a peek reports about one key: its item (None while delete-locked) and, if locked, until when and when
    the deleted item was last accessed."""

    item: Item | None
    locked_until: float = 0.0
    locked_accessed: float = 0.0


@dataclasses.dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    byte_hits: int = 0
    items: int = 0
    bytes: int = 0


def absolute_expiry(expiration: int, now: float) -> float:
    """App Engine's rule: 0 never; up to 30 days relative seconds; else an absolute Unix time."""
    if expiration <= 0:
        return 0.0
    if expiration <= THIRTY_DAYS:
        return now + expiration
    return float(expiration)


class Cache:
    """One shard's items (see module docstring). Not thread-safe: the service runs it on one event loop."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: collections.OrderedDict[Key, Item] = collections.OrderedDict()
        self._locked: dict[Key, tuple[float, float]] = {}  # until, the deleted item's last access
        self._stats: dict[str, Stats] = collections.defaultdict(Stats)
        self._bytes = 0
        self._cas = itertools.count(1)

    # -------------------------------------------------------------- internals

    def _live(self, key: Key, now: float) -> Item | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires and item.expires <= now:
            self._remove(key)
            return None
        return item

    def _remove(self, key: Key) -> None:
        item = self._items.pop(key)
        self._bytes -= item.size(key)
        stats = self._stats[key[0]]
        stats.items -= 1
        stats.bytes -= len(key[2]) + len(item.value)

    def _store(self, key: Key, value: bytes, flags: int, expires: float, now: float) -> None:
        if key in self._items:
            self._remove(key)
        item = Item(value, flags, expires, next(self._cas), now)
        self._items[key] = item
        self._bytes += item.size(key)
        stats = self._stats[key[0]]
        stats.items += 1
        stats.bytes += len(key[2]) + len(value)
        while self._bytes > self.max_bytes and self._items:
            self._remove(next(iter(self._items)))  # least recently used first

    def _is_locked(self, key: Key, now: float) -> bool:
        until = self._locked.get(key, (0.0, 0.0))[0]
        if not until:
            return False
        if until <= now:
            del self._locked[key]
            return False
        return True

    # -------------------------------------------------------------- operations

    def get(self, key: Key, *, count: bool = True) -> Item | None:
        now = self._clock()
        item = self._live(key, now)
        stats = self._stats[key[0]]
        if item is None:
            if count:
                stats.misses += 1
            return None
        if not item.expires:  # as the SDK's stub: an item that expires keeps the access time it was stored with
            item.accessed = now
        self._items.move_to_end(key)
        if count:
            stats.hits += 1
            stats.byte_hits += len(key[2]) + len(item.value)
        return item

    def peek(self, key: Key) -> Peeked | None:
        """The item and its lock-out without touching it: its last access and LRU place stay as they were. A
        delete-locked key is reported with no item; a missing one is None. Counted as a hit, as the SDK's stub does."""
        now = self._clock()
        item = self._live(key, now)
        locked = self._is_locked(key, now)
        if item is None and not locked:
            self._stats[key[0]].misses += 1
            return None
        stats = self._stats[key[0]]
        stats.hits += 1
        stats.byte_hits += len(key[2]) + (len(item.value) if item is not None else 0)
        if locked:
            until, accessed = self._locked[key]
            return Peeked(item, until, accessed)
        return Peeked(item)

    def set(self, key: Key, value: bytes, flags: int, expiration: int, policy: str, cas: int = 0) -> str:
        """Store under ``policy`` (set, add, replace, cas); returns STORED, NOT_STORED or EXISTS."""
        now = self._clock()
        current = self._live(key, now)
        if policy != "set" and self._is_locked(key, now):
            return "NOT_STORED"
        if policy == "add" and current is not None:
            return "NOT_STORED"
        if policy == "replace" and current is None:
            return "NOT_STORED"
        if policy == "cas":
            if current is None:
                return "NOT_STORED"
            if current.cas != cas:
                return "EXISTS"
        if len(key[2]) + len(value) + ITEM_OVERHEAD > self.max_bytes:
            return "NOT_STORED"
        self._locked.pop(key, None)
        self._store(key, value, flags, absolute_expiry(expiration, now), now)
        return "STORED"

    def delete(self, key: Key, lockout_seconds: int = 0) -> bool:
        """Remove; True if it was there. ``lockout_seconds`` then keeps ``add``/``replace``/``cas`` from storing
        it meanwhile (a key that was not there is not locked)."""
        now = self._clock()
        item = self._live(key, now)
        if item is None:
            return False
        self._remove(key)
        if lockout_seconds > 0:
            self._locked[key] = (absolute_expiry(lockout_seconds, now), item.accessed)
        return True

    def incr(self, key: Key, delta: int, decrement: bool, initial: int | None, initial_flags: int = 0, *,
             keep_width: bool = False) -> int | None:
        """The new value, or None if the key is missing (or delete-locked) and no ``initial`` was given (an item
        created from ``initial`` gets ``initial_flags``). With ``keep_width`` a new value shorter than the old one
        is padded with spaces to the old length, as memcached's in-place update does (its text protocol).

        Raises:
            ValueError: the stored value is not a decimal number below 2**64.
        """
        now = self._clock()
        item = self._live(key, now)
        if item is None:
            if initial is None:
                return None
            current, flags, expires = initial, initial_flags, 0.0
            self._locked.pop(key, None)  # a counter created from ``initial`` ends a lock-out, as in the SDK's stub
        else:
            text = item.value.strip()
            if not text.isdigit() or int(text) >= U64:
                raise ValueError("the value is not a decimal number that fits 64 unsigned bits")
            current, flags, expires = int(text), item.flags, item.expires
        new = max(current - delta, 0) if decrement else (current + delta) % U64
        text = str(new).encode()
        if keep_width and item is not None and len(text) < len(item.value):
            text = text.ljust(len(item.value))
        self._store(key, text, flags, expires, now)
        return new

    def touch(self, key: Key, expiration: int) -> bool:
        """Give a live item a new expiry; True if it was there."""
        now = self._clock()
        item = self._live(key, now)
        if item is None:
            return False
        item.expires = absolute_expiry(expiration, now)
        return True

    def flush(self, app: str, *, reset_stats: bool = True) -> None:
        """Remove every item and lock-out of ``app``; its counters start again unless ``reset_stats`` is false
        (App Engine's flush, as the SDK's stub, resets them; memcached's ``flush_all`` keeps them)."""
        for key in [k for k in self._items if k[0] == app]:
            self._remove(key)
        for key in [k for k in self._locked if k[0] == app]:
            del self._locked[key]
        if reset_stats:
            self._stats[app] = Stats()

    def reset_counters(self, app: str) -> None:
        """Start the app's hit and miss counters again; its items and their bytes stay (memcached's ``stats
        reset``)."""
        stats = self._stats[app]
        stats.hits = stats.misses = stats.byte_hits = 0

    def stats(self, app: str) -> tuple[Stats, int]:
        """The app's statistics and the age, in seconds, of its least recently used item."""
        now = self._clock()
        oldest = next((item.accessed for key, item in self._items.items() if key[0] == app), now)
        return self._stats[app], int(now - oldest)

    def sweep(self, limit: int = 10_000) -> int:
        """Drop up to ``limit`` expired items (and lock-outs); returns how many items went."""
        now = self._clock()
        expired = [k for k, item in itertools.islice(self._items.items(), limit)
                   if item.expires and item.expires <= now]
        for key in expired:
            self._remove(key)
        for key in [k for k, (until, _) in self._locked.items() if until <= now]:
            del self._locked[key]
        return len(expired)

    @property
    def bytes_used(self) -> int:
        return self._bytes
