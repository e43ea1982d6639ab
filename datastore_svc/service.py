"""gRPC servicer for the datastore: proto in, validation, planning, engine calls, proto out."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any

import grpc

from datastore_svc import execute, gqlquery, metadata, model, outbox, query
from datastore_svc.catalog import AutoIndexFile, Catalog
from datastore_svc.engine.base import MAX_ALLOCATED_ID, Engine, GroupCommit, Ref, RowsOf, StoredIndex, Write
from datastore_svc.index import IndexDef, Indexer, IndexRow
from datastore_svc.keys import encode_element, encode_path, group_of
from kiln_platform import grpcserver
from kiln.errors import (BadRequestError, ConcurrentTransactionError, FailedPreconditionError, KilnError,
                         NeedIndexError)
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.datastore.v1 import datastore_pb2_grpc

log = logging.getLogger(__name__)

MAX_ALLOCATE = 1_000_000_000
DEFAULT_BATCH = 1000
# App Engine: a transaction may touch at most 25 entity groups and lives at most 60 s.
MAX_XG_GROUPS = 25
TRANSACTION_SECONDS = 60.0
_STATES = {"BUILDING": pb.CompositeIndex.STATE_BUILDING, "SERVING": pb.CompositeIndex.STATE_SERVING,
           "DELETING": pb.CompositeIndex.STATE_DELETING, "ERROR": pb.CompositeIndex.STATE_ERROR}


def _ref(key: pb.Key) -> Ref:
    return Ref(group=encode_element(key.path[0]), path=encode_path(key.path))


@dataclasses.dataclass
class _Transaction:
    """A transaction's read set: the version of each group when first read."""

    app: str
    namespace: str | None  # bound by the first key the transaction touches
    xg: bool
    started: float
    versions: dict[bytes, int] = dataclasses.field(default_factory=dict)


class DatastoreService(datastore_pb2_grpc.DatastoreServiceServicer):
    """Implements ``kiln.pb.datastore.v1.DatastoreService`` over an :class:`Engine`.

    Transactions are optimistic, as App Engine's: reads record each entity
    group's version, and the commit succeeds only if none changed. Their read
    sets live in this process, so one transaction's calls go to one replica
    (gRPC keeps a client's calls on one connection); a transaction whose
    replica went away fails and the app's ``run_in_transaction`` retries it.
    """

    def __init__(self, engine: Engine, *, index_cache_seconds: float = 2.0,
                 auto_index: AutoIndexFile | None = None, tasks: outbox.Outbox | None = None) -> None:
        self._engine = engine
        self._outbox = tasks
        self._catalog = Catalog(engine, ttl=index_cache_seconds)
        self._auto_index = auto_index
        self._txns: dict[bytes, _Transaction] = {}

    async def close(self) -> None:
        """Stop background index work."""
        await self._catalog.close()


    # ---------------------------------------------------------------- reads

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetResponse:
        app = grpcserver.caller_app()
        if len(request.keys) > model.MAX_GET_BATCH:
            raise BadRequestError(f"at most {model.MAX_GET_BATCH} keys per Get, got {len(request.keys)}")
        for i, key in enumerate(request.keys):
            model.check_key(key, app, allow_incomplete=False, what=f"keys[{i}]")
        txn = self._txn(request.read_options.transaction, app) if request.read_options.transaction else None
        by_ns: dict[str, list[int]] = collections.defaultdict(list)
        for i, key in enumerate(request.keys):
            by_ns[key.partition_id.namespace].append(i)
        found: list[bytes | None] = [None] * len(request.keys)
        for ns, idxs in by_ns.items():
            refs = [_ref(request.keys[i]) for i in idxs]
            if txn is not None:
                self._check_txn_namespace(txn, ns)
                await self._record_groups(txn, {r.group for r in refs})
            blobs = await self._engine.get(app, ns, refs, strong=txn is not None)
            if txn is not None:
                await self._check_snapshot(txn, {r.group for r in refs})
            for i, blob in zip(idxs, blobs):
                found[i] = blob
        resp = pb.GetResponse()
        for blob in found:
            result = resp.results.add()
            if blob is not None:
                result.entity.ParseFromString(blob)
        return resp

    async def RunQuery(self, request: pb.RunQueryRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.RunQueryResponse:
        app = grpcserver.caller_app()
        namespace = request.partition_id.namespace
        model.check_namespace(namespace)
        if request.partition_id.app_id and request.partition_id.app_id != app:
            raise BadRequestError("partition_id: app does not match the calling app")
        which = request.WhichOneof("query_type")
        if which == "gql_query":
            q = gqlquery.to_query(request.gql_query, app, namespace)
        elif which == "query":
            q = request.query
        else:
            raise BadRequestError("RunQueryRequest needs a query or a gql_query")
        if q.HasField("ancestor") and q.kind not in metadata.KINDS:
            model.check_key(q.ancestor, app, allow_incomplete=False, what="ancestor")
        if q.offset < 0:
            raise BadRequestError(f"offset: must not be negative, got {q.offset}")
        if q.HasField("limit") and q.limit < 0:
            raise BadRequestError(f"limit: must not be negative, got {q.limit}")
        if request.batch_size < 0:
            raise BadRequestError(f"batch_size: must not be negative, got {request.batch_size}")
        want = min(request.batch_size or DEFAULT_BATCH, DEFAULT_BATCH)
        if q.HasField("limit"):
            want = min(want, q.limit)
        start = execute.parse_cursor(q.start_cursor, "start_cursor")
        end = execute.parse_cursor(q.end_cursor, "end_cursor")
        txn = self._txn(request.read_options.transaction, app) if request.read_options.transaction else None
        if q.kind in metadata.KINDS:
            batch = await self._metadata_batch(app, namespace, q, start, end, want)
        else:
            batch = await self._query_batch(app, namespace, q, start, end, want, txn)
        out = pb.RunQueryResponse(query=q)
        for entity, position in batch.results:
            out.batch.entity_results.add(entity=entity, cursor=execute.make_cursor(position))
        out.batch.skipped_results = batch.skipped
        if batch.end_position is not None:
            out.batch.end_cursor = execute.make_cursor(batch.end_position)
        limit_reached = q.HasField("limit") and len(batch.results) == q.limit
        if limit_reached:
            out.batch.more_results = pb.QueryResultBatch.MORE_RESULTS_TYPE_MORE_RESULTS_AFTER_LIMIT
        elif batch.exhausted:
            out.batch.more_results = pb.QueryResultBatch.MORE_RESULTS_TYPE_NO_MORE_RESULTS
        else:
            out.batch.more_results = pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED
        return out

    async def _query_batch(self, app: str, namespace: str, q: pb.Query, start: bytes | None, end: bytes | None,
                           want: int, txn: _Transaction | None) -> execute.Batch:
        norm = query.normalize(q, namespace, app)
        if txn is not None:
            self._check_txn_namespace(txn, namespace)
            if norm.subs[0].ancestor is None:
                raise BadRequestError("only ancestor queries are allowed inside a transaction")
        kinds = [] if q.kind else [k for k, p, _ in await self._engine.metadata(app, namespace) if not p]
        plans = await self._plan(app, namespace, norm, kinds)
        if txn is not None:
            groups = {group_of(sub.ancestor) for sub in norm.subs if sub.ancestor is not None}
            await self._record_groups(txn, groups)
        batch = await execute.run(self._engine, app, namespace, norm, plans, start=start, end=end,
                                  offset=q.offset, want=want)
        if txn is not None:
            await self._check_snapshot(txn, groups)
        return batch

    async def _plan(self, app: str, namespace: str, norm: query.Normalized,
                    kinds: list[str]) -> list[query.Planned]:
        serving = await self._catalog.serving(app)
        try:
            return [query.choose(s, self._engine, app, namespace, serving, kinds) for s in norm.subs]
        except NeedIndexError:
            if self._auto_index is None:
                raise
        # kiln dev: add the missing indexes (as dev_appserver did), build them, then plan again.
        wanted: list[IndexDef] = []
        for sub in norm.subs:
            try:
                query.choose(sub, self._engine, app, namespace, serving + wanted, kinds)
            except NeedIndexError:
                wanted.append(query.needed_index(sub))
        current = [s.defn for s in await self._catalog.all(app) if s.state in ("BUILDING", "SERVING")]
        await self._catalog.update(app, current + wanted, remove_unlisted=False, wait=True)
        self._auto_index.add(wanted)
        serving = await self._catalog.serving(app)
        return [query.choose(s, self._engine, app, namespace, serving, kinds) for s in norm.subs]

    async def _metadata_batch(self, app: str, namespace: str, q: pb.Query, start: bytes | None,
                              end: bytes | None, want: int) -> execute.Batch:
        found = await metadata.run(self._engine, app, namespace, q)
        positioned = [(e, encode_path(e.key.path)) for e in found]
        positioned = [(e, p) for e, p in positioned if (start is None or p > start) and (end is None or p < end)]
        skipped = min(q.offset, len(positioned))
        page = positioned[skipped:skipped + want]
        last = page[-1][1] if page else (positioned[skipped - 1][1] if skipped else start)
        return execute.Batch(page, skipped, last, skipped + want >= len(positioned))

    # ---------------------------------------------------------------- writes

    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.PutResponse:
        app = grpcserver.caller_app()
        if len(request.entities) > model.MAX_BATCH:
            raise BadRequestError(f"at most {model.MAX_BATCH} entities per Put, got {len(request.entities)}")
        for i, entity in enumerate(request.entities):
            model.check_entity(entity, app, what=f"entities[{i}]")
        fresh = await self._complete_keys(app, request.entities)
        await self._write(app, [pb.Mutation(upsert=e) for e in request.entities], versions=None, fresh=fresh)
        return pb.PutResponse(keys=[e.key for e in request.entities])

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.DeleteResponse:
        app = grpcserver.caller_app()
        if len(request.keys) > model.MAX_BATCH:
            raise BadRequestError(f"at most {model.MAX_BATCH} keys per Delete, got {len(request.keys)}")
        for i, key in enumerate(request.keys):
            model.check_key(key, app, allow_incomplete=False, what=f"keys[{i}]")
        await self._write(app, [pb.Mutation(delete=k) for k in request.keys], versions=None)
        return pb.DeleteResponse()

    async def _complete_keys(self, app: str, entities: Iterable[pb.Entity]) -> set[tuple[str, bytes]]:
        """Give incomplete keys their ids; returns the (namespace, group) of each root entity given one: groups
        no commit can have reached yet (ids are allocated once per app)."""
        incomplete = [e for e in entities if model.is_incomplete(e.key)]
        fresh: set[tuple[str, bytes]] = set()
        if incomplete:
            start = await self._engine.allocate_ids(app, len(incomplete))
            for offset, entity in enumerate(incomplete):
                entity.key.path[-1].id = start + offset
                if len(entity.key.path) == 1:
                    fresh.add((entity.key.partition_id.namespace, encode_element(entity.key.path[0])))
        return fresh

    async def _write(self, app: str, mutations: list[pb.Mutation], *, versions: dict[bytes, int] | None,
                     extra: tuple[str, GroupCommit] | None = None,
                     fresh: set[tuple[str, bytes]] | None = None) -> None:
        """Commit mutations; ``versions`` (a transaction's read set) makes it conditional and atomic; ``extra``
        (a namespace and a group commit: a transaction's task record) is committed with them, atomically;
        ``fresh`` names the (namespace, group) pairs whose root ids this call allocated (see
        :class:`~datastore_svc.engine.base.GroupCommit`)."""
        indexer = await self._catalog.indexer(app)
        by_ns: dict[str, dict[bytes, list[Write]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        for mutation in mutations:
            if mutation.HasField("upsert"):
                entity = mutation.upsert
                key = entity.key
                write = Write(encode_path(key.path), key.path[-1].kind,
                              entity.SerializeToString(deterministic=True),
                              frozenset(indexer.rows(entity, check_limit=True)))
            else:
                key = mutation.delete
                write = Write(encode_path(key.path), key.path[-1].kind, None)
            by_ns[key.partition_id.namespace][encode_element(key.path[0])].append(write)
        rows_of = _rows_of(indexer)
        if extra is not None:
            by_ns[extra[0]]  # noqa: B018 - the namespace commits even when the transaction wrote no entity
        for ns, groups in by_ns.items():
            if versions is None:
                commits = [GroupCommit(g, tuple(ws), fresh=fresh is not None and (ns, g) in fresh)
                           for g, ws in groups.items()]
            else:
                # Groups read but not written are checked too: their reads must still hold.
                commits = [GroupCommit(g, tuple(groups.get(g, ())), versions[g]) for g in sorted(versions)]
            if extra is not None and extra[0] == ns:
                commits.append(extra[1])
            await self._engine.commit(app, ns, commits, rows_of, atomic=versions is not None)

    async def AllocateIds(self, request: pb.AllocateIdsRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.AllocateIdsResponse:
        app = grpcserver.caller_app()
        model.check_key(request.key, app, allow_incomplete=True, what="key")
        if not model.is_incomplete(request.key):
            raise BadRequestError("key: must be incomplete (the parent path and kind of the ids)")
        if request.size and request.max:
            raise BadRequestError("give either size or max, not both")
        if request.max:
            if not 1 <= request.max <= MAX_ALLOCATED_ID:
                raise BadRequestError(f"max: must be between 1 and the largest allocatable id {MAX_ALLOCATED_ID} "
                                      f"(2**52 - 1), got {request.max}")
            await self._engine.reserve_ids_up_to(app, request.max)
            return pb.AllocateIdsResponse(start=1, end=request.max)
        if not 1 <= request.size <= MAX_ALLOCATE:
            raise BadRequestError(f"size: must be between 1 and {MAX_ALLOCATE}, got {request.size} "
                                  "(or give max to reserve ids up to it)")
        start = await self._engine.allocate_ids(app, request.size)
        return pb.AllocateIdsResponse(start=start, end=start + request.size - 1)

    # ---------------------------------------------------------------- transactions

    async def BeginTransaction(self, request: pb.BeginTransactionRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> pb.BeginTransactionResponse:
        app = grpcserver.caller_app()
        model.check_namespace(request.partition_id.namespace)
        self._expire_transactions()
        handle = secrets.token_bytes(16)
        self._txns[handle] = _Transaction(app, None, request.cross_group, time.monotonic())
        return pb.BeginTransactionResponse(transaction=handle)

    async def Commit(self, request: pb.CommitRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.CommitResponse:
        app = grpcserver.caller_app()
        txn = self._txn(request.transaction, app)
        if len(request.mutations) > model.MAX_BATCH:
            raise BadRequestError(f"at most {model.MAX_BATCH} mutations per Commit, got {len(request.mutations)}")
        upserts = []
        for i, mutation in enumerate(request.mutations):
            which = mutation.WhichOneof("operation")
            if which == "upsert":
                model.check_entity(mutation.upsert, app, what=f"mutations[{i}].upsert")
                upserts.append(mutation.upsert)
                key = mutation.upsert.key
            elif which == "delete":
                model.check_key(mutation.delete, app, allow_incomplete=False, what=f"mutations[{i}].delete")
                key = mutation.delete
            else:
                raise BadRequestError(f"mutations[{i}]: neither upsert nor delete")
            self._check_txn_namespace(txn, key.partition_id.namespace)
        tasks = outbox.check_tasks(list(request.tasks))
        if tasks and self._outbox is None:
            raise FailedPreconditionError("this transaction adds tasks, but this datastore service runs without the "
                                          "task queue's address (--taskqueue)")
        record = None
        try:
            await self._complete_keys(app, upserts)
            written = {encode_element((m.upsert.key if m.HasField("upsert") else m.delete).path[0])
                       for m in request.mutations}
            await self._record_groups(txn, written)
            if tasks and self._outbox is not None:
                # The tasks are stored with the commit (an outbox): see datastore_svc/outbox.py.
                record = pb.TransactionTasks(app_id=app, namespace=txn.namespace or "",
                                             transaction=request.transaction, tasks=tasks)
                record.started.GetCurrentTime()
                await self._outbox.hint(record)
            try:
                await self._write(app, list(request.mutations), versions=dict(txn.versions),
                                  extra=(record.namespace, outbox.record_commit(record)) if record else None)
            except ConcurrentTransactionError:
                if record is not None and self._outbox is not None:
                    with contextlib.suppress(KilnError):  # else the sweep drops it: nothing was committed
                        await self._outbox.unhint(request.transaction)
                raise
        finally:
            self._txns.pop(request.transaction, None)
        if record is not None and self._outbox is not None:
            self._outbox.committed(record)
        return pb.CommitResponse(keys=[m.upsert.key for m in request.mutations if m.HasField("upsert")])

    async def Rollback(self, request: pb.RollbackRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.RollbackResponse:
        app = grpcserver.caller_app()
        self._txn(request.transaction, app)
        self._txns.pop(request.transaction, None)
        return pb.RollbackResponse()

    def _txn(self, handle: bytes, app: str) -> _Transaction:
        txn = self._txns.get(handle)
        if txn is None or txn.app != app:
            raise BadRequestError("transaction: unknown, already committed or rolled back, or expired")
        if time.monotonic() - txn.started > TRANSACTION_SECONDS:
            self._txns.pop(handle, None)
            raise BadRequestError(f"transaction: expired (transactions last at most {TRANSACTION_SECONDS:.0f} s)")
        return txn

    @staticmethod
    def _check_txn_namespace(txn: _Transaction, namespace: str) -> None:
        if txn.namespace is None:
            txn.namespace = namespace
        elif namespace != txn.namespace:
            raise BadRequestError(f"transaction: its entities are in namespace {txn.namespace!r}; a "
                                  f"transaction cannot also use namespace {namespace!r}")

    async def _record_groups(self, txn: _Transaction, groups: set[bytes]) -> None:
        new = sorted(g for g in groups if g not in txn.versions)
        total = len(txn.versions) + len(new)
        if not txn.xg and total > 1:
            raise BadRequestError("cross-group transactions need to be explicitly specified (xg=True): this "
                                  "transaction touches more than one entity group")
        if total > MAX_XG_GROUPS:
            raise BadRequestError(f"a transaction may touch at most {MAX_XG_GROUPS} entity groups, this one "
                                  f"touches {total}")
        if new:
            for group, version in zip(new, await self._engine.group_versions(txn.app, txn.namespace or "", new)):
                txn.versions[group] = version

    async def _check_snapshot(self, txn: _Transaction, groups: Iterable[bytes]) -> None:
        """Fail fast when a group changed since the transaction first read it (its reads would be torn)."""
        wanted = sorted(groups)
        current = await self._engine.group_versions(txn.app, txn.namespace or "", wanted)
        if any(txn.versions[g] != v for g, v in zip(wanted, current)):
            raise ConcurrentTransactionError(
                "the transaction conflicted with a concurrent commit to the same entity group; retry it")

    def _expire_transactions(self) -> None:
        now = time.monotonic()
        for handle in [h for h, t in self._txns.items() if now - t.started > TRANSACTION_SECONDS]:
            del self._txns[handle]

    # ---------------------------------------------------------------- indexes

    async def UpdateIndexes(self, request: pb.UpdateIndexesRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> pb.UpdateIndexesResponse:
        app = grpcserver.caller_app()
        wanted = [IndexDef.from_pb(m, what=f"indexes[{i}]") for i, m in enumerate(request.indexes)]
        stored = await self._catalog.update(app, wanted, remove_unlisted=request.remove_unlisted)
        return pb.UpdateIndexesResponse(indexes=[_index_pb(s) for s in stored])

    async def ListIndexes(self, request: pb.ListIndexesRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListIndexesResponse:
        app = grpcserver.caller_app()
        self._catalog.forget(app)
        return pb.ListIndexesResponse(indexes=[_index_pb(s) for s in await self._catalog.all(app)])


def _rows_of(indexer: Indexer) -> RowsOf:
    def rows(blob: bytes) -> frozenset[IndexRow]:
        if outbox.is_record(blob):
            return frozenset()
        return frozenset(indexer.rows(pb.Entity.FromString(blob)))
    return rows


def _index_pb(stored: StoredIndex) -> pb.CompositeIndex:
    out = stored.defn.to_pb()
    out.state = _STATES[stored.state]
    out.error = stored.error
    return out
