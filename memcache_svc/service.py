"""gRPC servicer for one memcache shard: the app's identity, validation, the cache."""

from __future__ import annotations

import re
from typing import Any

import grpc

from kiln import errors
from kiln_platform import grpcserver
from kiln.pb.memcache.v1 import memcache_pb2 as pb
from kiln.pb.memcache.v1 import memcache_pb2_grpc
from memcache_svc.store import MAX_KEY_BYTES, MAX_VALUE_BYTES, Cache

NAMESPACE_RE = re.compile(r"^[0-9A-Za-z._-]{0,100}$")
MAX_BATCH = 10_000
MAX_BATCH_BYTES = 32 * 1024 * 1024
_POLICIES = {pb.SET_POLICY_UNSPECIFIED: "set", pb.SET_POLICY_SET: "set", pb.SET_POLICY_ADD: "add",
             pb.SET_POLICY_REPLACE: "replace", pb.SET_POLICY_CAS: "cas"}
_STATUS = {"STORED": pb.SET_STATUS_STORED, "NOT_STORED": pb.SET_STATUS_NOT_STORED, "EXISTS": pb.SET_STATUS_EXISTS}


def check_namespace(namespace: str) -> None:
    if namespace and not NAMESPACE_RE.match(namespace):  # "" (the default namespace) is valid
        raise errors.BadRequestError(f"namespace {namespace!r}: at most 100 of 0-9 A-Z a-z . _ -")


def check_key(key: bytes) -> None:
    if not key:
        raise errors.BadRequestError("a key must not be empty")
    if len(key) > MAX_KEY_BYTES:
        raise errors.BadRequestError(f"key of {len(key)} bytes; the limit is {MAX_KEY_BYTES} (clients hash longer "
                                     "keys)")


def check_batch(count: int) -> None:
    if count > MAX_BATCH:
        raise errors.BadRequestError(f"{count} keys in one call; the limit is {MAX_BATCH}")


class MemcacheService(memcache_pb2_grpc.MemcacheServiceServicer):
    """Implements ``kiln.pb.memcache.v1.MemcacheService`` over a :class:`Cache`."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache


    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetResponse:
        app = grpcserver.caller_app()
        namespace = request.namespace
        check_namespace(namespace)
        if len(request.keys) == 1 and not request.for_peek:
            return self._get_one(app, namespace, request.keys[0], request.for_cas)
        keys = list(request.keys)  # each read of a repeated field makes new objects: read it once
        check_batch(len(keys))
        for key in keys:
            check_key(key)
        if request.for_peek:
            return self._peek(app, request)
        out = pb.GetResponse()
        add, get, for_cas = out.items.add, self._cache.get, request.for_cas
        for key in keys:
            item = get((app, namespace, key))
            if item is not None:
                add(key=key, value=item.value, flags=item.flags, cas_id=item.cas if for_cas else 0)
        return out

    def _get_one(self, app: str, namespace: str, key: bytes, for_cas: bool) -> pb.GetResponse:
        """A get of one key (most gets): the same checks and answer as for many, without the loop's set-up."""
        check_key(key)
        item = self._cache.get((app, namespace, key))
        if item is None:
            return pb.GetResponse()
        return pb.GetResponse(items=(pb.Item(key=key, value=item.value, flags=item.flags,
                                             cas_id=item.cas if for_cas else 0),))

    def _peek(self, app: str, request: pb.GetRequest) -> pb.GetResponse:
        out = pb.GetResponse()
        for key in request.keys:
            peeked = self._cache.peek((app, request.namespace, key))
            if peeked is None:
                continue
            reply = out.items.add(key=key, delete_locked=peeked.locked_until > 0)
            reply.timestamps.delete_lock_time = int(peeked.locked_until)
            if peeked.item is None:  # locked: as the SDK's stub, it "expires" when the lock ends
                reply.timestamps.expiration_time = int(peeked.locked_until)
                reply.timestamps.last_access_time = int(peeked.locked_accessed)
                continue
            reply.value, reply.flags = peeked.item.value, peeked.item.flags
            reply.cas_id = peeked.item.cas if request.for_cas else 0
            reply.timestamps.expiration_time = int(peeked.item.expires)
            reply.timestamps.last_access_time = int(peeked.item.accessed)
        return out

    async def Set(self, request: pb.SetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SetResponse:
        app = grpcserver.caller_app()
        check_namespace(request.namespace)
        check_batch(len(request.items))
        policy = _POLICIES.get(request.policy)
        if policy is None:
            raise errors.BadRequestError(f"unknown set policy {request.policy}")
        for item in request.items:  # validate all before storing any
            check_key(item.key)
            if len(item.value) > MAX_VALUE_BYTES:
                raise errors.TooLargeError(f"value of {len(item.value)} bytes for one key; the limit is "
                                           f"{MAX_VALUE_BYTES}")
            if item.expiration < 0:
                raise errors.BadRequestError(f"expiration must not be negative, got {item.expiration}")
        out = pb.SetResponse()
        for item in request.items:
            status = self._cache.set((app, request.namespace, item.key), item.value, item.flags, item.expiration,
                                     policy, item.cas_id)
            out.statuses.append(_STATUS[status])
        return out

    async def Delete(self, request: pb.DeleteRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> pb.DeleteResponse:
        app = grpcserver.caller_app()
        check_namespace(request.namespace)
        check_batch(len(request.keys))
        if request.lockout_seconds < 0:
            raise errors.BadRequestError(f"lock-out seconds must not be negative, got {request.lockout_seconds}")
        for key in request.keys:
            check_key(key)
        out = pb.DeleteResponse()
        for key in request.keys:
            found = self._cache.delete((app, request.namespace, key), request.lockout_seconds)
            out.statuses.append(pb.DELETE_STATUS_DELETED if found else pb.DELETE_STATUS_NOT_FOUND)
        return out

    async def Increment(self, request: pb.IncrementRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.IncrementResponse:
        app = grpcserver.caller_app()
        check_namespace(request.namespace)
        check_key(request.key)
        initial = request.initial_value if request.HasField("initial_value") else None
        try:
            new = self._cache.incr((app, request.namespace, request.key), request.delta, request.decrement, initial,
                                   request.initial_flags)
        except ValueError as exc:
            raise errors.FailedPreconditionError(str(exc)) from None
        out = pb.IncrementResponse()
        if new is not None:
            out.new_value = new
        return out

    async def Flush(self, request: pb.FlushRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.FlushResponse:
        self._cache.flush(grpcserver.caller_app())
        return pb.FlushResponse()

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.StatsResponse:
        stats, oldest = self._cache.stats(grpcserver.caller_app())
        return pb.StatsResponse(hits=stats.hits, misses=stats.misses, byte_hits=stats.byte_hits, items=stats.items,
                                bytes=stats.bytes, oldest_item_age=oldest)
