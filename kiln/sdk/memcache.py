"""App Engine's ``memcache`` service for Google's SDK, on kiln's memcache (``kiln.pb.memcache.v1``).

Every method the SDK's client calls: ``Get`` (``for_cas``, ``for_peek``), ``Set`` (SET, ADD, REPLACE, CAS: one
status per item, in order), ``Delete`` (with each item's lock-out), ``Increment``, ``BatchIncrement``,
``FlushAll``, ``Stats``. Keys travel as the exact bytes the SDK sent and items are matched by key; the namespace
is the request's ``name_space``. CAS is kiln's real compare-and-set (the cas id the SDK got from ``Get`` with
``for_cas``), which keeps ndb's global cache coherent.

The shards and their failures are :mod:`kiln.api.memcache`'s (one ring, one rule): a shard that does not answer
answers as a miss, ``ERROR``/``OTHER_ERROR`` statuses or ``UNAVAILABLE``, which the SDK's client turns into
``None``/``False`` as App Engine's did. A request the service refuses as invalid is ``INVALID_VALUE``; an app whose
identity it refuses, ``PERMISSION_DENIED``; another app's cache (``override``) is refused the same way.

``for_peek`` is kiln's peek: each item's expiry, last access and delete lock-out (absolute seconds), delete-locked
keys included without a value, and the items' last access and eviction order left as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.appengine.api.memcache import memcache_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln import errors
from kiln.api import _rpc
from kiln.api import memcache as kiln_memcache
from kiln.pb.memcache.v1 import memcache_pb2 as pb
from kiln.sdk.service import CallContext

__all__ = ["Memcache"]

_ERR = gae.MemcacheServiceError
_POLICIES = {gae.MemcacheSetRequest.SET: pb.SET_POLICY_SET, gae.MemcacheSetRequest.ADD: pb.SET_POLICY_ADD,
             gae.MemcacheSetRequest.REPLACE: pb.SET_POLICY_REPLACE, gae.MemcacheSetRequest.CAS: pb.SET_POLICY_CAS}
_SET_STATUS = {pb.SET_STATUS_STORED: gae.MemcacheSetResponse.STORED,
               pb.SET_STATUS_NOT_STORED: gae.MemcacheSetResponse.NOT_STORED,
               pb.SET_STATUS_EXISTS: gae.MemcacheSetResponse.EXISTS,
               pb.SET_STATUS_ERROR: gae.MemcacheSetResponse.ERROR}
_DELETE_STATUS = {pb.DELETE_STATUS_DELETED: gae.MemcacheDeleteResponse.DELETED,
                  pb.DELETE_STATUS_NOT_FOUND: gae.MemcacheDeleteResponse.NOT_FOUND}


class Memcache:
    """The ``memcache`` service (module docstring)."""

    name = "memcache"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        serve = _METHODS.get(method)
        if serve is None:
            raise apiproxy_errors.CallNotFoundError(f"memcache.{method}() is not a method of App Engine's memcache")
        if request.HasField("override") and request.override.app_id not in ("", ctx.app_id):
            raise apiproxy_errors.ApplicationError(_ERR.PERMISSION_DENIED,
                                                   "kiln: an app may only use its own memcache")
        try:
            serve(request, response)
        except ValueError as exc:
            raise apiproxy_errors.ApplicationError(_ERR.INVALID_VALUE, str(exc)) from None
        except (errors.UnauthenticatedError, errors.PermissionDeniedError) as exc:
            raise apiproxy_errors.ApplicationError(_ERR.PERMISSION_DENIED, str(exc)) from None


def _calls(method: str, by_shard: Mapping[str, Any]) -> dict[str, Any]:
    return kiln_memcache._call_each(method, by_shard)


def _get(request: gae.MemcacheGetRequest, response: gae.MemcacheGetResponse) -> None:
    ring = kiln_memcache._shards.ring()
    by_shard: dict[str, pb.GetRequest] = {}
    for key in request.key:
        by_shard.setdefault(ring.shard_for(key), pb.GetRequest(
            namespace=request.name_space, for_cas=request.for_cas, for_peek=request.for_peek)).keys.append(key)
    for reply in _calls("Get", by_shard).values():
        for item in reply.items if reply is not None else ():
            out = response.item.add(key=item.key, value=item.value, flags=item.flags)
            if request.for_cas:
                out.cas_id = item.cas_id
            if request.for_peek:
                out.is_delete_locked = item.delete_locked
                out.timestamps.expiration_time_sec = item.timestamps.expiration_time
                out.timestamps.last_access_time_sec = item.timestamps.last_access_time
                out.timestamps.delete_lock_time_sec = item.timestamps.delete_lock_time


def _set(request: gae.MemcacheSetRequest, response: gae.MemcacheSetResponse) -> None:
    ring = kiln_memcache._shards.ring()
    # kiln's Set carries one policy: one request per (shard, policy), statuses put back in the SDK's order.
    batches: dict[tuple[str, int], tuple[pb.SetRequest, list[int]]] = {}
    for index, item in enumerate(request.item):
        policy = _POLICIES.get(item.set_policy)
        if policy is None:
            raise ValueError(f"unknown set policy {item.set_policy}")
        shard = ring.shard_for(item.key)
        batch = batches.setdefault((shard, policy), (pb.SetRequest(namespace=request.name_space, policy=policy), []))
        batch[0].items.add(key=item.key, value=item.value, flags=item.flags, expiration=item.expiration_time,
                           cas_id=item.cas_id)
        batch[1].append(index)
    statuses = [gae.MemcacheSetResponse.ERROR] * len(request.item)
    for (shard, _), (set_request, indexes) in batches.items():
        reply = _calls("Set", {shard: set_request})[shard]
        if reply is None:
            continue
        for index, status in zip(indexes, reply.statuses):
            statuses[index] = _SET_STATUS.get(status, gae.MemcacheSetResponse.ERROR)
    response.set_status.extend(statuses)


def _delete(request: gae.MemcacheDeleteRequest, response: gae.MemcacheDeleteResponse) -> None:
    ring = kiln_memcache._shards.ring()
    batches: dict[tuple[str, int], tuple[pb.DeleteRequest, list[int]]] = {}
    for index, item in enumerate(request.item):
        shard = ring.shard_for(item.key)
        batch = batches.setdefault((shard, item.delete_time), (
            pb.DeleteRequest(namespace=request.name_space, lockout_seconds=item.delete_time), []))
        batch[0].keys.append(item.key)
        batch[1].append(index)
    statuses = [gae.MemcacheDeleteResponse.OTHER_ERROR] * len(request.item)
    for (shard, _), (delete_request, indexes) in batches.items():
        reply = _calls("Delete", {shard: delete_request})[shard]
        if reply is None:
            continue
        for index, status in zip(indexes, reply.statuses):
            statuses[index] = _DELETE_STATUS.get(status, gae.MemcacheDeleteResponse.OTHER_ERROR)
    response.delete_status.extend(statuses)


def _offset(namespace: str, item: gae.MemcacheIncrementRequest, out: gae.MemcacheIncrementResponse) -> None:
    """One increment into ``out``: OK with the new value, NOT_CHANGED (no such key), ERROR (not a number)."""
    request = pb.IncrementRequest(namespace=namespace, key=item.key, delta=item.delta,
                                  decrement=item.direction == gae.MemcacheIncrementRequest.DECREMENT)
    if item.HasField("initial_value"):
        request.initial_value = item.initial_value
        request.initial_flags = item.initial_flags
    shard = kiln_memcache._shards.ring().shard_for(item.key)
    stub = kiln_memcache._shards.stub(shard)
    if stub is None:
        out.increment_status = gae.MemcacheIncrementResponse.UNREACHABLE
        return
    rpc = _rpc.UserRPC(kiln_memcache.CALL_TIMEOUT).make_call(
        stub.Increment, request, table=kiln_memcache._ERRORS, now=True)
    try:
        reply = rpc.get_result()
    except errors.FailedPreconditionError:
        out.increment_status = gae.MemcacheIncrementResponse.ERROR  # the value is not a decimal number
        return
    except (ValueError, errors.UnauthenticatedError, errors.PermissionDeniedError):
        raise
    except errors.KilnError:
        reply = kiln_memcache._result(rpc, "Increment", shard)  # logs it and rests the shard, as kiln.api does
        out.increment_status = gae.MemcacheIncrementResponse.UNREACHABLE
        return
    if reply.HasField("new_value"):
        out.new_value = reply.new_value
        out.increment_status = gae.MemcacheIncrementResponse.OK
    else:
        out.increment_status = gae.MemcacheIncrementResponse.NOT_CHANGED


def _increment(request: gae.MemcacheIncrementRequest, response: gae.MemcacheIncrementResponse) -> None:
    _offset(request.name_space, request, response)
    if response.increment_status == gae.MemcacheIncrementResponse.ERROR:
        raise apiproxy_errors.ApplicationError(_ERR.INVALID_VALUE, "the value is not a decimal number")
    if response.increment_status == gae.MemcacheIncrementResponse.UNREACHABLE:
        raise apiproxy_errors.ApplicationError(_ERR.UNAVAILABLE, "the memcache shard did not answer")


def _batch_increment(request: gae.MemcacheBatchIncrementRequest,
                     response: gae.MemcacheBatchIncrementResponse) -> None:
    for item in request.item:
        _offset(request.name_space, item, response.item.add())


def _flush(request: gae.MemcacheFlushRequest, response: gae.MemcacheFlushResponse) -> None:
    shards = kiln_memcache._shards.ring().shards
    replies = _calls("Flush", {s: pb.FlushRequest() for s in shards})
    if any(r is None for r in replies.values()):
        raise apiproxy_errors.ApplicationError(_ERR.UNAVAILABLE, "a memcache shard did not answer the flush")


def _stats(request: gae.MemcacheStatsRequest, response: gae.MemcacheStatsResponse) -> None:
    shards = kiln_memcache._shards.ring().shards
    replies = [r for r in _calls("Stats", {s: pb.StatsRequest() for s in shards}).values() if r is not None]
    if not replies:
        raise apiproxy_errors.ApplicationError(_ERR.UNAVAILABLE, "no memcache shard answered")
    stats = response.stats
    for name in ("hits", "misses", "byte_hits", "items", "bytes"):
        setattr(stats, name, sum(getattr(r, name) for r in replies))
    stats.oldest_item_age = max(r.oldest_item_age for r in replies)


_METHODS: dict[str, Any] = {"Get": _get, "Set": _set, "Delete": _delete, "Increment": _increment,
                            "BatchIncrement": _batch_increment, "FlushAll": _flush, "Stats": _stats}
