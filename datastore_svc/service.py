"""gRPC servicer for the datastore: proto in, validation, engine calls, proto out."""

from __future__ import annotations

import collections
from typing import Any

import grpc

from datastore_svc import model
from datastore_svc.engine.base import Engine, Ref, Row
from datastore_svc.keys import decode_path, encode_element, encode_path
from kiln import auth
from kiln.errors import BadRequestError, UnimplementedError
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.datastore.v1 import datastore_pb2_grpc

_CURSOR_VERSION = b"\x01"
MAX_ALLOCATE = 1_000_000_000
DEFAULT_BATCH = 1000


def _ref(key: pb.Key) -> Ref:
    return Ref(group=encode_element(key.path[0]), path=encode_path(key.path))


class DatastoreService(datastore_pb2_grpc.DatastoreServiceServicer):
    """Implements ``kiln.pb.datastore.v1.DatastoreService`` over an :class:`Engine`."""

    def __init__(self, engine: Engine, *, secret: str) -> None:
        self._engine = engine
        self._secret = secret

    def _app(self, context: grpc.aio.ServicerContext) -> str:
        return auth.app_from_metadata(self._secret, context.invocation_metadata())

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        app = self._app(context)
        if request.read_options.transaction:
            raise UnimplementedError("transactions are not implemented yet (issue #3)")
        if len(request.keys) > model.MAX_GET_BATCH:
            raise BadRequestError(f"at most {model.MAX_GET_BATCH} keys per Get, got {len(request.keys)}")
        for i, key in enumerate(request.keys):
            model.check_key(key, app, allow_incomplete=False, what=f"keys[{i}]")
        by_ns: dict[str, list[int]] = collections.defaultdict(list)
        for i, key in enumerate(request.keys):
            by_ns[key.partition_id.namespace].append(i)
        found: list[bytes | None] = [None] * len(request.keys)
        for ns, idxs in by_ns.items():
            blobs = await self._engine.get(app, ns, [_ref(request.keys[i]) for i in idxs])
            for i, blob in zip(idxs, blobs):
                found[i] = blob
        resp = pb.GetResponse()
        for blob in found:
            result = resp.results.add()
            if blob is not None:
                result.entity.ParseFromString(blob)
        return resp

    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        app = self._app(context)
        if len(request.entities) > model.MAX_BATCH:
            raise BadRequestError(f"at most {model.MAX_BATCH} entities per Put, got {len(request.entities)}")
        for i, entity in enumerate(request.entities):
            model.check_entity(entity, app, what=f"entities[{i}]")
        incomplete = [e for e in request.entities if model.is_incomplete(e.key)]
        if incomplete:
            start = await self._engine.allocate_ids(app, len(incomplete))
            for offset, entity in enumerate(incomplete):
                entity.key.path[-1].id = start + offset
        by_ns: dict[str, list[Row]] = collections.defaultdict(list)
        for entity in request.entities:
            ref = _ref(entity.key)
            by_ns[entity.key.partition_id.namespace].append(Row(
                group=ref.group, path=ref.path, kind=entity.key.path[-1].kind,
                entity=entity.SerializeToString(deterministic=True)))
        for ns, rows in by_ns.items():
            await self._engine.put(app, ns, rows)
        return pb.PutResponse(keys=[e.key for e in request.entities])

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        app = self._app(context)
        if len(request.keys) > model.MAX_BATCH:
            raise BadRequestError(f"at most {model.MAX_BATCH} keys per Delete, got {len(request.keys)}")
        by_ns: dict[str, list[Ref]] = collections.defaultdict(list)
        for i, key in enumerate(request.keys):
            model.check_key(key, app, allow_incomplete=False, what=f"keys[{i}]")
            by_ns[key.partition_id.namespace].append(_ref(key))
        for ns, refs in by_ns.items():
            await self._engine.delete(app, ns, refs)
        return pb.DeleteResponse()

    async def AllocateIds(self, request: pb.AllocateIdsRequest,
                          context: grpc.aio.ServicerContext) -> pb.AllocateIdsResponse:
        app = self._app(context)
        model.check_key(request.key, app, allow_incomplete=True, what="key")
        if not model.is_incomplete(request.key):
            raise BadRequestError("key: must be incomplete (the parent path and kind of the ids)")
        if request.size and request.max:
            raise BadRequestError("give either size or max, not both")
        if request.max:
            if request.max < 1:
                raise BadRequestError(f"max: must be positive, got {request.max}")
            await self._engine.reserve_ids_up_to(app, request.max)
            return pb.AllocateIdsResponse(start=1, end=request.max)
        if not 1 <= request.size <= MAX_ALLOCATE:
            raise BadRequestError(f"size: must be between 1 and {MAX_ALLOCATE}, got {request.size}")
        start = await self._engine.allocate_ids(app, request.size)
        return pb.AllocateIdsResponse(start=start, end=start + request.size - 1)

    async def RunQuery(self, request: pb.RunQueryRequest,
                       context: grpc.aio.ServicerContext) -> pb.RunQueryResponse:
        app = self._app(context)
        if request.WhichOneof("query_type") != "query":
            raise UnimplementedError("GQL queries are not implemented yet (issue #3)")
        query = request.query
        namespace = request.partition_id.namespace
        model.check_namespace(namespace)
        unsupported = [name for name, present in (
            ("filter", query.HasField("filter")), ("order", bool(query.order)),
            ("projection", bool(query.projection)), ("distinct_on", bool(query.distinct_on)),
            ("end_cursor", bool(query.end_cursor)), ("offset", bool(query.offset))) if present]
        if not query.HasField("ancestor") or unsupported:
            raise UnimplementedError(
                "only ancestor queries (optionally with a kind, limit, keys_only and a start cursor) "
                f"are implemented yet (issue #3){'; unsupported: ' + ', '.join(unsupported) if unsupported else ''}")
        ancestor = query.ancestor
        if ancestor.partition_id.namespace != namespace:
            raise BadRequestError("ancestor: its namespace must equal the query's namespace")
        model.check_key(ancestor, app, allow_incomplete=False, what="ancestor")
        limit = query.limit if query.HasField("limit") else None
        if limit is not None and limit < 0:
            raise BadRequestError(f"limit: must not be negative, got {limit}")
        batch = min(request.batch_size or DEFAULT_BATCH, DEFAULT_BATCH)
        want = batch if limit is None else min(limit, batch)
        start_after = _parse_cursor(query.start_cursor)
        ref = _ref(ancestor)
        results: list[tuple[bytes, bytes]] = []
        more = True
        while len(results) < want and more:
            rows = await self._engine.scan_group(app, namespace, ref.group, ref.path, start_after, want)
            more = len(rows) == want
            for path, kind, blob in rows:
                start_after = path
                if not query.kind or kind == query.kind:
                    results.append((path, blob))
                    if len(results) == want:
                        break
        out = pb.RunQueryResponse(query=query)
        out.batch.skipped_results = 0
        for path, blob in results:
            er = out.batch.entity_results.add()
            er.entity.ParseFromString(blob)
            if query.keys_only:
                er.entity.ClearField("properties")
            er.cursor = _CURSOR_VERSION + path
        if results:
            out.batch.end_cursor = _CURSOR_VERSION + results[-1][0]
        elif query.start_cursor:
            out.batch.end_cursor = query.start_cursor
        if limit is not None and len(results) == limit:
            out.batch.more_results = pb.QueryResultBatch.MORE_RESULTS_TYPE_MORE_RESULTS_AFTER_LIMIT
        elif len(results) == want and more:
            out.batch.more_results = pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED
        else:
            out.batch.more_results = pb.QueryResultBatch.MORE_RESULTS_TYPE_NO_MORE_RESULTS
        return out

    async def BeginTransaction(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise UnimplementedError("transactions are not implemented yet (issue #3)")

    async def Commit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise UnimplementedError("transactions are not implemented yet (issue #3)")

    async def Rollback(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise UnimplementedError("transactions are not implemented yet (issue #3)")


def _parse_cursor(cursor: bytes) -> bytes | None:
    if not cursor:
        return None
    if not cursor.startswith(_CURSOR_VERSION) or len(cursor) < 2:
        raise BadRequestError("start_cursor: not a cursor returned by this service")
    path = cursor[1:]
    try:
        decode_path(path)
    except (ValueError, IndexError, UnicodeDecodeError):
        raise BadRequestError("start_cursor: not a cursor returned by this service") from None
    return path
