"""An in-memory stand-in for the DatastoreService stub, for unit tests of the client side.

It keeps entities by key, allocates ids, runs optimistic transactions (a
commit fails with ABORTED / CONCURRENT_TRANSACTION when a group it read was
written since), records every call, and answers RunQuery from a script of
responses, so the client's paging logic can be checked request by request.
It raises real ``grpc.RpcError`` objects, so errors go through
``kiln.api._rpc.call`` as they do in production.
"""

from __future__ import annotations

import itertools
from typing import Any

import grpc
import pytest

from kiln.api import datastore
from kiln.pb.datastore.v1 import datastore_pb2 as pb

APP = "fake-app"


class FakeRpcError(grpc.RpcError):
    """A gRPC error as the services send it: a status, details and the kiln error code."""

    def __init__(self, code: grpc.StatusCode, details: str, error_code: str | None = None) -> None:
        super().__init__(details)
        self._code, self._details, self._error_code = code, details, error_code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("kiln-error-code", self._error_code),) if self._error_code else ()


def conflict() -> FakeRpcError:
    return FakeRpcError(grpc.StatusCode.ABORTED, "concurrent transaction", "CONCURRENT_TRANSACTION")


def _path(key: pb.Key) -> tuple[Any, ...]:
    return (key.partition_id.namespace,
            tuple((e.kind, e.WhichOneof("id_type"), e.id, e.name) for e in key.path))


def _group(key: pb.Key) -> tuple[Any, ...]:
    namespace, path = _path(key)
    return namespace, path[0]


class FakeDatastore:
    """Implements the DatastoreService stub methods the client calls."""

    def __init__(self) -> None:
        self.entities: dict[tuple[Any, ...], pb.Entity] = {}
        self.versions: dict[tuple[Any, ...], int] = {}
        self.calls: list[tuple[str, Any]] = []
        self.ids = itertools.count(1000)
        self.handles = itertools.count(1)
        self.txns: dict[bytes, dict[tuple[Any, ...], int]] = {}
        self.query_responses: list[pb.RunQueryResponse] = []
        #: How many of the next commits fail as if a concurrent transaction won.
        self.failing_commits = 0
        #: Errors to raise once, by method name.
        self.errors: dict[str, FakeRpcError] = {}

    def _enter(self, method: str, request: Any) -> None:
        copy = type(request)()
        copy.CopyFrom(request)
        self.calls.append((method, copy))
        error = self.errors.pop(method, None)
        if error is not None:
            raise error

    def requests(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]

    def methods(self) -> list[str]:
        return [name for name, _ in self.calls]

    # -- reads and writes --

    def Get(self, request: pb.GetRequest, **_: Any) -> pb.GetResponse:
        self._enter("Get", request)
        txn = self.txns.get(request.read_options.transaction) if request.read_options.transaction else None
        out = pb.GetResponse()
        for key in request.keys:
            if txn is not None:
                txn.setdefault(_group(key), self.versions.get(_group(key), 0))
            result = out.results.add()
            found = self.entities.get(_path(key))
            if found is not None:
                result.entity.CopyFrom(found)
        return out

    def _store(self, entity: pb.Entity) -> pb.Key:
        stored = pb.Entity()
        stored.CopyFrom(entity)
        stored.key.partition_id.app_id = APP
        if stored.key.path[-1].WhichOneof("id_type") is None:
            stored.key.path[-1].id = next(self.ids)
        self.entities[_path(stored.key)] = stored
        self.versions[_group(stored.key)] = self.versions.get(_group(stored.key), 0) + 1
        return stored.key

    def Put(self, request: pb.PutRequest, **_: Any) -> pb.PutResponse:
        self._enter("Put", request)
        return pb.PutResponse(keys=[self._store(e) for e in request.entities])

    def _delete(self, key: pb.Key) -> None:
        self.entities.pop(_path(key), None)
        self.versions[_group(key)] = self.versions.get(_group(key), 0) + 1

    def Delete(self, request: pb.DeleteRequest, **_: Any) -> pb.DeleteResponse:
        self._enter("Delete", request)
        for key in request.keys:
            self._delete(key)
        return pb.DeleteResponse()

    def AllocateIds(self, request: pb.AllocateIdsRequest, **_: Any) -> pb.AllocateIdsResponse:
        self._enter("AllocateIds", request)
        start = next(self.ids)
        for _ in range(request.size - 1):
            next(self.ids)
        return pb.AllocateIdsResponse(start=start, end=start + request.size - 1)

    # -- transactions --

    def BeginTransaction(self, request: pb.BeginTransactionRequest, **_: Any) -> pb.BeginTransactionResponse:
        self._enter("BeginTransaction", request)
        handle = b"tx%d" % next(self.handles)
        self.txns[handle] = {}
        return pb.BeginTransactionResponse(transaction=handle)

    def Commit(self, request: pb.CommitRequest, **_: Any) -> pb.CommitResponse:
        self._enter("Commit", request)
        read = self.txns.pop(request.transaction)
        if self.failing_commits:
            self.failing_commits -= 1
            raise conflict()
        if any(self.versions.get(group, 0) != version for group, version in read.items()):
            raise conflict()
        keys = []
        for mutation in request.mutations:
            if mutation.HasField("upsert"):
                keys.append(self._store(mutation.upsert))
            else:
                self._delete(mutation.delete)
        return pb.CommitResponse(keys=keys)

    def Rollback(self, request: pb.RollbackRequest, **_: Any) -> pb.RollbackResponse:
        self._enter("Rollback", request)
        self.txns.pop(request.transaction, None)
        return pb.RollbackResponse()

    # -- queries --

    def RunQuery(self, request: pb.RunQueryRequest, **_: Any) -> pb.RunQueryResponse:
        self._enter("RunQuery", request)
        if not self.query_responses:
            raise AssertionError("RunQuery was called more often than the test scripted")
        return self.query_responses.pop(0)


def result_entity(kind: str, name: str, /, **props: Any) -> pb.Entity:
    """A stored-looking entity with string/int properties."""
    entity = pb.Entity()
    entity.key.partition_id.app_id = APP
    entity.key.path.add(kind=kind, name=name)
    for prop, value in props.items():
        entity.properties[prop].CopyFrom(datastore.to_value(value))
    return entity


def batch(*entities: pb.Entity, more: int = pb.QueryResultBatch.MORE_RESULTS_TYPE_NO_MORE_RESULTS,
          end_cursor: bytes = b"", skipped: int = 0, query: pb.Query | None = None,
          cursors: list[bytes] | None = None) -> pb.RunQueryResponse:
    """A RunQuery response; each result's cursor defaults to ``b"@" + its name``."""
    out = pb.RunQueryResponse()
    if query is not None:
        out.query.CopyFrom(query)
    for i, entity in enumerate(entities):
        cursor = cursors[i] if cursors is not None else b"@" + entity.key.path[-1].name.encode()
        out.batch.entity_results.add(entity=entity, cursor=cursor)
    out.batch.end_cursor = end_cursor
    out.batch.skipped_results = skipped
    out.batch.more_results = more  # type: ignore[assignment]
    return out


NOT_FINISHED = pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED
AFTER_LIMIT = pb.QueryResultBatch.MORE_RESULTS_TYPE_MORE_RESULTS_AFTER_LIMIT


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDatastore:
    """Route ``kiln.api.datastore`` to a fresh in-memory fake; retries do not pause."""
    store = FakeDatastore()
    monkeypatch.setattr(datastore, "_stub", lambda: store)
    monkeypatch.setattr(datastore, "DEFAULT_RETRY_PAUSE_SECONDS", 0.0)
    monkeypatch.setenv("APPLICATION_ID", APP)  # as the runtime sets it
    monkeypatch.delenv("USER_EMAIL", raising=False)
    return store
