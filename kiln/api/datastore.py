"""The datastore API for apps, mirroring ``google.appengine.api.datastore``.

A thin client of ``datastore_svc``: :class:`Entity` is a dict of properties
with a key; ``Put``/``Get``/``Delete``/``AllocateIds`` are single gRPC calls;
:class:`Query` is App Engine's dict of ``"property operator"`` filters that
pages through the service's result batches; ``RunInTransaction`` runs a
function in an optimistic transaction and retries it when a concurrent commit
wins. Porting an App Engine app means importing ``kiln.api.datastore`` instead
of ``google.appengine.api.datastore``.

Transactions are per thread. Inside one, ``Get`` and (ancestor) queries read
at the transaction's snapshot, while ``Put`` and ``Delete`` are buffered and
sent with the commit, so, as on App Engine, a transaction does not see its own
writes. ``Put`` of an entity with an incomplete key still returns its final
key at once: the ids are allocated before the commit.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, overload

from kiln import errors
from kiln.api import _rpc, datastore_errors
from kiln.api.datastore_errors import (
    BadArgumentError, BadFilterError, BadQueryError, BadRequestError, EntityNotFoundError, Error,
    Rollback, TransactionFailedError,
)
from kiln.api.datastore_types import (  # re-exported, as App Engine's module does
    IM, Blob, BlobKey, ByteString, Category, Email, GeoPt, Key, Link, PhoneNumber, PostalAddress,
    Rating, Text, from_value, keys_of, to_value,
)
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.datastore.v1 import datastore_pb2_grpc

__all__ = [
    "AllocateIds", "Blob", "BlobKey", "ByteString", "Category", "CreateTransactionOptions", "Cursor",
    "Delete", "Email", "Entity", "EntityNotFoundError", "Error", "Get", "GeoPt", "IM", "IsInTransaction",
    "Key", "Link", "PhoneNumber", "PostalAddress", "Put", "Query", "Rating", "RunInTransaction",
    "RunInTransactionCustomRetries", "RunInTransactionOptions", "Text", "TransactionOptions",
]

logger = logging.getLogger(__name__)

#: App Engine's default: a transaction function runs at most 1 + 3 times.
DEFAULT_TRANSACTION_RETRIES = 3
#: Upper bound of the random pause before the first retry; doubled for each further retry…
DEFAULT_RETRY_PAUSE_SECONDS = 0.01
#: …up to this bound.
DEFAULT_MAX_RETRY_PAUSE_SECONDS = 0.5
#: App Engine's limit of ids one AllocateIds call may allocate.
MAX_ID_BATCH_SIZE = 1_000_000_000

T = TypeVar("T")


def _stub() -> datastore_pb2_grpc.DatastoreServiceStub:
    return _rpc.stub("DATASTORE", datastore_pb2_grpc.DatastoreServiceStub)


def _call(method_name: str, request: Any) -> Any:
    """Call one DatastoreService method; errors come back under App Engine's names."""
    return _rpc.call(getattr(_stub(), method_name), request, table=datastore_errors.ERRORS)


class Entity(dict[str, Any]):
    """An entity: a dict of property values with a key."""

    def __init__(self, kind: str, parent: Key | Entity | None = None, _app: str | None = None,
                 name: str | None = None, id: int | None = None,  # noqa: A002 - App Engine's name
                 unindexed_properties: Iterable[str] = (), namespace: str | None = None) -> None:
        super().__init__()
        if name is not None and id is not None:
            raise BadArgumentError("give name or id, not both")
        if isinstance(parent, Entity):
            parent = parent.key()
        ident = name if name is not None else id
        self._key = Key.from_path(kind, ident, parent=parent, namespace=namespace, _app=_app)
        self._unindexed = set(unindexed_properties)

    def key(self) -> Key:
        """The entity's key; incomplete (no id) until a ``Put`` assigns one."""
        return self._key

    def kind(self) -> str:
        return self._key.kind()

    def parent(self) -> Key | None:
        return self._key.parent()

    def app(self) -> str:
        return self._key.app()

    def namespace(self) -> str:
        return self._key.namespace()

    def unindexed_properties(self) -> frozenset[str]:
        return frozenset(self._unindexed)

    def set_unindexed_properties(self, names: Iterable[str]) -> None:
        self._unindexed = set(names)

    def to_pb(self) -> pb.Entity:
        """The protobuf form, as sent to the service."""
        out = pb.Entity(key=self._key.to_pb())
        for name, value in self.items():
            out.properties[name].CopyFrom(to_value(value, indexed=name not in self._unindexed, name=name))
        return out

    @classmethod
    def from_pb(cls, entity: pb.Entity) -> Entity:
        """Build an entity from its protobuf form."""
        out = cls.__new__(cls)
        dict.__init__(out)
        out._key = Key(_pb=entity.key)
        out._unindexed = set()
        for name, value in entity.properties.items():
            out[name] = from_value(value)
            if value.exclude_from_indexes:
                out._unindexed.add(name)
        return out

    def __repr__(self) -> str:
        return f"datastore.Entity({self.kind()!r}, key={self._key!r}, {dict.__repr__(self)})"


def _keys(items: Any) -> list[Key]:
    """Keys from Keys, encoded key strings or entities."""
    return keys_of(item.key() if isinstance(item, Entity) else item for item in items)


def _path_of(key: Key) -> tuple[Any, ...]:
    """A key's identity within the caller's app (the service fills the app id in)."""
    return (key.namespace(), tuple(key.to_path()))


# -- transactions ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransactionOptions:
    """How ``RunInTransactionOptions`` runs a transaction (App Engine's ``TransactionOptions``).

    Attributes:
        xg: allow the transaction to span several entity groups (up to 25).
        retries: how many times to retry after a concurrent commit won;
            ``None`` means :data:`DEFAULT_TRANSACTION_RETRIES`.
        propagation: what to do when a transaction is already running:
            ``NESTED`` (the default) refuses, ``ALLOWED`` joins it,
            ``MANDATORY`` joins it and refuses to run without one,
            ``INDEPENDENT`` runs a separate transaction.
        deadline: accepted for compatibility; calls use the client's timeout.
    """

    NESTED = 1
    MANDATORY = 2
    ALLOWED = 3
    INDEPENDENT = 4

    xg: bool = False
    retries: int | None = None
    propagation: int | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.retries is not None and (isinstance(self.retries, bool) or not isinstance(self.retries, int)
                                         or self.retries < 0):
            raise BadArgumentError(f"retries must be a non-negative integer, got {self.retries!r}")
        if self.propagation not in (None, self.NESTED, self.MANDATORY, self.ALLOWED, self.INDEPENDENT):
            raise BadArgumentError(f"unknown propagation {self.propagation!r}")


def CreateTransactionOptions(**kwargs: Any) -> TransactionOptions:  # noqa: N802 - App Engine's name
    """``TransactionOptions(**kwargs)``, under App Engine's factory name."""
    return TransactionOptions(**kwargs)


class _Transaction:
    """One attempt of a transaction: its handle and its buffered writes."""

    def __init__(self, handle: bytes) -> None:
        self.handle = handle
        # Keyed by key path so that a later write of the same key replaces an earlier one.
        self.mutations: dict[tuple[Any, ...], pb.Mutation] = {}
        # Push tasks added in the transaction (kiln.api.taskqueue, checked by the task queue), sent with the commit.
        self.tasks: list[Any] = []

    @classmethod
    def begin(cls, *, xg: bool) -> _Transaction:
        resp = _call("BeginTransaction", pb.BeginTransactionRequest(cross_group=xg))
        return cls(resp.transaction)

    def _record(self, key: Key, mutation: pb.Mutation) -> None:
        path = _path_of(key)
        self.mutations.pop(path, None)
        self.mutations[path] = mutation

    def put(self, entities: list[Entity]) -> list[Key]:
        _complete_keys(entities)
        for entity in entities:
            self._record(entity.key(), pb.Mutation(upsert=entity.to_pb()))
        return [entity.key() for entity in entities]

    def delete(self, keys: list[Key]) -> None:
        for key in keys:
            self._record(key, pb.Mutation(delete=key.to_pb()))

    def commit(self) -> None:
        _call("Commit", pb.CommitRequest(transaction=self.handle, mutations=list(self.mutations.values()),
                                         tasks=self.tasks))

    def rollback(self) -> None:
        """Abandon the transaction; a failure is only logged (nothing was committed either way)."""
        try:
            _call("Rollback", pb.RollbackRequest(transaction=self.handle))
        except errors.KilnError as exc:
            logger.warning("datastore rollback failed (the transaction was not committed): %s", exc)


def _complete_keys(entities: list[Entity]) -> None:
    """Give each entity with an incomplete key a newly allocated id, one AllocateIds per kind and parent."""
    groups: dict[tuple[Any, ...], list[Entity]] = {}
    for entity in entities:
        key = entity.key()
        if not key.has_id_or_name():
            parent = key.parent()
            groups.setdefault((key.namespace(), key.kind(), parent and _path_of(parent)), []).append(entity)
    for members in groups.values():
        start, _ = AllocateIds(members[0].key(), size=len(members))
        for offset, entity in enumerate(members):
            complete = entity.key().to_pb()
            complete.path[-1].id = start + offset
            entity._key = Key(_pb=complete)


_local = threading.local()


def _transactions() -> list[_Transaction]:
    stack: list[_Transaction] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _current() -> _Transaction | None:
    stack = _transactions()
    return stack[-1] if stack else None


def IsInTransaction() -> bool:  # noqa: N802 - App Engine's name
    """True inside a function run by ``RunInTransaction`` (in this thread)."""
    return _current() is not None


def RunInTransaction(function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:  # noqa: N802
    """Run ``function(*args, **kwargs)`` in a transaction, retrying up to 3 times on contention.

    Returns:
        What ``function`` returned, or ``None`` when it raised ``Rollback``.

    Raises:
        TransactionFailedError: every attempt lost to a concurrent commit.
        BadRequestError: a transaction is already running in this thread.
    """
    return RunInTransactionOptions(None, function, *args, **kwargs)


def RunInTransactionCustomRetries(retries: int, function: Callable[..., T],  # noqa: N802
                                  *args: Any, **kwargs: Any) -> T | None:
    """``RunInTransaction`` with ``retries`` retries instead of the default 3."""
    return RunInTransactionOptions(TransactionOptions(retries=retries), function, *args, **kwargs)


def RunInTransactionOptions(options: TransactionOptions | None, function: Callable[..., T],  # noqa: N802
                            *args: Any, **kwargs: Any) -> T | None:
    """Run ``function(*args, **kwargs)`` in a transaction configured by ``options``.

    The function may run several times: when the commit (or a read) reports
    that a concurrent transaction won, the attempt is abandoned and the
    function runs again in a new transaction, after a short random pause so
    that competing retries spread out. Any other exception rolls the
    transaction back and propagates; ``Rollback`` rolls back and returns ``None``.

    Raises:
        TransactionFailedError: all ``1 + retries`` attempts lost to concurrent commits.
        BadRequestError: a transaction is running and ``propagation`` is ``NESTED``
            (the default), or none is and it is ``MANDATORY``.
    """
    options = options or TransactionOptions()
    retries = DEFAULT_TRANSACTION_RETRIES if options.retries is None else options.retries
    propagation = options.propagation or TransactionOptions.NESTED
    if _current() is not None:
        if propagation in (TransactionOptions.ALLOWED, TransactionOptions.MANDATORY):
            return function(*args, **kwargs)
        if propagation == TransactionOptions.NESTED:
            raise BadRequestError("nested transactions are not supported")
    elif propagation == TransactionOptions.MANDATORY:
        raise BadRequestError("the function must run inside a transaction (propagation=MANDATORY)")
    stack = _transactions()
    for attempt in range(retries + 1):
        if attempt:
            bound = min(DEFAULT_RETRY_PAUSE_SECONDS * 2 ** (attempt - 1), DEFAULT_MAX_RETRY_PAUSE_SECONDS)
            time.sleep(random.uniform(0, bound))
        tx = _Transaction.begin(xg=options.xg)
        stack.append(tx)
        try:
            result = function(*args, **kwargs)
        except Rollback:
            tx.rollback()
            return None
        except errors.ConcurrentTransactionError:
            # A read already knew this attempt cannot commit: start over.
            tx.rollback()
            continue
        except BaseException:
            tx.rollback()
            raise
        finally:
            stack.pop()
        try:
            tx.commit()
        except errors.ConcurrentTransactionError:
            continue  # the service discarded the transaction; nothing to roll back
        return result
    raise TransactionFailedError(
        f"the transaction could not be committed after {retries + 1} attempts because concurrent "
        "transactions changed the same entity groups; please try again")


# -- Put / Get / Delete / AllocateIds --------------------------------------------------------------


@overload
def Put(entities: Entity) -> Key: ...
@overload
def Put(entities: list[Entity]) -> list[Key]: ...
def Put(entities: Entity | list[Entity]) -> Key | list[Key]:  # noqa: N802 - App Engine's name
    """Store one entity or a list; returns the complete key(s) and updates each entity's key.

    Inside a transaction the write is sent with the commit, but the returned
    keys are already final.
    """
    single = isinstance(entities, Entity)
    batch: list[Entity] = [entities] if isinstance(entities, Entity) else list(entities)
    for entity in batch:
        if not isinstance(entity, Entity):
            raise BadArgumentError(f"Put takes Entity objects, got {type(entity).__name__}")
    if not batch:
        return []
    tx = _current()
    if tx is not None:
        keys = tx.put(batch)
    else:
        resp = _call("Put", pb.PutRequest(entities=[e.to_pb() for e in batch]))
        keys = [Key(_pb=k) for k in resp.keys]
        for entity, key in zip(batch, keys):
            entity._key = key
    return keys[0] if single else keys


def Get(keys: Key | str | Entity | Sequence[Key | str | Entity]) -> Any:  # noqa: N802 - App Engine's name
    """Fetch one entity (``EntityNotFoundError`` if missing) or a list (``None`` where missing)."""
    single = not isinstance(keys, (list, tuple))
    wanted = _keys([keys] if single else keys)
    if not wanted:
        return []
    req = pb.GetRequest(keys=[k.to_pb() for k in wanted])
    tx = _current()
    if tx is not None:
        req.read_options.transaction = tx.handle
    resp = _call("Get", req)
    found = [Entity.from_pb(r.entity) if r.HasField("entity") else None for r in resp.results]
    if single:
        if found[0] is None:
            raise EntityNotFoundError(f"no entity with key {wanted[0]!r}")
        return found[0]
    return found


def Delete(keys: Key | str | Entity | Sequence[Key | str | Entity]) -> None:  # noqa: N802 - App Engine's name
    """Delete one key or a list; deleting a missing key is not an error."""
    wanted = _keys(keys if isinstance(keys, (list, tuple)) else [keys])
    if not wanted:
        return
    tx = _current()
    if tx is not None:
        tx.delete(wanted)
        return
    _call("Delete", pb.DeleteRequest(keys=[k.to_pb() for k in wanted]))


def AllocateIds(model_key: Key | Entity | str, size: int | None = None,  # noqa: N802 - App Engine's name
                max: int | None = None) -> tuple[int, int]:  # noqa: A002 - App Engine's name
    """Reserve ids for the kind (and parent) of ``model_key``; returns ``(start, end)`` inclusive."""
    (key,) = _keys([model_key])
    if (size is None) == (max is None):
        raise BadArgumentError("give exactly one of size and max")
    # App Engine's client checks (the service refuses what passes the id space's end).
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_ID_BATCH_SIZE):
        raise BadArgumentError(f"size: allocate between 1 and {MAX_ID_BATCH_SIZE} ids at a time; received {size!r}")
    if max is not None and (not isinstance(max, int) or isinstance(max, bool) or not 1 <= max < 2**63):
        raise BadArgumentError(f"max: must be a positive 64-bit integer; received {max!r}")
    incomplete = key.to_pb()
    incomplete.path[-1].ClearField("id_type")
    req = pb.AllocateIdsRequest(key=incomplete, size=size or 0, max=max or 0)
    resp = _call("AllocateIds", req)
    return resp.start, resp.end


# -- cursors ---------------------------------------------------------------------------------------


class Cursor:
    """A query position: opaque bytes from the service, shown as URL-safe base64.

    ``Cursor(urlsafe=query_cursor.urlsafe())`` round-trips, so a cursor can
    travel in a URL to the next request, as App Engine's
    ``datastore_query.Cursor`` does.
    """

    __slots__ = ("_bytes",)

    def __init__(self, *, urlsafe: str | bytes | None = None, _cursor_bytes: bytes | None = None) -> None:
        if urlsafe is not None and _cursor_bytes is not None:
            raise BadArgumentError("give urlsafe or _cursor_bytes, not both")
        if urlsafe is not None:
            self._bytes = self._decode(urlsafe)
        else:
            self._bytes = bytes(_cursor_bytes or b"")

    @staticmethod
    def _decode(text: str | bytes) -> bytes:
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise datastore_errors.BadValueError("invalid cursor: not URL-safe base64") from None
        if not isinstance(text, str):
            raise datastore_errors.BadValueError(f"a cursor must be a string, got {type(text).__name__}")
        text = text.strip()
        if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
            raise datastore_errors.BadValueError(f"invalid cursor {text[:40]!r}: not URL-safe base64")
        try:
            return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
        except (binascii.Error, ValueError):
            raise datastore_errors.BadValueError(f"invalid cursor {text[:40]!r}: not URL-safe base64") from None

    @classmethod
    def from_websafe_string(cls, cursor: str | bytes) -> Cursor:
        """Parse the form :meth:`to_websafe_string` (and :meth:`urlsafe`) gives."""
        return cls(urlsafe=cursor)

    @classmethod
    def from_bytes(cls, cursor: bytes) -> Cursor:
        """Wrap the service's cursor bytes."""
        return cls(_cursor_bytes=cursor)

    def urlsafe(self) -> str:
        """URL-safe base64 without padding (safe in a query string as is)."""
        return base64.urlsafe_b64encode(self._bytes).decode("ascii").rstrip("=")

    to_websafe_string = urlsafe

    def to_bytes(self) -> bytes:
        """The service's cursor bytes."""
        return self._bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cursor) and self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"datastore.Cursor(urlsafe={self.urlsafe()!r})"


def cursor_bytes(cursor: Cursor | str | bytes | None) -> bytes:
    """The service bytes of a cursor given as a ``Cursor`` or its URL-safe string (``b""`` for none)."""
    if cursor is None:
        return b""
    if isinstance(cursor, Cursor):
        return cursor.to_bytes()
    return Cursor(urlsafe=cursor).to_bytes()


# -- query building --------------------------------------------------------------------------------

KEY_PROPERTY = "__key__"

_OPERATORS: dict[str, int] = {
    "<": pb.PropertyFilter.OPERATOR_LESS_THAN,
    "<=": pb.PropertyFilter.OPERATOR_LESS_THAN_OR_EQUAL,
    ">": pb.PropertyFilter.OPERATOR_GREATER_THAN,
    ">=": pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL,
    "=": pb.PropertyFilter.OPERATOR_EQUAL,
    "!=": pb.PropertyFilter.OPERATOR_NOT_EQUAL,
    "IN": pb.PropertyFilter.OPERATOR_IN,
}
#: Operators that make a filter an inequality (App Engine allows one such property per query).
INEQUALITY_OPERATORS = frozenset({"<", "<=", ">", ">=", "!="})
_FILTER_RE = re.compile(r"^\s*(\S+?)(?:\s+(<=|>=|==|!=|<|>|=|in))?\s*$", re.IGNORECASE)

ASCENDING = 1
DESCENDING = 2


def parse_filter(filter_string: str) -> tuple[str, str]:
    """Split ``"name op"`` (``op`` defaults to ``=``) into the property and the canonical operator.

    Raises:
        BadFilterError: not a property name followed by one of
            ``<``, ``<=``, ``>``, ``>=``, ``=``, ``==``, ``!=``, ``IN``.
    """
    if not isinstance(filter_string, str):
        raise BadFilterError(f"a filter must be a string 'property operator', got {filter_string!r}")
    match = _FILTER_RE.match(filter_string)
    # "age>" (no space) would otherwise be an equality filter on a property named "age>".
    if match is None or match.group(1)[-1] in "<>=!":
        raise BadFilterError(
            f"invalid filter {filter_string!r}: expected 'property operator' with an operator among "
            "<, <=, >, >=, =, !=, IN")
    prop, op = match.group(1), (match.group(2) or "=").upper()
    return prop, "=" if op == "==" else op


def check_filter_value(prop: str, op: str, value: Any) -> None:
    """Reject values that cannot go with ``op`` before they reach the service.

    Raises:
        BadFilterError: ``IN`` without a list, or a ``__key__`` filter on a non-key.
        BadValueError: a value of a type the datastore cannot store.
    """
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if op == "IN" and not isinstance(value, (list, tuple)):
        raise BadFilterError(f"filter {prop} IN needs a list or tuple, got {type(value).__name__}")
    if prop == KEY_PROPERTY:
        for item in items:
            if not isinstance(item, Key):
                raise BadFilterError(f"a __key__ filter needs Key values, got {type(item).__name__}")
    for item in items:
        if isinstance(item, (list, tuple)):
            raise BadFilterError(f"filter on {prop}: lists cannot contain lists")
        to_value(item, name=prop)


def _filter_pbs(prop: str, op: str, value: Any) -> list[pb.Filter]:
    """The property filters for one ``(prop, op, value)``; a list means one filter per value (AND)."""
    if op == "IN":
        array = pb.Value()
        for item in value:
            array.array_value.values.append(to_value(item, name=prop))
        values = [array]
    else:
        items = value if isinstance(value, (list, tuple)) else [value]
        values = [to_value(item, name=prop) for item in items]
    return [pb.Filter(property_filter=pb.PropertyFilter(
        property=pb.PropertyReference(name=prop), op=_OPERATORS[op], value=v)) for v in values]  # type: ignore[arg-type]


def check_query_shape(filters: Iterable[tuple[str, str, Any]], orders: Iterable[tuple[str, int]]) -> None:
    """App Engine's rules for combining filters and sort orders.

    Raises:
        BadFilterError: inequality filters on more than one property.
        BadArgumentError: an inequality filter on a property that is not the first sort order.
    """
    inequalities = []
    for prop, op, _ in filters:
        if op in INEQUALITY_OPERATORS and prop not in inequalities:
            inequalities.append(prop)
    if len(inequalities) > 1:
        raise BadFilterError(
            f"only one property per query may have inequality filters (<, <=, >, >=, !=); got "
            f"{', '.join(inequalities)}")
    orders = list(orders)
    if inequalities and orders and orders[0][0] != inequalities[0]:
        raise BadArgumentError(
            f"the first sort order must be the property of the inequality filter: expected "
            f"{inequalities[0]!r}, got {orders[0][0]!r}")


def build_query_pb(*, kind: str | None, filters: Iterable[tuple[str, str, Any]] = (),
                   orders: Iterable[tuple[str, int]] = (), ancestor: Key | None = None,
                   keys_only: bool = False, projection: Iterable[str] | None = None,
                   distinct: bool = False) -> pb.Query:
    """The structured query for App Engine-style filters ``(prop, op, value)`` and orders ``(prop, direction)``.

    Raises:
        BadFilterError, BadArgumentError: see :func:`check_query_shape`.
        BadQueryError: keys-only with a projection, or distinct without one.
    """
    filters, orders = list(filters), list(orders)
    projection = list(projection or ())
    check_query_shape(filters, orders)
    if keys_only and projection:
        raise BadQueryError("a keys-only query cannot have a projection")
    if distinct and not projection:
        raise BadQueryError("distinct needs a projection")
    query = pb.Query(kind=kind or "", keys_only=keys_only, projection=projection)
    if distinct:
        query.distinct_on.extend(projection)
    if ancestor is not None:
        query.ancestor.CopyFrom(ancestor.to_pb())
    conditions = [f for prop, op, value in filters for f in _filter_pbs(prop, op, value)]
    if len(conditions) == 1:
        query.filter.CopyFrom(conditions[0])
    elif conditions:
        query.filter.composite_filter.op = pb.CompositeFilter.OPERATOR_AND
        query.filter.composite_filter.filters.extend(conditions)
    for prop, direction in orders:
        query.order.add(property=pb.PropertyReference(name=prop),
                        direction=pb.PropertyOrder.DIRECTION_DESCENDING if direction == DESCENDING
                        else pb.PropertyOrder.DIRECTION_ASCENDING)
    return query


# -- running queries -------------------------------------------------------------------------------


class QueryIterator(Iterator[T]):
    """Results of one query run, fetched batch by batch as they are consumed.

    The first request may be a structured query or a GQL query; later
    batches continue the structured query the service returned, from the
    batch's end cursor, with the offset reduced by the results skipped and
    the limit by the results returned. :meth:`cursor` is the position after
    the last result handed out.
    """

    def __init__(self, request: pb.RunQueryRequest, convert: Callable[[pb.EntityResult], T]) -> None:
        self._request = request
        self._convert = convert
        self._results: list[pb.EntityResult] = []
        self._index = 0
        self._last_batch: pb.QueryResultBatch | None = None
        self._next: pb.RunQueryRequest | None = request
        start = request.query.start_cursor if request.WhichOneof("query_type") == "query" else b""
        self._cursor: bytes | None = start or None

    def __iter__(self) -> QueryIterator[T]:
        return self

    def __next__(self) -> T:
        while self._index >= len(self._results):
            if self._next is None:
                raise StopIteration
            self._fetch(self._next)
        result = self._results[self._index]
        self._index += 1
        last_in_batch = self._index == len(self._results)
        if result.cursor:
            self._cursor = result.cursor
        elif last_in_batch and self._last_batch is not None and self._last_batch.end_cursor:
            self._cursor = self._last_batch.end_cursor
        return self._convert(result)

    def _fetch(self, request: pb.RunQueryRequest) -> None:
        resp = _call("RunQuery", request)
        batch = resp.batch
        self._last_batch = batch
        self._results = list(batch.entity_results)
        self._index = 0
        if not batch.entity_results and batch.end_cursor:
            self._cursor = batch.end_cursor
        ran = resp.query if resp.HasField("query") else (
            request.query if request.WhichOneof("query_type") == "query" else None)
        self._next = None
        if batch.more_results != pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED:
            return
        if ran is None:
            raise datastore_errors.InternalError("the datastore did not return the query to continue a GQL query with")
        following = pb.Query()
        following.CopyFrom(ran)
        following.start_cursor = batch.end_cursor
        following.offset = max(0, following.offset - batch.skipped_results)
        if following.HasField("limit"):
            following.limit = max(0, following.limit - len(batch.entity_results))
            if following.limit == 0:
                return
        if not batch.entity_results and not batch.skipped_results and batch.end_cursor == ran.start_cursor:
            # A batch that moved nowhere would make us ask the same question forever.
            raise datastore_errors.InternalError("the datastore returned an empty batch that does not advance")
        nxt = pb.RunQueryRequest()
        nxt.CopyFrom(request)
        nxt.query.CopyFrom(following)  # also replaces a GQL query of the first request
        self._next = nxt

    def cursor(self) -> Cursor | None:
        """Where the next result would start, or ``None`` before anything has run."""
        return None if self._cursor is None else Cursor.from_bytes(self._cursor)

    def started(self) -> bool:
        """True once the first batch was fetched."""
        return self._last_batch is not None


def run_query(query: pb.Query | pb.GqlQuery, convert: Callable[[pb.EntityResult], T], *, namespace: str = "",
              batch_size: int | None = None, has_ancestor: bool | None = None) -> QueryIterator[T]:
    """Start running a structured or GQL query (in the current transaction, if any).

    Args:
        query: the query; a structured one may carry offset, limit and cursors.
        convert: turns each result into what the iterator yields.
        namespace: the namespace to query.
        batch_size: preferred results per batch (the service may return fewer).
        has_ancestor: for GQL queries, whether the query has ``ANCESTOR IS``
            (structured queries are inspected).

    Raises:
        BadRequestError: a non-ancestor query inside a transaction.
    """
    req = pb.RunQueryRequest()
    req.partition_id.namespace = namespace
    if isinstance(query, pb.GqlQuery):
        req.gql_query.CopyFrom(query)
    else:
        req.query.CopyFrom(query)
        has_ancestor = query.HasField("ancestor")
    if batch_size:
        req.batch_size = batch_size
    tx = _current()
    if tx is not None:
        if not has_ancestor:
            raise BadRequestError("only ancestor queries are allowed inside transactions")
        req.read_options.transaction = tx.handle
    return QueryIterator(req, convert)


def compile_gql(gql_query: pb.GqlQuery, *, namespace: str = "", has_ancestor: bool = False) -> pb.Query:
    """The structured query the service makes of a GQL query, to run it with cursors or another limit.

    A GQL request carries no cursors, so resuming a GQL query needs its
    structured form; this asks the service for it with a one-result run
    (the service, not the client, decides what the GQL means).
    """
    req = pb.RunQueryRequest(gql_query=gql_query, batch_size=1)
    req.partition_id.namespace = namespace
    tx = _current()
    if tx is not None:
        if not has_ancestor:
            raise BadRequestError("only ancestor queries are allowed inside transactions")
        req.read_options.transaction = tx.handle
    resp = _call("RunQuery", req)
    if not resp.HasField("query"):
        raise datastore_errors.InternalError("the datastore did not return the structured form of a GQL query")
    out = pb.Query()
    out.CopyFrom(resp.query)
    out.ClearField("start_cursor")
    out.ClearField("end_cursor")
    return out


def _entity_or_key(keys_only: bool) -> Callable[[pb.EntityResult], Any]:
    def convert(result: pb.EntityResult) -> Any:
        return Key(_pb=result.entity.key) if keys_only else Entity.from_pb(result.entity)
    return convert


class Query(dict[str, Any]):
    """A datastore query: a dict of ``"property operator"`` filters plus orders, an ancestor and options.

    ``query['age >'] = 3``, ``query['name ='] = 'x'`` (or ``query['name']``),
    ``query['tags IN'] = ['a', 'b']``, ``query['__key__ >'] = key``. A list
    value with any operator but ``IN`` makes one filter per value, all of
    which must hold.
    """

    ASCENDING = ASCENDING
    DESCENDING = DESCENDING

    def __init__(self, kind: str | None = None, filters: dict[str, Any] | None = None, _app: str | None = None,
                 keys_only: bool = False, compile: bool = True,  # noqa: A002 - App Engine's name
                 cursor: Cursor | str | None = None, namespace: str | None = None,
                 end_cursor: Cursor | str | None = None, projection: Iterable[str] | None = None,
                 distinct: bool = False) -> None:
        super().__init__()
        if kind is not None and (not isinstance(kind, str) or not kind):
            raise BadArgumentError(f"kind must be a non-empty string or None, got {kind!r}")
        projection = tuple(projection or ())
        for name in projection:
            if not isinstance(name, str) or not name:
                raise BadArgumentError(f"projection names must be non-empty strings, got {name!r}")
        if keys_only and projection:
            raise BadQueryError("a keys-only query cannot have a projection")
        if distinct and not projection:
            raise BadQueryError("distinct needs a projection")
        self._kind = kind
        self._keys_only = bool(keys_only)
        self._projection = projection
        self._distinct = bool(distinct)
        self._namespace = namespace or ""
        self._ancestor: Key | None = None
        self._orderings: list[tuple[str, int]] = []
        self._start_cursor = cursor_bytes(cursor)
        self._end_cursor = cursor_bytes(end_cursor)
        self._last_run: QueryIterator[Any] | None = None
        self.update(filters or {})

    # -- filters (validated as they are set, as App Engine does) --

    def _parsed_filters(self) -> list[tuple[str, str, Any]]:
        return [(*parse_filter(name), value) for name, value in self.items()]

    def __setitem__(self, filter_string: str, value: Any) -> None:
        prop, op = parse_filter(filter_string)
        check_filter_value(prop, op, value)
        check_query_shape([*self._parsed_filters(), (prop, op, value)], self._orderings)
        super().__setitem__(filter_string, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, filter_string: str, value: Any = None) -> Any:
        if filter_string not in self:
            self[filter_string] = value
        return self[filter_string]

    # -- the rest of the query --

    def Order(self, *orderings: str | tuple[str, int]) -> Query:  # noqa: N802 - App Engine's name
        """Sort by ``'prop'`` (ascending) or ``('prop', Query.DESCENDING)``; replaces earlier orders."""
        parsed: list[tuple[str, int]] = []
        for order in orderings:
            if isinstance(order, str):
                prop, direction = order, ASCENDING
            elif (isinstance(order, tuple) and len(order) == 2 and isinstance(order[0], str)
                  and order[1] in (ASCENDING, DESCENDING)):
                prop, direction = order
            else:
                raise BadArgumentError(
                    f"an order is 'property' or ('property', Query.ASCENDING | Query.DESCENDING), got {order!r}")
            if not prop:
                raise BadArgumentError("an order needs a property name")
            parsed.append((prop, direction))
        check_query_shape(self._parsed_filters(), parsed)
        self._orderings = parsed
        return self

    def Ancestor(self, ancestor: Key | Entity | str) -> Query:  # noqa: N802 - App Engine's name
        """Restrict results to ``ancestor`` and its descendants (strongly consistent)."""
        (key,) = _keys([ancestor])
        if not key.has_id_or_name():
            raise datastore_errors.BadKeyError("the ancestor key is incomplete")
        self._ancestor = key
        self._namespace = key.namespace()
        return self

    def IsKeysOnly(self) -> bool:  # noqa: N802 - App Engine's name
        return self._keys_only

    def _ToPb(self, *, limit: int | None = None, offset: int = 0,  # noqa: N802 - App Engine's name
              start_cursor: Cursor | str | None = None, end_cursor: Cursor | str | None = None,
              keys_only: bool | None = None) -> pb.Query:
        query = build_query_pb(
            kind=self._kind, filters=self._parsed_filters(), orders=self._orderings, ancestor=self._ancestor,
            keys_only=self._keys_only if keys_only is None else keys_only,
            projection=self._projection, distinct=self._distinct)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise BadArgumentError(f"limit must be a non-negative integer, got {limit!r}")
            query.limit = limit
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadArgumentError(f"offset must be a non-negative integer, got {offset!r}")
        query.offset = offset
        query.start_cursor = cursor_bytes(start_cursor) if start_cursor is not None else self._start_cursor
        query.end_cursor = cursor_bytes(end_cursor) if end_cursor is not None else self._end_cursor
        return query

    def Run(self, limit: int | None = None, offset: int | None = None,  # noqa: N802 - App Engine's name
            batch_size: int | None = None, start_cursor: Cursor | str | None = None,
            end_cursor: Cursor | str | None = None, prefetch_size: int | None = None,
            produce_cursors: bool = True, config: Any = None) -> QueryIterator[Any]:
        """Start the query; results (entities, or keys for keys-only queries) arrive as they are consumed.

        Args:
            limit: at most this many results (``None``: all).
            offset: skip this many results first.
            batch_size: results per round trip.
            start_cursor: resume from here instead of the query's own cursor.
            end_cursor: stop here.
            prefetch_size: the first batch's size, when ``batch_size`` is not given.
            produce_cursors: accepted for compatibility; cursors are always available.
            config: accepted for compatibility.
        """
        query = self._ToPb(limit=limit, offset=offset or 0, start_cursor=start_cursor, end_cursor=end_cursor)
        size = batch_size or prefetch_size or (limit if limit else None)
        self._last_run = run_query(query, _entity_or_key(self._keys_only), namespace=self._namespace,
                                   batch_size=size)
        return self._last_run

    def Get(self, limit: int | None, offset: int = 0, **kwargs: Any) -> list[Any]:  # noqa: N802
        """The first ``limit`` results (after ``offset``) as a list."""
        return list(self.Run(limit=limit, offset=offset, **kwargs))

    def Count(self, limit: int | None = None, **kwargs: Any) -> int:  # noqa: N802 - App Engine's name
        """How many results (up to ``limit``); counted with a keys-only query unless projected."""
        keys_only = None if self._projection else True
        query = self._ToPb(limit=limit, offset=kwargs.get("offset") or 0, keys_only=keys_only,
                           start_cursor=kwargs.get("start_cursor"), end_cursor=kwargs.get("end_cursor"))
        run = run_query(query, lambda result: None, namespace=self._namespace,
                        batch_size=kwargs.get("batch_size") or 1000)
        return sum(1 for _ in run)

    def GetCursor(self) -> Cursor:  # noqa: N802 - App Engine's name
        """The position after the last result the latest ``Run`` returned.

        Raises:
            BadQueryError: the query has not been run.
        """
        cursor = self._last_run.cursor() if self._last_run is not None else None
        if cursor is None:
            if self._last_run is not None and self._last_run.started():
                return Cursor.from_bytes(b"")
            raise BadQueryError("no cursor available: run the query first")
        return cursor

    GetCompiledCursor = GetCursor
