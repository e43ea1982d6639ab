"""App Engine's ``datastore_v3`` service for Google's SDK, served by kiln's datastore.

ndb and ``ext.db`` make every datastore call through the SDK's ``datastore_rpc.Connection`` with App Engine's
protocol buffers (``datastore_v3_bytes_pb2`` requests, ``entity_bytes_pb2`` entities and keys). :class:`DatastoreV3`
translates each call into calls to kiln's ``DatastoreService`` with the app's own token (:mod:`kiln.api._rpc`) and
translates the answer back. What App Engine's datastore kept between calls lives in this process:

- **Transactions.** App Engine's handle is a 64-bit number, kiln's opaque bytes: each ``BeginTransaction`` maps a
  fresh number to a kiln transaction. Puts and deletes made inside it are buffered and sent with one kiln
  ``Commit`` (so they take effect only then, and a transaction does not see its own writes, as on App Engine);
  incomplete keys get their ids at ``Put`` time from ``AllocateIds``. kiln's datastore refuses a read inside a
  transaction as soon as a concurrent commit has changed the entity group (App Engine would have read its
  snapshot and failed only at commit), but the SDK retries a transaction only when its *commit* fails: such a
  transaction is therefore marked lost, its reads are answered with the latest data, and its commit answers
  ``CONCURRENT_TRANSACTION``, so ndb and db run the function again as on App Engine.
- **Transactional tasks.** ``AddActions`` (which kiln's ``taskqueue`` service calls for a transactional add, as
  App Engine's taskqueue stub did, with the tasks already checked and named) keeps up to five tasks with the
  transaction; its ``Commit`` sends them in kiln's ``CommitRequest.tasks``, and kiln's datastore stores them with
  the commit and adds them to the task queue once it committed. A sixth answers App Engine's ``BAD_REQUEST`` "Too
  many messages, maximum allowed 5".
- **Queries.** ``RunQuery`` answers one batch; when more may follow, its ``cursor`` names the query's state here
  (the structured kiln query, moved on to the batch's end, with what remains of offset and limit) for ``Next``.
- **Cursors** that apps see (``CompiledCursor``) carry kiln's cursor bytes in ``position.start_key``.

Both kinds of state are bounded (oldest dropped first) and freed when the query ends or the transaction
finishes or expires.

Values: an ``int64Value`` with ``GD_WHEN`` is a datetime (kiln's timestamp); a ``stringValue`` is kiln's string
when it is valid UTF-8 and kiln's bytes otherwise (whatever its meaning, so that a filter always finds the values
it names: ndb sends a string property's filter value as ``BYTESTRING``), the meaning riding along; ndb's
``ENTITY_PROTO`` values (local structured properties) become kiln's embedded entities; a list is kiln's array
(``multiple``), an ``EMPTY_LIST`` an empty one; ``property[]`` is indexed, ``raw_property[]`` is not.

App ids: the SDK writes ``GAE_APPLICATION`` (``s~app``) into every key. Keys of the calling app with or without
its partition prefix are accepted, another app's are refused (``BAD_REQUEST``), and keys come back spelt as the
request spelt the app (so urlsafe keys round-trip).

This module imports Google's SDK: only the runtime loads it, in instances whose environment has the SDK.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.appengine.datastore import entity_bytes_pb2 as epb  # the SDK's datastore_rpc uses the *_bytes modules
from google.appengine.runtime import apiproxy_errors
from google.protobuf import message

from kiln import errors
from kiln.api import _rpc
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.sdk import blobinfo
from kiln.sdk.service import CallContext

# App Engine's datastore_v3 error codes (``datastore_v3_pb2.Error.ErrorCode``).
BAD_REQUEST = 1
CONCURRENT_TRANSACTION = 2
INTERNAL_ERROR = 3
NEED_INDEX = 4
TIMEOUT = 5
PERMISSION_DENIED = 6
COMMITTED_BUT_STILL_APPLYING = 8
CAPABILITY_DISABLED = 9
RESOURCE_EXHAUSTED = 12

#: App Engine's limit on the tasks one transaction adds.
MAX_TASKS_PER_TRANSACTION = 5
#: How many running queries (waiting for ``Next``) and open transactions one process keeps.
MAX_QUERIES = 1000
MAX_TRANSACTIONS = 1000
#: A query not continued for this long is forgotten (App Engine's cursors expired too).
QUERY_IDLE_SECONDS = 600.0
#: kiln's datastore ends a transaction after 60 s; its handle here is kept a little longer.
TRANSACTION_SECONDS = 90.0
#: The largest id kiln's datastore allocates (2**52 - 1); reserving beyond it needs nothing.
MAX_ALLOCATED_ID = 2**52 - 1
#: The meaning_uri ndb gives compressed values.
ZLIB = "ZLIB"
_KEY = "__key__"

_P = epb.Property
# The App Engine meanings of string values ↔ kiln's.
_STRING_MEANINGS = {
    _P.ATOM_CATEGORY: pb.MEANING_CATEGORY, _P.ATOM_LINK: pb.MEANING_LINK, _P.GD_EMAIL: pb.MEANING_EMAIL,
    _P.GD_IM: pb.MEANING_IM, _P.GD_PHONENUMBER: pb.MEANING_PHONE_NUMBER,
    _P.GD_POSTALADDRESS: pb.MEANING_POSTAL_ADDRESS, _P.BLOBKEY: pb.MEANING_BLOB_KEY, _P.TEXT: pb.MEANING_TEXT,
    _P.BYTESTRING: pb.MEANING_BYTESTRING, _P.BLOB: pb.MEANING_BLOB,
}
_KILN_STRING_MEANINGS = {kiln: sdk for sdk, kiln in _STRING_MEANINGS.items()}
_UNINDEXED_MEANINGS = frozenset({pb.MEANING_TEXT, pb.MEANING_BLOB, pb.MEANING_ZLIB})

_FILTER_OPS = {
    1: pb.PropertyFilter.OPERATOR_LESS_THAN, 2: pb.PropertyFilter.OPERATOR_LESS_THAN_OR_EQUAL,
    3: pb.PropertyFilter.OPERATOR_GREATER_THAN, 4: pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL,
    5: pb.PropertyFilter.OPERATOR_EQUAL, 9: pb.PropertyFilter.OPERATOR_NOT_EQUAL,
}
_IN = 6
_FILTER_NAMES = {7: "EXISTS", 8: "CONTAINED_IN_REGION", 10: "NOT_IN"}

_INDEX_STATES = {  # kiln's index state → App Engine's CompositeIndex.State
    pb.CompositeIndex.STATE_BUILDING: 1, pb.CompositeIndex.STATE_SERVING: 2,
    pb.CompositeIndex.STATE_DELETING: 3, pb.CompositeIndex.STATE_ERROR: 4,
}


def _bad(detail: str) -> apiproxy_errors.ApplicationError:
    return apiproxy_errors.ApplicationError(BAD_REQUEST, detail)


def _error_table() -> _rpc.ErrorTable:
    """kiln's datastore errors (``kiln-error-code``, else the gRPC status) as datastore_v3 ApplicationErrors."""
    def code(number: int) -> Callable[[str], BaseException]:
        return lambda detail: apiproxy_errors.ApplicationError(number, detail)
    by_code = {
        "BAD_REQUEST": BAD_REQUEST, "TOO_LARGE": BAD_REQUEST, "CONFIG": BAD_REQUEST, "NOT_FOUND": BAD_REQUEST,
        "CONCURRENT_TRANSACTION": CONCURRENT_TRANSACTION, "CONFLICT": CONCURRENT_TRANSACTION,
        "INTERNAL_ERROR": INTERNAL_ERROR, "NEED_INDEX": NEED_INDEX, "TIMEOUT": TIMEOUT,
        "DEADLINE_EXCEEDED": TIMEOUT, "PERMISSION_DENIED": PERMISSION_DENIED,
        "UNAUTHENTICATED": PERMISSION_DENIED, "COMMITTED_BUT_STILL_APPLYING": COMMITTED_BUT_STILL_APPLYING,
        "CAPABILITY_DISABLED": CAPABILITY_DISABLED,
    }
    by_status = {
        grpc.StatusCode.INVALID_ARGUMENT: BAD_REQUEST, grpc.StatusCode.NOT_FOUND: BAD_REQUEST,
        grpc.StatusCode.FAILED_PRECONDITION: BAD_REQUEST, grpc.StatusCode.OUT_OF_RANGE: BAD_REQUEST,
        grpc.StatusCode.ABORTED: CONCURRENT_TRANSACTION, grpc.StatusCode.ALREADY_EXISTS: CONCURRENT_TRANSACTION,
        # The call may or may not have been applied: App Engine's Timeout says exactly that.
        grpc.StatusCode.DEADLINE_EXCEEDED: TIMEOUT, grpc.StatusCode.UNAVAILABLE: TIMEOUT,
        grpc.StatusCode.PERMISSION_DENIED: PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED: PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED: RESOURCE_EXHAUSTED,
    }
    return _rpc.ErrorTable(
        codes={name: code(number) for name, number in by_code.items()},
        statuses={status: code(by_status.get(status, INTERNAL_ERROR)) for status in grpc.StatusCode},
        unclassified=code(INTERNAL_ERROR))


ERRORS = _error_table()


def _stub() -> datastore_pb2_grpc.DatastoreServiceStub:
    return _rpc.stub("DATASTORE", datastore_pb2_grpc.DatastoreServiceStub)


# --- keys, values and entities ----------------------------------------------------------------------------------


class _Translator:
    """App Engine's keys, values and entities ⇄ kiln's, for one call of one app.

    Args:
        app_id: the calling app (kiln's id).
        spelling: how the request spelt the app (``s~app``…); keys going back carry it.
    """

    def __init__(self, app_id: str, spelling: str) -> None:
        self.app_id = app_id
        self.spelling = spelling or app_id

    def check_app(self, app: str, what: str) -> None:
        """Refuse a key (or request) of another app."""
        if app and app != self.app_id and app.partition("~")[2] != self.app_id:
            raise _bad(f"{what}: app {app!r} is not the calling app {self.app_id!r} (nor s~{self.app_id})")

    # -- keys

    def key_in(self, ref: Any, what: str, *, allow_incomplete: bool = False, out: pb.Key | None = None) -> pb.Key:
        """A ``Reference`` as kiln's key (written into ``out`` when given: the message it goes into, not a copy)."""
        self.check_app(ref.app, what)
        if ref.database_id:
            raise _bad(f"{what}: database_id {ref.database_id!r}: kiln has one database per app")
        key = pb.Key() if out is None else out
        key.partition_id.namespace = ref.name_space
        elements = ref.path.element
        if not elements:
            raise _bad(f"{what}: a key needs at least one path element")
        for i, element in enumerate(elements):
            step = key.path.add(kind=element.type)
            if element.HasField("id") and element.HasField("name"):
                raise _bad(f"{what}: path element {i} has both an id and a name")
            if element.HasField("id"):
                step.id = element.id
            elif element.HasField("name"):
                step.name = element.name
            elif not (allow_incomplete and i == len(elements) - 1):
                raise _bad(f"{what}: path element {i} ({element.type}) has neither id nor name")
        return key

    def key_out(self, key: pb.Key, ref: Any) -> None:
        """Fill a ``Reference`` from kiln's key."""
        ref.app = self.spelling
        if key.partition_id.namespace:
            ref.name_space = key.partition_id.namespace
        _path_out(key.path, ref.path)

    def reference_value_in(self, ref: Any, what: str) -> pb.Key:
        """A ``PropertyValue.ReferenceValue`` (a key stored as a value) as kiln's key."""
        self.check_app(ref.app, what)
        if ref.database_id:
            raise _bad(f"{what}: database_id {ref.database_id!r}: kiln has one database per app")
        key = pb.Key(partition_id=pb.PartitionId(namespace=ref.name_space))
        for element in ref.pathelement:
            out = key.path.add(kind=element.type)
            if element.HasField("id"):
                out.id = element.id
            elif element.HasField("name"):
                out.name = element.name
        return key

    def reference_value_out(self, key: pb.Key, ref: Any) -> None:
        ref.app = self.spelling
        if key.partition_id.namespace:
            ref.name_space = key.partition_id.namespace
        for element in key.path:
            out = ref.pathelement.add(type=element.kind)
            which = element.WhichOneof("id_type")
            if which == "id":
                out.id = element.id
            elif which == "name":
                out.name = element.name

    # -- values

    def value_in(self, prop: Any, what: str, out: pb.Value | None = None) -> pb.Value:
        """One ``Property`` value (with its meaning) as kiln's value, written into ``out`` when given; lists are
        assembled by :meth:`entity_in`."""
        value = prop.value
        meaning = prop.meaning if prop.HasField("meaning") else _P.NO_MEANING
        if prop.meaning_uri and (prop.meaning_uri != ZLIB or meaning != _P.BLOB):
            raise _bad(f"{what}: meaning_uri {prop.meaning_uri!r} (meaning {meaning}) is not supported; kiln keeps "
                       f"only {ZLIB!r} on BLOB values (ndb's compressed properties)")
        if out is None:
            out = pb.Value()
        if value.HasField("int64Value"):
            if meaning == _P.GD_WHEN:
                seconds, micros = divmod(value.int64Value, 1_000_000)
                out.timestamp_value.seconds, out.timestamp_value.nanos = seconds, micros * 1000
            elif meaning == _P.GD_RATING:
                out.integer_value, out.meaning = value.int64Value, pb.MEANING_RATING
            elif meaning == _P.NO_MEANING:
                out.integer_value = value.int64Value
            else:
                raise _bad(f"{what}: an integer with meaning {meaning} is not supported")
        elif value.HasField("booleanValue"):
            out.boolean_value = value.booleanValue
        elif value.HasField("doubleValue"):
            out.double_value = value.doubleValue
        elif value.HasField("stringValue"):
            self._string_in(value.stringValue, meaning, prop, out, what)
        elif value.HasField("pointvalue"):
            out.geo_point_value.latitude = value.pointvalue.x
            out.geo_point_value.longitude = value.pointvalue.y
        elif value.HasField("uservalue"):
            user = value.uservalue
            out.user_value.email = user.email
            out.user_value.auth_domain = user.auth_domain
            out.user_value.user_id = user.obfuscated_gaiaid
            out.user_value.federated_identity = user.federated_identity
        elif value.HasField("referencevalue"):
            out.key_value.CopyFrom(self.reference_value_in(value.referencevalue, what))
        else:
            out.null_value = pb.NULL_VALUE_UNSPECIFIED
        return out

    def _string_in(self, raw: bytes, meaning: int, prop: Any, out: pb.Value, what: str) -> None:
        if meaning == _P.ENTITY_PROTO:
            inner = epb.EntityProto()
            try:
                inner.MergeFromString(raw)
            except message.DecodeError as exc:
                raise _bad(f"{what}: an ENTITY_PROTO value that is not a serialized EntityProto ({exc})") from None
            self.entity_in(inner, f"{what} (embedded)", embedded=True, out=out.entity_value)
            return
        if meaning == _P.BLOB:
            out.blob_value = raw
            out.meaning = pb.MEANING_ZLIB if prop.meaning_uri == ZLIB else pb.MEANING_BLOB
            return
        if meaning not in _STRING_MEANINGS and meaning != _P.NO_MEANING:
            raise _bad(f"{what}: a string with meaning {meaning} is not supported")
        try:
            out.string_value = raw.decode("utf-8")
        except UnicodeDecodeError:
            if meaning != _P.BYTESTRING:  # App Engine's words
                raise _bad(f'String property "{prop.name}" value is not valid UTF-8.') from None
            out.blob_value = raw
        if meaning != _P.NO_MEANING:
            out.meaning = _STRING_MEANINGS[meaning]

    def value_out(self, value: pb.Value, prop: Any, what: str) -> None:
        """Fill one ``Property``'s value and meaning from kiln's (non-list) value."""
        out = prop.value
        out.SetInParent()
        kind = value.WhichOneof("value_type")
        meaning = None
        if kind == "integer_value":
            out.int64Value = value.integer_value
            if value.meaning == pb.MEANING_RATING:
                meaning = _P.GD_RATING
        elif kind == "timestamp_value":
            ts = value.timestamp_value
            out.int64Value = ts.seconds * 1_000_000 + ts.nanos // 1000
            meaning = _P.GD_WHEN
        elif kind == "boolean_value":
            out.booleanValue = value.boolean_value
        elif kind == "double_value":
            out.doubleValue = value.double_value
        elif kind == "string_value" or kind == "blob_value":
            out.stringValue = value.string_value.encode("utf-8") if kind == "string_value" else value.blob_value
            if value.meaning == pb.MEANING_ZLIB:
                meaning, prop.meaning_uri = _P.BLOB, ZLIB
            else:
                meaning = _KILN_STRING_MEANINGS.get(value.meaning)
        elif kind == "geo_point_value":
            out.pointvalue.x = value.geo_point_value.latitude
            out.pointvalue.y = value.geo_point_value.longitude
            meaning = _P.GEORSS_POINT
        elif kind == "user_value":
            user = value.user_value
            out.uservalue.email = user.email
            out.uservalue.auth_domain = user.auth_domain
            out.uservalue.gaiaid = 0
            if user.user_id:
                out.uservalue.obfuscated_gaiaid = user.user_id
            if user.federated_identity:
                out.uservalue.federated_identity = user.federated_identity
        elif kind == "key_value":
            self.reference_value_out(value.key_value, out.referencevalue)
        elif kind == "entity_value":
            inner = epb.EntityProto()
            self.entity_out(value.entity_value, inner, embedded=True)
            out.stringValue = inner.SerializePartialToString()
            meaning = _P.ENTITY_PROTO
        elif kind != "null_value":
            raise apiproxy_errors.ApplicationError(INTERNAL_ERROR, f"{what}: kiln returned a {kind} value")
        if meaning is not None:
            prop.meaning = meaning

    # -- entities

    def entity_in(self, entity: Any, what: str, *, embedded: bool = False, out: pb.Entity | None = None) -> pb.Entity:
        """An ``EntityProto`` as kiln's entity (``property[]`` indexed, ``raw_property[]`` not), written into ``out``
        when given."""
        if out is None:
            out = pb.Entity()
        if entity.HasField("key") and (entity.key.path.element or not embedded):
            self.key_in(entity.key, f"{what}.key", allow_incomplete=True, out=out.key)
        named: dict[str, list[tuple[Any, bool]]] = collections.defaultdict(list)
        for indexed, props in ((True, entity.property), (False, entity.raw_property)):
            for prop in props:
                named[prop.name].append((prop, indexed))
        for name, entries in named.items():
            where = f"{what}.{name}"
            value = out.properties[name]
            if len(entries) == 1 and entries[0][0].meaning == _P.EMPTY_LIST:
                value.array_value.SetInParent()
                value.exclude_from_indexes = not entries[0][1]
            elif any(prop.multiple for prop, _ in entries):
                items = value.array_value.values
                for i, (prop, indexed) in enumerate(entries):
                    self.value_in(prop, f"{where}[{i}]", items.add()).exclude_from_indexes = not indexed
                value.exclude_from_indexes = not all(indexed for _, indexed in entries)
            elif len(entries) > 1:
                raise _bad(f"{where}: {len(entries)} values but multiple is not set")
            else:
                prop, indexed = entries[0]
                self.value_in(prop, where, value)
                value.exclude_from_indexes = not indexed
        return out

    def entity_out(self, entity: pb.Entity, out: Any, *, embedded: bool = False, projection: bool = False) -> None:
        """Fill an ``EntityProto`` from kiln's entity (``projection``: values straight from an index)."""
        if entity.key.path or not embedded:
            self.key_out(entity.key, out.key)
            _path_out(entity.key.path[:1], out.entity_group)  # the root element names the entity group
        for name in sorted(entity.properties):
            value = entity.properties[name]
            where = name
            if projection:
                prop = out.property.add(name=name, multiple=False)
                self.value_out(value, prop, where)
                prop.meaning = _P.INDEX_VALUE
                prop.ClearField("meaning_uri")
                continue
            if value.WhichOneof("value_type") == "array_value":
                items = value.array_value.values
                if not items:
                    prop = (out.raw_property if value.exclude_from_indexes else out.property).add(
                        name=name, multiple=False, meaning=_P.EMPTY_LIST)
                    prop.value.SetInParent()
                for item in items:
                    prop = (out.property if _indexed(item) else out.raw_property).add(name=name, multiple=True)
                    self.value_out(item, prop, where)
                continue
            prop = (out.property if _indexed(value) else out.raw_property).add(name=name, multiple=False)
            self.value_out(value, prop, where)


def _path_out(elements: Any, path: Any) -> None:
    """Fill a ``Path`` from kiln's path elements."""
    path.SetInParent()
    for element in elements:
        out = path.element.add(type=element.kind)
        which = element.WhichOneof("id_type")
        if which == "id":
            out.id = element.id
        elif which == "name":
            out.name = element.name


def _indexed(value: pb.Value) -> bool:
    return (not value.exclude_from_indexes and value.meaning not in _UNINDEXED_MEANINGS
            and value.WhichOneof("value_type") != "entity_value")


# --- cursors ----------------------------------------------------------------------------------------------------


def _cursor_in(compiled: Any, what: str) -> bytes:
    """kiln's cursor bytes from a ``CompiledCursor`` this service made (empty: the query's start)."""
    if compiled.HasField("postfix_position") or compiled.HasField("absolute_position"):
        raise _bad(f"{what}: not a cursor from kiln's datastore (it was made by another datastore)")
    if not compiled.HasField("position"):
        return b""
    position = compiled.position
    if position.HasField("key") or len(position.indexvalue):
        raise _bad(f"{what}: not a cursor from kiln's datastore (it was made by another datastore)")
    return bytes(position.start_key)


def _cursor_out(cursor: bytes, compiled: Any) -> None:
    compiled.SetInParent()
    if cursor:
        compiled.position.start_key = cursor


# --- per-process state ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Transaction:
    """One open transaction: kiln's handle and the writes buffered until its commit."""

    handle: bytes
    app_id: str
    started: float
    # Why the transaction cannot commit any more (a read saw a concurrent commit); None while it can.
    lost: str | None = None
    # By entity path, so that a later write of the same key replaces an earlier one (as the commit would).
    mutations: dict[bytes, pb.Mutation] = dataclasses.field(default_factory=dict)
    # Tasks added in the transaction (checked by the task queue), sent with the commit.
    tasks: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Query:
    """A query that has more batches: the kiln request to continue with and what remains of offset and limit."""

    request: pb.RunQueryRequest
    app_id: str
    transaction: _Transaction | None
    spelling: str
    offset: int
    limit: int | None
    projection: bool
    touched: float


class _Bounded:
    """A lock-guarded, size-bounded table of handles (oldest dropped first) with a lifetime."""

    def __init__(self, *, size: int, seconds: float, what: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._size = size
        self._seconds = seconds
        self._what = what

    def add(self, item: Any) -> int:
        handle = secrets.randbits(63) | 1  # never 0: a handle of 0 would look unset
        with self._lock:
            self._expire()
            while len(self._items) >= self._size:
                self._items.popitem(last=False)
            self._items[handle] = (self._clock(), item)
        return handle

    def get(self, handle: int, app_id: str, *, pop: bool = False) -> Any:
        """The item of ``handle`` if it is ``app_id``'s (a use renews its lifetime; ``pop`` removes it)."""
        with self._lock:
            self._expire()
            found = self._items.get(handle)
            if found is None or found[1].app_id != app_id:
                raise _bad(f"{self._what} {handle}: unknown, already finished, or expired")
            if pop:
                del self._items[handle]
            else:
                self._items.move_to_end(handle)
                self._items[handle] = (self._clock(), found[1])
        return found[1]

    def drop(self, handle: int) -> None:
        with self._lock:
            self._items.pop(handle, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        limit = self._clock() - self._seconds
        while self._items:
            handle, (touched, _) = next(iter(self._items.items()))
            if touched >= limit:
                break
            del self._items[handle]


# --- the service ------------------------------------------------------------------------------------------------


class DatastoreV3:
    """The ``datastore_v3`` service (see the module docstring)."""

    name = "datastore_v3"

    def __init__(self) -> None:
        self._transactions = _Bounded(size=MAX_TRANSACTIONS, seconds=TRANSACTION_SECONDS, what="transaction")
        self._queries = _Bounded(size=MAX_QUERIES, seconds=QUERY_IDLE_SECONDS, what="query cursor")
        self._lock = threading.Lock()
        self._methods: dict[str, Callable[[Any, Any, CallContext], None]] = {
            "Get": self._get, "Put": self._put, "Delete": self._delete, "RunQuery": self._run_query,
            "Next": self._next, "DeleteCursor": self._delete_cursor, "BeginTransaction": self._begin,
            "Commit": self._commit, "Rollback": self._rollback, "AllocateIds": self._allocate_ids,
            "GetIndices": self._get_indices, "AddActions": self._add_actions,
        }

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        """Serve one datastore_v3 call (see :class:`kiln.sdk.service.Service`)."""
        serve = self._methods.get(method)
        if serve is None:
            raise apiproxy_errors.CallNotFoundError(
                f"datastore_v3.{method} is not served by kiln (it serves {', '.join(sorted(self._methods))})")
        serve(request, response, ctx)

    def open_queries(self) -> int:
        """How many queries wait for ``Next`` (for tests and metrics)."""
        return len(self._queries)

    def open_transactions(self) -> int:
        """How many transactions are open."""
        return len(self._transactions)

    # -- calls to kiln

    @staticmethod
    def _call(method: str, request: Any, ctx: CallContext) -> Any:
        timeout = ctx.deadline if ctx.deadline is not None else _rpc.DEFAULT_TIMEOUT
        try:
            stub = _stub()
        except errors.KilnError as exc:  # the instance was started without the datastore's address
            raise apiproxy_errors.ApplicationError(INTERNAL_ERROR, str(exc)) from None
        return _rpc.call(getattr(stub, method), request, timeout=timeout, table=ERRORS)

    def _transaction(self, tx: Any, ctx: CallContext, *, pop: bool = False) -> _Transaction:
        """The open transaction an App Engine ``Transaction`` names (``pop``: and forget it)."""
        _Translator(ctx.app_id, "").check_app(tx.app, "transaction.app")
        found: _Transaction = self._transactions.get(tx.handle, ctx.app_id, pop=pop)
        return found

    # -- Get / Put / Delete

    def _get(self, request: Any, response: Any, ctx: CallContext) -> None:
        if request.HasField("read_time_epoch_micros"):
            raise _bad("read_time_epoch_micros: kiln's datastore reads the latest data only")
        t = _Translator(ctx.app_id, request.key[0].app if request.key else "")
        req = pb.GetRequest()
        for i, ref in enumerate(request.key):
            t.key_in(ref, f"key[{i}]", out=req.keys.add())
        tx = self._transaction(request.transaction, ctx) if request.HasField("transaction") else None
        # __BlobInfo__ keys are answered by the blobstore service (kiln.sdk.blobinfo), the rest by the datastore.
        blob_infos = [i for i, key in enumerate(req.keys) if blobinfo.is_blob_info(key)]
        infos = dict(zip(blob_infos, blobinfo.get([req.keys[i] for i in blob_infos], ctx))) if blob_infos else {}
        if infos:
            plain = pb.GetRequest(keys=[k for i, k in enumerate(req.keys) if i not in infos])
            req.CopyFrom(plain)
        stored = iter([r.entity if r.HasField("entity") else None
                       for r in (self._read("Get", req, tx, ctx).results if req.keys else [])])
        response.in_order = True
        for i, ref in enumerate(request.key):
            entity = infos[i] if i in infos else next(stored)
            out = response.entity.add()
            if entity is not None:
                t.entity_out(entity, out.entity)
            else:
                out.key.CopyFrom(ref)

    def _put(self, request: Any, response: Any, ctx: CallContext) -> None:
        t = _Translator(ctx.app_id, request.entity[0].key.app if request.entity else "")
        req = pb.PutRequest()
        for i, e in enumerate(request.entity):
            t.entity_in(e, f"entity[{i}]", out=req.entities.add())
        entities = list(req.entities)
        if request.HasField("transaction"):
            tx = self._transaction(request.transaction, ctx)
            self._complete_keys(entities, ctx)
            with self._lock:
                for entity in entities:
                    _buffer(tx, entity.key, pb.Mutation(upsert=entity))
            keys = [e.key for e in entities]
        elif entities:
            keys = list(self._call("Put", req, ctx).keys)
        else:
            keys = []
        for sent, key in zip(request.entity, keys):
            if sent.key.app != t.spelling:  # keys go back spelt as each was sent
                t = _Translator(ctx.app_id, sent.key.app)
            t.key_out(key, response.key.add())

    def _read(self, method: str, request: Any, tx: _Transaction | None, ctx: CallContext) -> Any:
        """A read, in ``tx`` if there is one; once ``tx`` is lost, the latest data (see the module docstring)."""
        if tx is None:
            return self._call(method, request, ctx)
        if tx.lost is None:
            request.read_options.transaction = tx.handle
            try:
                return self._call(method, request, ctx)
            except apiproxy_errors.ApplicationError as exc:
                if exc.application_error != CONCURRENT_TRANSACTION:
                    raise
                tx.lost = exc.error_detail
        request.ClearField("read_options")
        return self._call(method, request, ctx)

    def _complete_keys(self, entities: list[pb.Entity], ctx: CallContext) -> None:
        """Give incomplete keys their ids now (a transaction's Put returns final keys): one call per id space."""
        spaces: dict[bytes, list[pb.Entity]] = collections.defaultdict(list)
        for entity in entities:
            if entity.key.path[-1].WhichOneof("id_type") is None:
                space = pb.Key(partition_id=entity.key.partition_id, path=entity.key.path)
                spaces[space.SerializeToString(deterministic=True)].append(entity)
        for members in spaces.values():
            first = members[0].key
            resp = self._call("AllocateIds", pb.AllocateIdsRequest(key=first, size=len(members)), ctx)
            for offset, entity in enumerate(members):
                entity.key.path[-1].id = resp.start + offset

    def _delete(self, request: Any, response: Any, ctx: CallContext) -> None:
        t = _Translator(ctx.app_id, "")
        keys = [t.key_in(ref, f"key[{i}]") for i, ref in enumerate(request.key)]
        if request.HasField("transaction"):
            tx = self._transaction(request.transaction, ctx)
            with self._lock:
                for key in keys:
                    _buffer(tx, key, pb.Mutation(delete=key))
        elif keys:
            self._call("Delete", pb.DeleteRequest(keys=keys), ctx)

    # -- transactions

    def _begin(self, request: Any, response: Any, ctx: CallContext) -> None:
        _Translator(ctx.app_id, "").check_app(request.app, "app")
        if request.database_id:
            raise _bad(f"database_id {request.database_id!r}: kiln has one database per app")
        if request.HasField("previous_transaction"):
            # A retry names the attempt it replaces: that one is over (ndb rolled it back or it failed).
            self._transactions.drop(request.previous_transaction.handle)
        begun = self._call("BeginTransaction", pb.BeginTransactionRequest(cross_group=request.allow_multiple_eg), ctx)
        response.handle = self._transactions.add(_Transaction(begun.transaction, ctx.app_id, time.monotonic()))
        response.app = request.app or ctx.app_id

    def _commit(self, request: Any, response: Any, ctx: CallContext) -> None:
        tx = self._transaction(request, ctx, pop=True)
        if tx.lost is not None:
            self._abandon(tx, ctx)
            raise apiproxy_errors.ApplicationError(CONCURRENT_TRANSACTION, tx.lost)
        with self._lock:
            mutations = list(tx.mutations.values())
            tasks = list(tx.tasks)
        self._call("Commit", pb.CommitRequest(transaction=tx.handle, mutations=mutations, tasks=tasks), ctx)

    def _add_actions(self, request: Any, response: Any, ctx: CallContext) -> None:
        """Keep a transactional add's tasks (a ``TaskQueueBulkAddRequest``, checked and named) with its transaction."""
        if not request.add_request:
            return
        from kiln.sdk import taskqueue  # noqa: PLC0415 - the taskqueue module needs the SDK's taskqueue package

        first = request.add_request[0].transaction
        if any(add.transaction != first for add in request.add_request):
            raise _bad("Cannot add requests to different transactions")
        tx = self._transaction(first, ctx)
        default_host = str(ctx.environ.get("DEFAULT_VERSION_HOSTNAME", "") or "")
        tasks = [taskqueue.translate(add, default_host) for add in request.add_request]
        with self._lock:
            if len(tx.tasks) + len(tasks) > MAX_TASKS_PER_TRANSACTION:
                raise _bad(f"Too many messages, maximum allowed {MAX_TASKS_PER_TRANSACTION}")
            tx.tasks.extend(tasks)

    def _abandon(self, tx: _Transaction, ctx: CallContext) -> None:
        """Roll back a lost transaction in kiln; it can commit nothing either way, so a failure changes nothing."""
        try:
            self._call("Rollback", pb.RollbackRequest(transaction=tx.handle), ctx)
        except apiproxy_errors.ApplicationError:
            pass

    def _rollback(self, request: Any, response: Any, ctx: CallContext) -> None:
        tx = self._transaction(request, ctx, pop=True)
        self._call("Rollback", pb.RollbackRequest(transaction=tx.handle), ctx)

    # -- ids and indexes

    def _allocate_ids(self, request: Any, response: Any, ctx: CallContext) -> None:
        t = _Translator(ctx.app_id, "")
        if request.reserve:
            # kiln allocates ids from one sequence per app: reserving up to the largest given id reserves them all.
            ids = [ref.path.element[-1].id for ref in request.reserve if ref.path.element[-1].HasField("id")]
            keys = [t.key_in(ref, f"reserve[{i}]") for i, ref in enumerate(request.reserve)]
            wanted = [i for i in ids if 0 < i <= MAX_ALLOCATED_ID]
            if wanted:
                space = keys[0]
                space.path[-1].ClearField("id_type")
                self._call("AllocateIds", pb.AllocateIdsRequest(key=space, max=max(wanted)), ctx)
            response.start, response.end = 0, 0
            return
        if not request.HasField("model_key"):
            raise _bad("AllocateIds needs model_key (with size or max) or reserve")
        key = t.key_in(request.model_key, "model_key", allow_incomplete=True)
        key.path[-1].ClearField("id_type")  # the id space is the kind (and parent) of model_key
        if request.HasField("size") == request.HasField("max"):
            raise _bad("AllocateIds needs exactly one of size and max")
        req = pb.AllocateIdsRequest(key=key, size=request.size, max=request.max)
        resp = self._call("AllocateIds", req, ctx)
        response.start, response.end = resp.start, resp.end

    def _get_indices(self, request: Any, response: Any, ctx: CallContext) -> None:
        _Translator(ctx.app_id, "").check_app(request.app_id, "app_id")
        listed = self._call("ListIndexes", pb.ListIndexesRequest(), ctx).indexes
        for index in listed:
            out = response.index.add()
            out.app_id = request.app_id or ctx.app_id
            definition = out.definition
            definition.entity_type = index.kind
            definition.ancestor = index.ancestor
            for prop in index.properties:
                definition.property.add(
                    name=prop.property.name,
                    direction=2 if prop.direction == pb.PropertyOrder.DIRECTION_DESCENDING else 1)
            # kiln's indexes have no number: a stable one from the definition (App Engine's ids were opaque too).
            digest = hashlib.sha256(index.SerializeToString(deterministic=True)).digest()
            out.id = int.from_bytes(digest[:8], "big") >> 2 or 1
            out.state = _INDEX_STATES.get(index.state, 4)
            if index.error:
                out.error_message = index.error

    # -- queries

    def _run_query(self, query: Any, response: Any, ctx: CallContext) -> None:
        t = _Translator(ctx.app_id, query.app)
        t.check_app(query.app, "app")
        if query.kind == blobinfo.KIND:
            self._blob_info_query(query, t, response, ctx)
            return
        req = pb.RunQueryRequest(query=self._query_in(query, t))
        req.partition_id.namespace = query.name_space
        tx = self._transaction(query.transaction, ctx) if query.HasField("transaction") else None
        state = _Query(req, ctx.app_id, tx, query.app, query.offset, query.limit if query.HasField("limit") else None,
                       bool(query.property_name), time.monotonic())
        req.query.ClearField("offset")
        req.query.ClearField("limit")
        self._batch(state, query.count if query.HasField("count") else 0, query.compile, response, ctx, None)

    def _blob_info_query(self, query: Any, t: _Translator, response: Any, ctx: CallContext) -> None:
        """A query of ``__BlobInfo__``: answered whole, in one batch, from the blobstore service."""
        found, skipped = blobinfo.query(self._query_in(query, t), query.offset,
                                        query.limit if query.HasField("limit") else None, ctx)
        for entity in found:
            t.entity_out(entity, response.result.add(), projection=False)
        if query.keys_only:
            for result in response.result:
                result.ClearField("property")
                result.ClearField("raw_property")
        response.skipped_results = skipped
        response.keys_only = query.keys_only
        response.more_results = False

    def _next(self, request: Any, response: Any, ctx: CallContext) -> None:
        _Translator(ctx.app_id, "").check_app(request.cursor.app, "cursor.app")
        handle = request.cursor.cursor
        state = self._queries.get(handle, ctx.app_id)
        state.offset = max(state.offset, request.offset)
        self._batch(state, request.count if request.HasField("count") else 0, request.compile, response, ctx,
                    handle)

    def _delete_cursor(self, request: Any, response: Any, ctx: CallContext) -> None:
        self._queries.drop(request.cursor)

    @staticmethod
    def _query_in(query: Any, t: _Translator) -> pb.Query:
        for field, why in (("database_id", "kiln has one database per app"), ("shallow", "not supported"),
                           ("search_query", "kiln has no full-text search in queries"),
                           ("read_time_us", "kiln reads the latest data only"),
                           ("read_time_epoch_micros", "kiln reads the latest data only")):
            if query.HasField(field) and getattr(query, field):
                raise _bad(f"{field}: {why}")
        out = pb.Query(kind=query.kind, keys_only=query.keys_only, projection=list(query.property_name),
                       distinct_on=list(query.group_by_property_name))
        if query.distinct and not query.group_by_property_name:
            out.distinct_on.extend(query.property_name)
        if query.HasField("ancestor"):
            out.ancestor.CopyFrom(t.key_in(query.ancestor, "ancestor"))
        filters = [_filter_in(f, t, f"filter[{i}]") for i, f in enumerate(query.filter)]
        if len(filters) == 1:
            out.filter.CopyFrom(filters[0])
        elif filters:
            out.filter.composite_filter.op = pb.CompositeFilter.OPERATOR_AND
            out.filter.composite_filter.filters.extend(filters)
        for order in query.order:
            out.order.add(property=pb.PropertyReference(name=order.property),
                          direction=pb.PropertyOrder.DIRECTION_DESCENDING if order.direction == 2
                          else pb.PropertyOrder.DIRECTION_ASCENDING)
        if query.HasField("compiled_cursor"):
            out.start_cursor = _cursor_in(query.compiled_cursor, "compiled_cursor")
        if query.HasField("end_compiled_cursor"):
            out.end_cursor = _cursor_in(query.end_compiled_cursor, "end_compiled_cursor")
        return out

    def _batch(self, state: _Query, count: int, compile_cursors: bool, response: Any, ctx: CallContext,
               handle: int | None) -> None:
        """Run one batch of ``state``'s query into ``response``; keep or free the state for ``Next``."""
        req = pb.RunQueryRequest()
        req.CopyFrom(state.request)
        # App Engine counts with offset and limit 0 (ext.db's count()); kiln's batches stop at their limit, so the
        # results an offset passes over are fetched here as keys (or projections) and reported as skipped.
        skip_only = state.limit == 0 and state.offset > 0
        if skip_only:
            req.query.limit = state.offset
            req.query.keys_only = not state.projection
        else:
            req.query.offset = state.offset
            if state.limit is not None:
                req.query.limit = state.limit
        if count > 0:
            req.batch_size = count
        try:
            batch = self._read("RunQuery", req, state.transaction, ctx).batch
        except BaseException:
            if handle is not None:
                self._queries.drop(handle)
            raise
        results = [] if skip_only else list(batch.entity_results)
        skipped = len(batch.entity_results) if skip_only else batch.skipped_results
        state.offset = max(0, state.offset - skipped)
        if state.limit is not None:
            state.limit -= len(results)
        more = batch.more_results == pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED or (
            skip_only and batch.more_results == pb.QueryResultBatch.MORE_RESULTS_TYPE_MORE_RESULTS_AFTER_LIMIT
            and state.offset > 0)
        if state.limit == 0 and state.offset == 0:
            more = False
        end = batch.end_cursor or req.query.start_cursor
        if more and (not batch.end_cursor or batch.end_cursor == req.query.start_cursor) and not (results or skipped):
            raise apiproxy_errors.ApplicationError(TIMEOUT, "the query was not able to make progress")
        t = _Translator(state.app_id, state.spelling)
        for result in results:
            t.entity_out(result.entity, response.result.add(), projection=state.projection)
            if compile_cursors:
                _cursor_out(result.cursor, response.result_compiled_cursor.add())
        response.skipped_results = skipped
        response.keys_only = state.request.query.keys_only
        response.index_only = state.projection
        if compile_cursors:
            _cursor_out(end, response.compiled_cursor)
            if skipped and not results:
                _cursor_out(end, response.skipped_results_compiled_cursor)
        response.more_results = more
        if not more:
            if handle is not None:
                self._queries.drop(handle)
            return
        state.request.query.start_cursor = batch.end_cursor
        state.touched = time.monotonic()
        if handle is None:
            handle = self._queries.add(state)
        response.cursor.cursor = handle
        response.cursor.app = state.spelling or state.app_id


def _filter_in(f: Any, t: _Translator, what: str) -> pb.Filter:
    """One App Engine filter (``op`` and its ``property[]``) as kiln's property filter."""
    if f.op in _FILTER_NAMES:
        raise _bad(f"{what}: the {_FILTER_NAMES[f.op]} operator is not supported by kiln's datastore")
    if f.HasField("geo_region"):
        raise _bad(f"{what}: geo_region filters are not supported by kiln's datastore")
    props = list(f.property)
    if not props:
        raise _bad(f"{what}: a filter needs a property")
    name = props[0].name
    if any(p.name != name for p in props):
        raise _bad(f"{what}: the values of one filter must all name the same property")
    out = pb.PropertyFilter(property=pb.PropertyReference(name=name))
    if f.op == _IN:
        out.op = pb.PropertyFilter.OPERATOR_IN
        out.value.array_value.SetInParent()
        for i, prop in enumerate(props):
            out.value.array_value.values.append(t.value_in(prop, f"{what}.{name}[{i}]"))
    elif f.op in _FILTER_OPS:
        if len(props) != 1:
            raise _bad(f"{what}: operator {f.op} takes one value, got {len(props)}")
        out.op = _FILTER_OPS[f.op]
        out.value.CopyFrom(t.value_in(props[0], f"{what}.{name}"))
    else:
        raise _bad(f"{what}: unknown operator {f.op}")
    return pb.Filter(property_filter=out)


def _buffer(tx: _Transaction, key: pb.Key, mutation: pb.Mutation) -> None:
    path = pb.Key(partition_id=key.partition_id, path=key.path).SerializeToString(deterministic=True)
    tx.mutations.pop(path, None)
    tx.mutations[path] = mutation


__all__ = ["BAD_REQUEST", "CONCURRENT_TRANSACTION", "ERRORS", "INTERNAL_ERROR", "NEED_INDEX", "TIMEOUT", "DatastoreV3"]
