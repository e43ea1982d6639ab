"""App Engine's memcache API (``google.appengine.api.memcache``) for kiln apps.

Values of any picklable type round-trip with their type (bytes, str, int,
bool as themselves; anything else pickled), keys are str or bytes (longer
than 250 bytes once prefixed, they are replaced by their SHA-1, as App Engine
did), values are at most 1,000,000 bytes, expiry is relative seconds up to 30
days or an absolute Unix time beyond, and every call works in the current
namespace (:mod:`kiln.api.namespace_manager`) unless given one.

Scale: ``KILN_MEMCACHE_ADDR`` may list several shards (``host:port,...``).
A shard may be ``NAME=TARGET``: hashed as NAME, dialled at the gRPC target
(an instance without a network reaches ``10.0.0.5:50052`` as
``10.0.0.5:50052=unix:/…/memcache-0.sock``, and picks the shard every other
client picks). Keys are spread over them by consistent hashing (:class:`Ring`), so adding a
shard moves only the share of keys it takes.

Failures are App Engine's: a call the service cannot serve (a shard that does
not answer or runs past the deadline, a response over the size limit, an
internal error) is logged and answered as App Engine's client answered it —
misses, ``False``, ``None`` — so the app keeps working; a shard that did not
answer rests a few seconds before being tried again. What App Engine raised,
kiln raises: ``ValueError`` for a request the service refuses as invalid, and
the transport's errors for an app whose identity the service does not accept.

A write whose outcome is unknown (its call failed, or was not made because the
shard rests) must not leave the value it meant to replace: ndb's cache, for
one, locks a key before a datastore put and deletes it after, and a reader's
later ``cas`` of what it read before the put would otherwise store the old
entity for good. So the keys of such a ``set``/``delete`` (any policy) are
deleted from that shard later — as soon as its rest is over, by a thread of
this process, and in any case before this process's next call to it (another
process may be the one that reads next) — and a ``flush_all`` is repeated. At most
:data:`MAX_INVALIDATIONS` keys wait per shard; beyond that the shard's part of
the app's cache is flushed instead (see :class:`_Invalidations`).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import pickle
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc

from kiln import errors
from kiln.api import _rpc, namespace_manager
from kiln.pb.memcache.v1 import memcache_pb2 as pb
from kiln.pb.memcache.v1 import memcache_pb2_grpc

__all__ = ["Client", "DELETE_ITEM_MISSING", "DELETE_NETWORK_FAILURE", "DELETE_SUCCESSFUL", "MAX_KEY_SIZE",
           "MAX_VALUE_SIZE", "Ring", "add", "add_multi", "decr", "delete", "delete_multi", "flush_all", "get",
           "get_multi", "get_stats", "incr", "offset_multi", "replace", "replace_multi", "set", "set_multi"]

DELETE_NETWORK_FAILURE, DELETE_ITEM_MISSING, DELETE_SUCCESSFUL = 0, 1, 2
MAX_KEY_SIZE = 250
MAX_VALUE_SIZE = 1_000_000
# Types recorded in an item's flags (App Engine's memcache used the same numbers).
TYPE_BYTES, TYPE_STR, TYPE_PICKLED, TYPE_INT, TYPE_BOOL = 0, 1, 2, 3, 5
CALL_TIMEOUT = 2.0
DOWN_SECONDS = 5.0
MAX_INVALIDATIONS = 10_000  # keys waiting to be deleted from one shard before its part of the cache is flushed
VIRTUAL_NODES = 160

log = logging.getLogger(__name__)

# A request the service refuses as invalid is the app's mistake: App Engine's client raised ValueError for it.
_ERRORS = _rpc.ErrorTable(
    statuses={grpc.StatusCode.INVALID_ARGUMENT: lambda details: ValueError(f"memcache: {details}")})
# Raised, not swallowed: the app's mistake, or an app whose identity the service refuses (a deployment fault a
# cache that silently misses would hide). App Engine swallowed every error of the service call itself.
_RAISED = (ValueError, errors.UnauthenticatedError, errors.PermissionDeniedError)
# A shard that reports one of these rests for DOWN_SECONDS.
_SHARD_DOWN = (errors.UnavailableError, errors.DeadlineExceededError)


class Ring:
    """Consistent hashing: each shard owns many points on a circle; a key goes to the next point."""

    def __init__(self, shards: Sequence[str]) -> None:
        points = []
        for shard in shards:
            for i in range(VIRTUAL_NODES):
                points.append((self._hash(f"{shard}#{i}".encode()), shard))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._shards = [s for _, s in points]
        self.shards = list(dict.fromkeys(shards))

    @staticmethod
    def _hash(data: bytes) -> int:
        return int.from_bytes(hashlib.md5(data, usedforsecurity=False).digest()[:8], "big")

    def shard_for(self, key: bytes) -> str:
        if len(self.shards) == 1:  # every key's shard: no hash to compute
            return self.shards[0]
        if not self._hashes:
            raise RuntimeError("no memcache shards configured")
        i = bisect.bisect(self._hashes, self._hash(key)) % len(self._hashes)
        return self._shards[i]


def _encode_key(key: Any, prefix: bytes) -> bytes:
    if isinstance(key, tuple) and len(key) == 2:  # App Engine accepted (hash, key)
        key = key[1]
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, bytes):
        raw = key
    else:
        raise TypeError(f"memcache keys must be str or bytes, got {type(key).__name__}")
    raw = prefix + raw
    if not raw:
        raise ValueError("a memcache key must not be empty")
    if len(raw) > MAX_KEY_SIZE:
        raw = hashlib.sha1(raw).hexdigest().encode()
    return raw


def _encode_value(value: Any) -> tuple[bytes, int]:
    if isinstance(value, bytes):
        data, flags = value, TYPE_BYTES
    elif isinstance(value, str):
        data, flags = value.encode("utf-8"), TYPE_STR
    elif isinstance(value, bool):
        data, flags = (b"1" if value else b"0"), TYPE_BOOL
    elif isinstance(value, int):
        data, flags = str(value).encode(), TYPE_INT
    else:
        try:
            data, flags = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), TYPE_PICKLED
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise ValueError(f"memcache values must be picklable: {type(value).__name__} is not ({exc})") from None
    if len(data) > MAX_VALUE_SIZE:
        raise ValueError(f"Values may not be more than {MAX_VALUE_SIZE} bytes in length; received {len(data)} bytes")
    return data, flags


def _decode_value(data: bytes, flags: int) -> Any:
    if flags == TYPE_STR:
        return data.decode("utf-8")
    if flags == TYPE_BOOL:
        return data == b"1"
    if flags == TYPE_INT:
        return int(data)
    if flags == TYPE_PICKLED:
        return pickle.loads(data)
    return data


class _Invalidations:
    """What one shard must forget before this process calls it again: keys (per namespace, with the longest
    delete lock-out asked for) and whether the app's part of the cache there is to be flushed (``flushes`` counts
    the reasons, so a flush asked for while an earlier one is on its way is not forgotten with it)."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, bytes], int] = {}
        self.flushes = 0

    def add(self, namespace: str, keys: Iterable[bytes], lockout: int) -> None:
        for key in keys:
            self.keys[(namespace, key)] = max(lockout, self.keys.get((namespace, key), 0))
        if len(self.keys) > MAX_INVALIDATIONS:
            self.flush()

    def flush(self) -> None:
        self.flushes, self.keys = self.flushes + 1, {}

    def copy(self) -> _Invalidations:
        done = _Invalidations()
        done.keys, done.flushes = dict(self.keys), self.flushes
        return done

    def requests(self) -> list[tuple[str, Any]]:
        """The calls that carry them out: one Flush (which covers the keys), or one Delete per (namespace,
        lock-out)."""
        if self.flushes:
            return [("Flush", pb.FlushRequest())]
        by: dict[tuple[str, int], pb.DeleteRequest] = {}
        for (namespace, key), lockout in self.keys.items():
            by.setdefault((namespace, lockout),
                          pb.DeleteRequest(namespace=namespace, lockout_seconds=lockout)).keys.append(key)
        return [("Delete", request) for request in by.values()]

    def forget(self, done: _Invalidations) -> None:
        """Drop what ``done`` (a copy taken before its calls) carried out; what was added meanwhile stays."""
        if done.flushes and self.flushes == done.flushes:
            self.flushes = 0
        for entry, lockout in done.keys.items():
            if self.keys.get(entry) == lockout:
                del self.keys[entry]

    def __bool__(self) -> bool:
        return bool(self.keys) or self.flushes > 0


# The calls whose keys must be deleted later when their outcome is unknown (module docstring).
_WRITES = frozenset({"Set", "Delete", "Flush"})


class _Shards:
    """One stub per shard address, which shards are resting after a failure, and the invalidations each owes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stubs: dict[str, memcache_pb2_grpc.MemcacheServiceStub] = {}
        self._down_until: dict[str, float] = {}
        self._owed: dict[str, _Invalidations] = {}
        self._owed_locks: dict[str, threading.Lock] = {}
        self._ring: Ring | None = None
        self._addresses = ""
        self._targets: dict[str, str] = {}  # shard name -> where to dial it
        self._settler: threading.Thread | None = None

    def ring(self) -> Ring:
        addresses = _rpc.setting("KILN_MEMCACHE_ADDR")
        ring = self._ring
        if ring is not None and addresses == self._addresses:  # set after the ring it names (below)
            return ring
        with self._lock:
            if self._ring is None or addresses != self._addresses:
                entries = [a.strip() for a in addresses.split(",") if a.strip()]
                if not entries:
                    raise RuntimeError("KILN_MEMCACHE_ADDR is not set: run the app under kiln")
                named = [(e.partition("=")[0].strip(), e.partition("=")[2].strip() or e) for e in entries]
                self._targets = dict(named)
                self._ring, self._addresses = Ring([name for name, _ in named]), addresses
            return self._ring

    def stub(self, address: str) -> memcache_pb2_grpc.MemcacheServiceStub | None:
        """The shard's stub, or None while it rests. A shard that owes invalidations is sent them first; if that
        fails it rests, so no call reaches it before they do."""
        # Reading the dicts needs no lock (each read is atomic); only making a stub or owing one does.
        if self._down_until and self._down_until.get(address, 0) > time.monotonic():
            return None
        found = self._stubs.get(address)
        if found is None:
            with self._lock:
                found = self._stubs.get(address)
                if found is None:
                    channel = _rpc.channel(self._targets.get(address, address))
                    found = self._stubs[address] = memcache_pb2_grpc.MemcacheServiceStub(channel)
        if self._owed and address in self._owed and not self._settle(address, found):
            return None
        return found

    def owe(self, address: str, method: str, request: Any) -> None:
        """Remember that ``request`` (a ``method`` in :data:`_WRITES`) may not have reached ``address``."""
        with self._lock:
            owed = self._owed.setdefault(address, _Invalidations())
            self._owed_locks.setdefault(address, threading.Lock())
            if method == "Flush":
                owed.flush()
            elif method == "Delete":
                owed.add(request.namespace, request.keys, request.lockout_seconds)
            else:
                owed.add(request.namespace, (item.key for item in request.items), 0)
            if self._settler is None or not self._settler.is_alive():  # (a forked child has no settler thread)
                self._settler = threading.Thread(target=self._settle_owed, name="kiln-memcache-settler", daemon=True)
                self._settler.start()

    def _settle_owed(self) -> None:
        """The settler thread: send each shard what it is owed once its rest is over, even if this process never
        calls it again (an instance whose last request wrote); ends when nothing is owed."""
        self.settle_all(math.inf, settler=True)

    def settle_all(self, deadline: float, *, settler: bool = False) -> bool:
        """Send every shard what it is owed, waiting for resting shards until ``deadline`` (monotonic); True once
        nothing is owed. The ``settler`` thread marks itself gone as it finds nothing owed, under the same lock
        :meth:`owe` starts it under, so a debt is never left without one."""
        while True:
            with self._lock:
                if not self._owed:
                    if settler:
                        self._settler = None
                    return True
                addresses = list(self._owed)
                wait = min(self._down_until.get(a, 0) for a in addresses) - time.monotonic()
            if wait > 0:
                if time.monotonic() + wait > deadline:
                    return False
                time.sleep(wait)  # until the first rest is over
                continue
            for address in addresses:
                try:
                    self.stub(address)  # sends what it owes unless it rests; failing, it rests again
                except Exception:  # e.g. the shard left KILN_MEMCACHE_ADDR: retried after a rest
                    log.exception("memcache: sending shard %s what it is owed failed", address)
                    self.failed(address)

    def _settle(self, address: str, stub: memcache_pb2_grpc.MemcacheServiceStub) -> bool:
        """Send what ``address`` is owed; True once nothing is. One thread sends while the others wait for it."""
        with self._owed_locks[address]:
            with self._lock:
                owed = self._owed.get(address)
                if owed is None:
                    return True
                done = owed.copy()
            for method, request in done.requests():
                try:
                    _rpc.call(getattr(stub, method), request, timeout=CALL_TIMEOUT, table=_ERRORS)
                except (ValueError, errors.KilnError) as exc:
                    self.failed(address)  # whatever the error, nothing may reach the shard before these do
                    log.warning("memcache: shard %s still owes the deletes of writes that failed (%s: %s); it rests",
                                address, type(exc).__name__, exc)
                    return False
            with self._lock:
                owed.forget(done)
                if not owed and self._owed.get(address) is owed:
                    del self._owed[address]
            return True

    def failed(self, address: str) -> None:
        with self._lock:
            self._down_until[address] = time.monotonic() + DOWN_SECONDS

    def reset(self) -> None:
        with self._lock:
            self._stubs.clear()
            self._down_until.clear()
            self._owed.clear()
            self._ring = None


_shards = _Shards()


def settle(seconds: float) -> bool:
    """Send the shards the deletes this process owes them (module docstring), waiting up to ``seconds`` for those
    that rest; True once nothing is owed. An instance calls it as it stops: what it owes would go with it."""
    return _shards.settle_all(time.monotonic() + seconds)


def _namespace(namespace: str | None) -> str:
    ns = namespace_manager.get_namespace() if namespace is None else namespace
    if ns != "":  # the default namespace (a str, always valid) needs no check
        namespace_manager.validate_namespace(ns, ValueError)
    return ns


def _call_each(method: str, by_shard: Mapping[str, Any]) -> dict[str, Any]:
    """Call ``method`` on each shard concurrently; a shard whose call failed maps to None (see the module doc)."""
    rpcs: dict[str, _rpc.UserRPC] = {}
    for address, request in by_shard.items():
        stub = _shards.stub(address)
        if stub is None:
            log.debug("memcache %s: shard %s is resting after a failure; answering as App Engine did", method, address)
            continue
        # One shard: a blocking call costs less than a future.
        rpcs[address] = _rpc.UserRPC(CALL_TIMEOUT).make_call(getattr(stub, method), request, table=_ERRORS,
                                                             now=len(by_shard) == 1)
    out: dict[str, Any] = dict.fromkeys(by_shard)
    for address, rpc in rpcs.items():
        try:
            out[address] = _result(rpc, method, address)
        except _RAISED:
            if method in _WRITES:
                for unsure in (a for a, r in out.items() if r is None and a != address):
                    _shards.owe(unsure, method, by_shard[unsure])
            raise
    if method in _WRITES:
        for address, response in out.items():
            if response is None:
                _shards.owe(address, method, by_shard[address])
    return out


def _result(rpc: _rpc.UserRPC, method: str, address: str,
            answers: tuple[type[BaseException], ...] = ()) -> Any:
    """The call's response, or None for a failure App Engine's client swallowed too (logged) and for the
    errors that are one of the call's ``answers``."""
    try:
        return rpc.get_result()
    except answers:
        return None
    except _RAISED:
        raise
    except errors.KilnError as exc:
        _swallow(exc, method, address)
        return None


def _swallow(exc: errors.KilnError, method: str, address: str) -> None:
    """A failure App Engine's client answered as a miss: log it, and rest the shard if it did not answer."""
    if isinstance(exc, _SHARD_DOWN):
        _shards.failed(address)
    log.warning("memcache %s on shard %s failed (%s: %s); answering as App Engine did", method, address,
                type(exc).__name__, exc)


class Client:
    """App Engine's memcache ``Client``: the module's operations, plus ``gets``/``cas`` remembering cas ids."""

    def __init__(self) -> None:
        self._cas_ids: dict[tuple[str, bytes], int] = {}

    # ---------------------------------------------------------------- reads

    def get(self, key: Any, namespace: str | None = None, for_cas: bool = False) -> Any:
        # One key, one shard: the call made directly, without get_multi's grouping by shard and its futures (the
        # same checks, encoding, deadline, token and error rules as every other call).
        ns, raw = _namespace(namespace), _encode_key(key, b"")
        shard = _shards.ring().shard_for(raw)
        stub = _shards.stub(shard)
        if stub is None:
            log.debug("memcache Get: shard %s is resting after a failure; answering as App Engine did", shard)
            return None
        request = pb.GetRequest(namespace=ns, keys=(raw,), for_cas=for_cas)
        try:
            resp = _rpc.call(stub.Get, request, timeout=CALL_TIMEOUT, table=_ERRORS)
        except _RAISED:
            raise
        except errors.KilnError as exc:
            _swallow(exc, "Get", shard)
            return None
        for item in resp.items:
            if item.key == raw:
                if for_cas:
                    self._cas_ids[(ns, raw)] = item.cas_id
                return _decode_value(item.value, item.flags)
        return None

    def gets(self, key: Any, namespace: str | None = None) -> Any:
        return self.get(key, namespace=namespace, for_cas=True)

    def get_multi(self, keys: Iterable[Any], key_prefix: str | bytes = "", namespace: str | None = None,
                  for_cas: bool = False) -> dict[Any, Any]:
        ns, prefix = _namespace(namespace), _prefix(key_prefix)
        wanted = {_encode_key(k, prefix): k for k in keys}
        ring = _shards.ring()
        keys_by_shard: dict[str, list[bytes]] = {}
        for raw in wanted:
            shard = ring.shard_for(raw)
            keys_by_shard.setdefault(shard, []).append(raw)
        # One request per shard, built once with all its keys.
        by_shard = {shard: pb.GetRequest(namespace=ns, keys=shard_keys, for_cas=for_cas)
                    for shard, shard_keys in keys_by_shard.items()}
        found: dict[Any, Any] = {}
        for resp in _call_each("Get", by_shard).values():
            for item in resp.items if resp is not None else ():
                original = wanted.get(item.key)
                if original is None:
                    continue
                found[original] = _decode_value(item.value, item.flags)
                if for_cas:
                    self._cas_ids[(ns, item.key)] = item.cas_id
        return found

    # ---------------------------------------------------------------- writes

    def set(self, key: Any, value: Any, time: float = 0, min_compress_len: int = 0,
            namespace: str | None = None) -> bool:
        return not self._store("set", {key: value}, time, "", namespace)

    def add(self, key: Any, value: Any, time: float = 0, min_compress_len: int = 0,
            namespace: str | None = None) -> bool:
        return not self._store("add", {key: value}, time, "", namespace)

    def replace(self, key: Any, value: Any, time: float = 0, min_compress_len: int = 0,
                namespace: str | None = None) -> bool:
        return not self._store("replace", {key: value}, time, "", namespace)

    def cas(self, key: Any, value: Any, time: float = 0, min_compress_len: int = 0,
            namespace: str | None = None) -> bool:
        return not self._store("cas", {key: value}, time, "", namespace)

    def set_multi(self, mapping: Mapping[Any, Any], time: float = 0, key_prefix: str | bytes = "",
                  min_compress_len: int = 0, namespace: str | None = None) -> list[Any]:
        return self._store("set", mapping, time, key_prefix, namespace)

    def add_multi(self, mapping: Mapping[Any, Any], time: float = 0, key_prefix: str | bytes = "",
                  min_compress_len: int = 0, namespace: str | None = None) -> list[Any]:
        return self._store("add", mapping, time, key_prefix, namespace)

    def replace_multi(self, mapping: Mapping[Any, Any], time: float = 0, key_prefix: str | bytes = "",
                      min_compress_len: int = 0, namespace: str | None = None) -> list[Any]:
        return self._store("replace", mapping, time, key_prefix, namespace)

    def cas_multi(self, mapping: Mapping[Any, Any], time: float = 0, key_prefix: str | bytes = "",
                  min_compress_len: int = 0, namespace: str | None = None) -> list[Any]:
        return self._store("cas", mapping, time, key_prefix, namespace)

    def cas_reset(self) -> None:
        self._cas_ids.clear()

    def _store(self, policy: str, mapping: Mapping[Any, Any], expiry: float, key_prefix: str | bytes,
               namespace: str | None) -> list[Any]:
        """Store under ``policy``; return the keys that were not stored."""
        if expiry < 0:
            raise ValueError(f"Expiration must not be negative, got {expiry}")
        ns, prefix = _namespace(namespace), _prefix(key_prefix)
        policy_id = {"set": pb.SET_POLICY_SET, "add": pb.SET_POLICY_ADD, "replace": pb.SET_POLICY_REPLACE,
                     "cas": pb.SET_POLICY_CAS}[policy]
        ring = _shards.ring()
        items_by_shard: dict[str, list[pb.Item]] = {}
        order: dict[str, list[Any]] = {}
        failed: list[Any] = []
        for key, value in mapping.items():
            raw = _encode_key(key, prefix)
            data, flags = _encode_value(value)
            cas_id = self._cas_ids.get((ns, raw), 0)
            if policy == "cas" and not cas_id:
                failed.append(key)  # never read with gets(): nothing to compare with
                continue
            shard = ring.shard_for(raw)
            items_by_shard.setdefault(shard, []).append(
                pb.Item(key=raw, value=data, flags=flags, expiration=int(expiry), cas_id=cas_id))
            order.setdefault(shard, []).append(key)
        by_shard = {shard: pb.SetRequest(namespace=ns, policy=policy_id, items=items)
                    for shard, items in items_by_shard.items()}
        for shard, resp in _call_each("Set", by_shard).items():
            if resp is None:
                failed += order[shard]
                continue
            failed += [key for key, status in zip(order[shard], resp.statuses) if status != pb.SET_STATUS_STORED]
        return failed

    def delete(self, key: Any, seconds: float = 0, namespace: str | None = None) -> int:
        ns, raw = _namespace(namespace), _encode_key(key, b"")
        shard = _shards.ring().shard_for(raw)
        resp = _call_each("Delete", {shard: pb.DeleteRequest(namespace=ns, keys=[raw],
                                                              lockout_seconds=int(seconds))})[shard]
        if resp is None:
            return DELETE_NETWORK_FAILURE
        return DELETE_SUCCESSFUL if resp.statuses[0] == pb.DELETE_STATUS_DELETED else DELETE_ITEM_MISSING

    def delete_multi(self, keys: Iterable[Any], seconds: float = 0, key_prefix: str | bytes = "",
                     namespace: str | None = None) -> bool:
        ns, prefix = _namespace(namespace), _prefix(key_prefix)
        ring = _shards.ring()
        by_shard: dict[str, pb.DeleteRequest] = {}
        for key in keys:
            raw = _encode_key(key, prefix)
            by_shard.setdefault(ring.shard_for(raw),
                                pb.DeleteRequest(namespace=ns, lockout_seconds=int(seconds))).keys.append(raw)
        return all(resp is not None for resp in _call_each("Delete", by_shard).values())

    # ---------------------------------------------------------------- counters

    def incr(self, key: Any, delta: int = 1, namespace: str | None = None,
             initial_value: int | None = None) -> int | None:
        return self._offset(key, delta, False, namespace, initial_value)

    def decr(self, key: Any, delta: int = 1, namespace: str | None = None,
             initial_value: int | None = None) -> int | None:
        return self._offset(key, delta, True, namespace, initial_value)

    def offset_multi(self, mapping: Mapping[Any, int], key_prefix: str | bytes = "", namespace: str | None = None,
                     initial_value: int | None = None) -> dict[Any, int | None]:
        prefix = _prefix(key_prefix)
        return {key: self._offset(key, abs(delta), delta < 0, namespace, initial_value, prefix)
                for key, delta in mapping.items()}

    def _offset(self, key: Any, delta: int, decrement: bool, namespace: str | None, initial: int | None,
                prefix: bytes = b"") -> int | None:
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"delta must be an integer, got {type(delta).__name__}")
        if delta < 0:
            raise ValueError("Delta must not be negative")
        if initial is not None and not 0 <= initial < 2**64:
            raise ValueError("initial_value must be a 64-bit unsigned integer")
        ns, raw = _namespace(namespace), _encode_key(key, prefix)
        request = pb.IncrementRequest(namespace=ns, key=raw, delta=delta % 2**64, decrement=decrement)
        if initial is not None:
            request.initial_value = initial
            request.initial_flags = TYPE_INT  # a later get returns an int, as on App Engine
        shard = _shards.ring().shard_for(raw)
        stub = _shards.stub(shard)
        if stub is None:
            return None
        rpc = _rpc.UserRPC(CALL_TIMEOUT).make_call(stub.Increment, request, table=_ERRORS, now=True)
        # A value that is not a number fails the precondition: App Engine returned None for it too.
        resp = _result(rpc, "Increment", shard, answers=(errors.FailedPreconditionError,))
        return resp.new_value if resp is not None and resp.HasField("new_value") else None

    # ---------------------------------------------------------------- whole cache

    def flush_all(self) -> bool:
        shards = _shards.ring().shards
        return all(r is not None for r in _call_each("Flush", {s: pb.FlushRequest() for s in shards}).values())

    def get_stats(self) -> dict[str, int] | None:
        shards = _shards.ring().shards
        results = [r for r in _call_each("Stats", {s: pb.StatsRequest() for s in shards}).values() if r is not None]
        if not results:
            return None
        out = {name: sum(getattr(r, name) for r in results)
               for name in ("hits", "misses", "byte_hits", "items", "bytes")}
        out["oldest_item_age"] = max(r.oldest_item_age for r in results)
        return out


def _prefix(key_prefix: str | bytes) -> bytes:
    return key_prefix.encode("utf-8") if isinstance(key_prefix, str) else bytes(key_prefix)


def reset() -> None:
    """Forget shard connections and rest periods (after KILN_MEMCACHE_ADDR changed, e.g. in tests)."""
    _shards.reset()


_client = Client()
get, gets, get_multi = _client.get, _client.gets, _client.get_multi
set, add, replace = _client.set, _client.add, _client.replace  # noqa: A001 - App Engine's names
set_multi, add_multi, replace_multi = _client.set_multi, _client.add_multi, _client.replace_multi
delete, delete_multi = _client.delete, _client.delete_multi
incr, decr, offset_multi = _client.incr, _client.decr, _client.offset_multi
flush_all, get_stats = _client.flush_all, _client.get_stats
