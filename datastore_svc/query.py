"""Query planning and execution over the engine's indexes.

A query is first normalised as App Engine does: ``IN`` and ``!=`` split it into
sub-queries (at most :data:`MAX_SUBQUERIES`); sort orders on properties with an
equality filter are dropped; an inequality filter with no sort order sorts by
its property; ``__key__`` ascending is the implicit last order; at most one
property may have inequality filters and it must be the first sort order.

Each sub-query gets a plan that yields candidates in result order, each with a
*canonical position* (``canon``): the bytes of its sort-order fields followed
by its key path. A plan can seek to the first candidate at or after any
position, so cursors are positions and resuming never re-reads what was
returned. Plans, from cheapest:

- a scan of one entity group (ancestor queries; strongly consistent);
- a kind-index scan (kind, key order, optional ``__key__`` range);
- one built-in property index (filters and/or sort on one property);
- a merge join of property indexes (several equality filters, key order);
- a composite index from ``index.yaml`` (everything else; a property with several
  equality values is scanned once per value and the scans merge-joined), or
  :class:`~kiln.errors.NeedIndexError` naming the index to add.

Every candidate is checked against the entity it names before it is returned
(index rows written after a commit may lag, as App Engine's non-ancestor
queries do), which also yields each entity once on list properties: an entity
is returned only at its first position in the index (its smallest sort values
among those matching the filters, App Engine's rule).
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
from collections.abc import Sequence
from typing import Protocol

from datastore_svc import index, indexneeds, values
from datastore_svc.engine.base import Engine
from datastore_svc.index import KEY_PROPERTY, IndexDef
from datastore_svc.keys import PREFIX_END, encode_path, group_of
from kiln.errors import BadRequestError, NeedIndexError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

MAX_SUBQUERIES = 30
PAGE = 200
FF = b"\xff"

_OPS = {
    pb.PropertyFilter.OPERATOR_LESS_THAN: "<",
    pb.PropertyFilter.OPERATOR_LESS_THAN_OR_EQUAL: "<=",
    pb.PropertyFilter.OPERATOR_GREATER_THAN: ">",
    pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL: ">=",
    pb.PropertyFilter.OPERATOR_EQUAL: "=",
    pb.PropertyFilter.OPERATOR_NOT_EQUAL: "!=",
    pb.PropertyFilter.OPERATOR_IN: "IN",
    pb.PropertyFilter.OPERATOR_HAS_ANCESTOR: "HAS_ANCESTOR",
}
INEQUALITIES = ("<", "<=", ">", ">=")


# --------------------------------------------------------------------------
# Ranges over encoded values


@dataclasses.dataclass
class Range:
    """Inequality filters on one property, as bounds on its ascending encodings."""

    bounds: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)

    def field_bounds(self, descending: bool) -> tuple[bytes, bytes]:
        """Half-open ``[lo, hi)`` on the property's index field (rows are ``field + path``)."""
        lo, hi = b"", FF
        for op, enc in self.bounds:
            tag = enc[0]
            if descending:
                cenc = values.complement(enc)
                cls_lo, cls_hi = bytes([255 - tag]), bytes([256 - tag])
                new_lo, new_hi = {">": (b"", cenc), ">=": (b"", cenc + FF), "<": (cenc + FF, FF),
                                  "<=": (cenc, FF)}[op]
            else:
                cls_lo, cls_hi = bytes([tag]), bytes([tag + 1])
                new_lo, new_hi = {">": (enc + FF, FF), ">=": (enc, FF), "<": (b"", enc),
                                  "<=": (b"", enc + FF)}[op]
            # App Engine's inequality filters match only values of the filter value's type class.
            lo, hi = max(lo, new_lo, cls_lo), min(hi, new_hi, cls_hi)
        return lo, hi

    def matches(self, enc: bytes) -> bool:
        """Whether one encoded value satisfies every bound."""
        lo, hi = self.field_bounds(False)
        return lo <= enc < hi


@dataclasses.dataclass
class KeyRange:
    """``__key__`` filters as bounds on encoded paths (an ancestor sorts before its descendants)."""

    lo: bytes = b""
    hi: bytes = FF

    def add(self, op: str, path: bytes) -> None:
        if op in ("=", ">="):
            self.lo = max(self.lo, path)
        if op in ("=", "<="):
            self.hi = min(self.hi, path + b"\x00")
        if op == ">":
            self.lo = max(self.lo, path + b"\x00")
        if op == "<":
            self.hi = min(self.hi, path)

    def contains(self, path: bytes) -> bool:
        return self.lo <= path < self.hi

    @property
    def bounded(self) -> bool:
        return self.lo != b"" or self.hi != FF


# --------------------------------------------------------------------------
# Normalised queries


@dataclasses.dataclass
class SubQuery:
    """One sub-query: only =, <, <=, >, >= filters."""

    kind: str
    ancestor: bytes | None  # encoded ancestor path
    eq: list[tuple[str, bytes]]
    ineq_prop: str | None
    ineq: Range
    keys: KeyRange
    orders: list[tuple[str, bool]]  # without the trailing __key__ ascending
    projection: tuple[str, ...]
    # The composite index App Engine requires when it keeps __key__ as an index component (indexneeds), and the
    # encoded path of a __key__ equality filter.
    key_need: indexneeds.Requirement | None = None
    key_eq: bytes | None = None

    def postfix(self) -> list[tuple[str, bool]]:
        """Index components after the equality prefix: sort orders, then other projected properties."""
        out = list(self.orders)
        named = {name for name, _ in out} | {name for name, _ in self.eq}
        out += [(name, False) for name in self.projection if name not in named]
        return out


@dataclasses.dataclass
class Normalized:
    """A validated query and its sub-queries."""

    subs: list[SubQuery]
    keys_only: bool
    projection: tuple[str, ...]
    distinct: bool


def normalize(query: pb.Query, namespace: str, app: str = "") -> Normalized:
    """Validate ``query`` and split it into sub-queries (see module docstring).

    Raises:
        BadRequestError: the query breaks one of App Engine's rules; the message names it.
    """
    kind = query.kind
    if kind.startswith("__") and kind.endswith("__"):
        raise BadRequestError(f"kind {kind!r}: metadata kinds are queried through RunQuery with no filters "
                              "other than __key__ (see the metadata section of the contract)")
    ancestor = _ancestor_path(query.ancestor, namespace) if query.HasField("ancestor") else None
    raw_filters = flatten(query.filter) if query.HasField("filter") else []
    fixed: list[tuple[str, str, pb.Value]] = []
    splits: list[list[tuple[str, str, pb.Value]]] = []
    for name, op, value in raw_filters:
        if op == "HAS_ANCESTOR":
            if name != KEY_PROPERTY or not value.HasField("key_value"):
                raise BadRequestError("HAS_ANCESTOR filters apply to __key__ and take a key")
            if ancestor is not None:
                raise BadRequestError("a query can have only one ancestor")
            ancestor = _ancestor_path(value.key_value, namespace)
        elif op == "IN":
            if not value.HasField("array_value") or not value.array_value.values:
                raise BadRequestError(f"filter {name} IN: needs a non-empty list value")
            splits.append([(name, "=", v) for v in value.array_value.values])
        elif op == "!=":
            splits.append([(name, "<", value), (name, ">", value)])
        else:
            fixed.append((name, op, value))
    combos = 1
    for alternatives in splits:
        combos *= len(alternatives)
    if combos > MAX_SUBQUERIES:
        raise BadRequestError(f"IN and != filters expand to {combos} sub-queries; at most {MAX_SUBQUERIES} allowed")
    projection = tuple(query.projection)
    distinct = bool(query.distinct_on)
    _check_projection(query, projection)
    orders = [(o.property.name, o.direction == pb.PropertyOrder.DIRECTION_DESCENDING) for o in query.order]
    for name, _, value in raw_filters:
        if value.HasField("key_value") and value.key_value.partition_id.app_id not in ("", app):
            raise BadRequestError(f"filter on {name!r}: the key belongs to another app")
    subs = [_sub(kind, ancestor, fixed + list(choice), orders, projection, namespace, distinct)
            for choice in itertools.product(*splits)]
    if distinct:
        for name, _ in subs[0].orders:
            if name != KEY_PROPERTY and name not in projection:
                raise BadRequestError(f"order {name}: a distinct query may only sort by projected properties")
    return Normalized(subs, query.keys_only, projection, distinct)


def _check_projection(query: pb.Query, projection: tuple[str, ...]) -> None:
    if query.distinct_on and set(query.distinct_on) != set(projection):
        raise BadRequestError("distinct_on must name exactly the projected properties (App Engine's distinct)")
    if projection and query.keys_only:
        raise BadRequestError("a query cannot be both keys-only and a projection")
    if len(set(projection)) != len(projection):
        raise BadRequestError("projection: a property is named twice")
    for name in projection:
        if name == KEY_PROPERTY or not name:
            raise BadRequestError(f"projection: cannot project {name!r}; use keys_only for keys")


def _ancestor_path(key: pb.Key, namespace: str) -> bytes:
    if key.partition_id.namespace != namespace:
        raise BadRequestError("ancestor: its namespace must equal the query's namespace")
    if not key.path or any(e.WhichOneof("id_type") is None for e in key.path):
        raise BadRequestError("ancestor: must be a complete key")
    return encode_path(key.path)


def flatten(filt: pb.Filter) -> list[tuple[str, str, pb.Value]]:
    which = filt.WhichOneof("filter_type")
    if which == "composite_filter":
        if filt.composite_filter.op != pb.CompositeFilter.OPERATOR_AND:
            raise BadRequestError("composite filters support only AND")
        return [f for inner in filt.composite_filter.filters for f in flatten(inner)]
    if which == "property_filter":
        pf = filt.property_filter
        op = _OPS.get(pf.op)
        if op is None:
            raise BadRequestError(f"filter on {pf.property.name!r}: operator is not set")
        if not pf.property.name:
            raise BadRequestError("filter: property name must not be empty")
        if not pf.HasField("value"):
            raise BadRequestError(f"filter on {pf.property.name!r}: value is not set")
        return [(pf.property.name, op, pf.value)]
    raise BadRequestError("filter: neither a composite nor a property filter")


def _sub(kind: str, ancestor: bytes | None, filters: list[tuple[str, str, pb.Value]],
         orders: list[tuple[str, bool]], projection: tuple[str, ...], namespace: str,
         distinct: bool = False) -> SubQuery:
    eq: list[tuple[str, bytes]] = []
    ineq = Range()
    ineq_prop: str | None = None
    keys = KeyRange()
    key_eq: bytes | None = None
    for name, op, value in filters:
        if name == KEY_PROPERTY:
            if not value.HasField("key_value"):
                raise BadRequestError("__key__ filters take key values")
            key = value.key_value
            if key.partition_id.namespace != namespace:
                raise BadRequestError("__key__ filter: the key's namespace must equal the query's namespace")
            if not key.path or any(e.WhichOneof("id_type") is None for e in key.path):
                raise BadRequestError("__key__ filter: the key must be complete")
            if kind and key.path[-1].kind != kind and op == "=":
                keys.add("<", b"")  # a key of another kind matches nothing
            keys.add(op, encode_path(key.path))
            if op == "=":
                key_eq = encode_path(key.path)
            if op in INEQUALITIES:
                ineq_prop = _one_inequality(ineq_prop, KEY_PROPERTY)
            continue
        if not kind:
            raise BadRequestError(f"filter on {name!r}: kindless queries can only filter on __key__")
        enc = _encode_filter_value(name, value)
        if op == "=":
            eq.append((name, enc))
        else:
            ineq_prop = _one_inequality(ineq_prop, name)
            ineq.bounds.append((op, enc))
    eq_names = {name for name, _ in eq}
    if projection:
        both = eq_names & set(projection)
        if both:
            raise BadRequestError(f"projection: cannot project {sorted(both)[0]!r}, which has an equality filter")
    normalized: list[tuple[str, bool]] = []
    for name, desc in orders:
        if not name:
            raise BadRequestError("order: property name must not be empty")
        if name in eq_names or any(n == name for n, _ in normalized):
            continue
        normalized.append((name, desc))
        if name == KEY_PROPERTY:
            break  # keys are unique: later orders cannot matter
    if key_eq is not None and ineq_prop != KEY_PROPERTY:
        # An equality filter on __key__ leaves at most one result: no order matters (App Engine's rule; with an
        # inequality on __key__ too, the equality does not count and the orders are checked as usual).
        normalized = []
    if ineq_prop is not None:
        if not normalized:
            normalized = [(ineq_prop, False)]
        elif normalized[0][0] != ineq_prop:
            raise BadRequestError(f"the first sort order must be on {ineq_prop!r}, the property of the "
                                  "inequality filter (App Engine's rule)")
    if normalized and normalized[-1] == (KEY_PROPERTY, False):
        normalized.pop()
    if not kind and normalized:
        raise BadRequestError("kindless queries can only be sorted by __key__ ascending")
    if ineq_prop == KEY_PROPERTY and normalized == [(KEY_PROPERTY, False)]:
        normalized = []
    need = indexneeds.requirement(kind, ancestor is not None, [(name, op) for name, op, _ in filters], orders,
                                  projection, distinct)
    return SubQuery(kind, ancestor, eq, None if ineq_prop == KEY_PROPERTY else ineq_prop, ineq, keys,
                    normalized, projection, need if need is not None and need.names_key else None, key_eq)


def _one_inequality(current: str | None, name: str) -> str:
    if current is not None and current != name:
        raise BadRequestError(f"inequality filters on {current!r} and {name!r}: App Engine allows inequality "
                              "filters on only one property per query")
    return name


def _encode_filter_value(name: str, value: pb.Value) -> bytes:
    if value.HasField("array_value") or value.HasField("entity_value"):
        raise BadRequestError(f"filter on {name!r}: lists only go with IN, and embedded entities cannot be filtered")
    if value.WhichOneof("value_type") is None:
        raise BadRequestError(f"filter on {name!r}: value has no type set")
    return values.encode(value)


# --------------------------------------------------------------------------
# Plans


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """A candidate: its position, key path, index row and (for group scans) the entity."""

    canon: bytes
    path: bytes
    row: bytes
    entity: bytes | None = None


class Plan(Protocol):
    """Candidates in result order."""

    async def seek(self, target: bytes) -> Item | None:
        """The first candidate whose ``canon >= target``, or ``None``."""
        ...


class _PagedStream(abc.ABC):
    """Reads a sorted range in pages; seeks only move forward, so a page is reused until passed."""

    def __init__(self, lo: bytes, hi: bytes) -> None:
        self._lo, self._hi = lo, hi
        self._buf: list[Item] = []
        self._pos = 0
        self._from: bytes | None = None  # the buffer holds every row in [_from, last row]
        self._complete = False  # ... and in [_from, hi) when set

    @abc.abstractmethod
    async def _fetch(self, lo: bytes, hi: bytes) -> list[Item]:
        """Up to a page of items with ``lo <= row < hi``, in order."""

    def _key(self, target: bytes) -> bytes:
        return target

    async def seek(self, target: bytes) -> Item | None:
        want = max(self._lo, self._key(target))
        if want >= self._hi:
            return None
        if self._from is not None and self._from <= want:
            while self._pos < len(self._buf) and self._buf[self._pos].row < want:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if self._complete:
                return None
        self._buf = await self._fetch(want, self._hi)
        self._pos, self._from, self._complete = 0, want, len(self._buf) < PAGE
        return self._buf[0] if self._buf else None


class _IndexStream(_PagedStream):
    """Rows of one index partition; ``row = prefix + canon``."""

    def __init__(self, engine: Engine, app: str, ns: str, idx: bytes, prefix: bytes, lo: bytes, hi: bytes) -> None:
        super().__init__(lo, hi)
        self._engine, self._app, self._ns, self._idx, self._prefix = engine, app, ns, idx, prefix

    def _key(self, target: bytes) -> bytes:
        return self._prefix + target

    async def _fetch(self, lo: bytes, hi: bytes) -> list[Item]:
        rows = await self._engine.scan_index(self._app, self._ns, self._idx, lo, hi, PAGE)
        cut = len(self._prefix)
        return [Item(row[cut:], path, row) for row, path in rows]


class _GroupStream(_PagedStream):
    """Entities of one group under an ancestor path, in key order."""

    def __init__(self, engine: Engine, app: str, ns: str, ancestor: bytes, keys: KeyRange) -> None:
        super().__init__(max(ancestor, keys.lo), min(ancestor + PREFIX_END, keys.hi))
        self._engine, self._app, self._ns = engine, app, ns
        self._group = group_of(ancestor)

    async def _fetch(self, lo: bytes, hi: bytes) -> list[Item]:
        rows = await self._engine.scan_group(self._app, self._ns, self._group, lo, hi, PAGE)
        return [Item(path, path, path, blob) for path, _, blob in rows]


class _Union:
    """The smallest next candidate of several plans (several kinds, or IN/!= sub-queries)."""

    def __init__(self, plans: Sequence[Plan]) -> None:
        self._plans = list(plans)

    async def seek(self, target: bytes) -> Item | None:
        heads = [item for item in [await p.seek(target) for p in self._plans] if item is not None]
        return min(heads, key=lambda item: item.canon) if heads else None


class _MergeJoin:
    """Paths present in every stream (each ordered by path): App Engine's zigzag merge join."""

    def __init__(self, streams: Sequence[Plan]) -> None:
        self._streams = list(streams)

    async def seek(self, target: bytes) -> Item | None:
        while True:
            first = await self._streams[0].seek(target)
            if first is None:
                return None
            target = first.canon
            for stream in self._streams[1:]:
                other = await stream.seek(target)
                if other is None:
                    return None
                if other.canon != target:
                    target = other.canon
                    break
            else:
                return first


@dataclasses.dataclass
class Planned:
    """A sub-query's plan and what checking and decoding its candidates needs."""

    sub: SubQuery
    plan: Plan
    components: list[tuple[str, bool]]  # fields of canon before the path (name, descending)
    index_rows_idx: bytes | None = None  # the index partition scanned (projection checks)
    composite: IndexDef | None = None


def choose(sub: SubQuery, engine: Engine, app: str, ns: str, serving: Sequence[IndexDef],
           kinds: Sequence[str]) -> Planned:
    """Pick the plan for one sub-query (see module docstring).

    Raises:
        NeedIndexError: only a composite index that is not declared (or not built) would serve it.
    """
    if sub.key_need is not None:
        if not indexneeds.satisfied(sub.key_need, serving):
            raise NeedIndexError("this query needs a composite index; add it to index.yaml:\n\nindexes:\n"
                                 f"{needed_index(sub).yaml()}")
        planned = _key_composite(sub, engine, app, ns, serving)
        if planned is not None:
            return planned
    postfix = sub.postfix()
    key_order_only = not postfix and sub.ineq_prop is None
    if sub.ancestor is not None and key_order_only:
        return Planned(sub, _GroupStream(engine, app, ns, sub.ancestor, sub.keys), [])
    if sub.ancestor is None and key_order_only:
        if not sub.eq:
            if sub.kind:
                return Planned(sub, _kind_stream(engine, app, ns, sub.kind, sub.keys), [])
            return Planned(sub, _Union([_kind_stream(engine, app, ns, k, sub.keys) for k in kinds]), [])
        streams: list[Plan] = []
        for name, enc in sub.eq:
            prefix = enc
            streams.append(_IndexStream(engine, app, ns, index.prop_idx(sub.kind, name, False), prefix,
                                        prefix + sub.keys.lo, prefix + sub.keys.hi))
        return Planned(sub, streams[0] if len(streams) == 1 else _MergeJoin(streams), [])
    if sub.ancestor is None and not sub.eq and len(postfix) == 1 and postfix[0][0] != KEY_PROPERTY:
        name, desc = postfix[0]
        lo, hi = sub.ineq.field_bounds(desc) if sub.ineq_prop == name else (b"", FF)
        idx = index.prop_idx(sub.kind, name, desc)
        return Planned(sub, _IndexStream(engine, app, ns, idx, b"", lo, hi), postfix, idx)
    return _composite(sub, engine, app, ns, serving, postfix)


def _kind_stream(engine: Engine, app: str, ns: str, kind: str, keys: KeyRange) -> Plan:
    return _IndexStream(engine, app, ns, index.kind_idx(kind), b"", keys.lo, keys.hi)


def _composite(sub: SubQuery, engine: Engine, app: str, ns: str, serving: Sequence[IndexDef],
               postfix: list[tuple[str, bool]]) -> Planned:
    eq_values = _eq_values(sub)
    if not sub.kind:
        raise BadRequestError("kindless queries cannot use composite indexes")
    for defn in serving:
        if (defn.kind != sub.kind or defn.ancestor != (sub.ancestor is not None)
                or len(defn.props) != len(eq_values) + len(postfix)):
            continue
        head, tail = defn.props[:len(eq_values)], list(defn.props[len(eq_values):])
        if {name for name, _ in head} != set(eq_values) or tail != postfix:
            continue
        idx = index.composite_idx(defn, sub.ancestor or b"")
        return Planned(sub, _prefix_join(sub, engine, app, ns, idx, head, eq_values, postfix), postfix, idx, defn)
    raise NeedIndexError("this query needs a composite index; add it to index.yaml:\n\nindexes:\n"
                         f"{needed_index(sub).yaml()}")


def _eq_values(sub: SubQuery) -> dict[str, list[bytes]]:
    """The equality filters' values by property, each property once, in the query's order."""
    out: dict[str, list[bytes]] = {}
    for name, enc in sub.eq:
        if enc not in out.setdefault(name, []):
            out[name].append(enc)
    return out


def _prefix_join(sub: SubQuery, engine: Engine, app: str, ns: str, idx: bytes, head: Sequence[tuple[str, bool]],
                 eq_values: dict[str, list[bytes]], tail: Sequence[tuple[str, bool]]) -> Plan:
    """The rows of a composite index under the equality prefix ``head``; where a property has several equality
    values, the index is scanned once per value and the scans merge-joined on position (App Engine's zigzag join
    over one index), so only entities with every value are candidates."""
    first = {name: encs[0] for name, encs in eq_values.items()}
    prefixes = [first] + [first | {name: enc} for name, encs in eq_values.items() for enc in encs[1:]]
    streams: list[Plan] = []
    for values_by_name in prefixes:
        prefix = b"".join(index.field(values_by_name[name], desc) for name, desc in head)
        lo, hi = prefix, prefix + FF
        if sub.ineq_prop is not None and tail and tail[0][0] == sub.ineq_prop:
            flo, fhi = sub.ineq.field_bounds(tail[0][1])
            lo, hi = prefix + flo, prefix + fhi
        streams.append(_IndexStream(engine, app, ns, idx, prefix, lo, hi))
    return streams[0] if len(streams) == 1 else _MergeJoin(streams)


def _key_composite(sub: SubQuery, engine: Engine, app: str, ns: str,
                   serving: Sequence[IndexDef]) -> Planned | None:
    """A plan on one declared index that has ``__key__`` among its components, as App Engine requires for
    ``sub`` (``sub.key_need``); ``None`` when only several indexes together satisfy it."""
    need = sub.key_need
    assert need is not None
    for defn in serving:
        if defn.kind != sub.kind or defn.ancestor != (sub.ancestor is not None):
            continue
        head = indexneeds.match_postfix(need, defn.props)
        if head is None or {name for name, _ in head} != need.prefix:
            continue
        eq_values = _eq_values(sub)
        if sub.key_eq is not None:
            eq_values[KEY_PROPERTY] = [index.key_encoding(sub.key_eq)]
        if any(name not in eq_values for name, _ in head):
            continue
        eq_values = {name: eq_values[name] for name, _ in head}
        tail = list(defn.props[len(head):])
        idx = index.composite_idx(defn, sub.ancestor or b"")
        return Planned(sub, _prefix_join(sub, engine, app, ns, idx, head, eq_values, tail), tail, idx, defn)
    return None


def needed_index(sub: SubQuery) -> IndexDef:
    """The composite index App Engine would ask for: equality properties, then sort orders (or, where App Engine
    keeps ``__key__`` as a component, its own choice: :mod:`datastore_svc.indexneeds`)."""
    if sub.key_need is not None:
        return indexneeds.recommended(sub.key_need)
    return IndexDef(sub.kind, sub.ancestor is not None,
                    tuple((name, False) for name in _eq_values(sub)) + tuple(sub.postfix()))



# --------------------------------------------------------------------------
# Checking candidates


def check(planned: Planned, item: Item, entity: pb.Entity, projection: bool) -> bool:
    """Whether ``entity`` (fetched for ``item``) really is this result at this position."""
    sub = planned.sub
    if sub.kind and entity.key.path[-1].kind != sub.kind:
        return False
    if sub.ancestor is not None and not item.path.startswith(sub.ancestor):
        return False
    if not sub.keys.contains(item.path):
        return False
    vals = index.indexed_values(entity)
    for name, enc in sub.eq:
        if enc not in vals.get(name, ()):
            return False
    if sub.ineq_prop is not None and not any(sub.ineq.matches(e) for e in vals.get(sub.ineq_prop, ())):
        return False
    if projection:
        return item.row in {r.row for r in _rows_in(planned, entity)}
    return canon_of(planned, item.path, vals) == item.canon


def canon_of(planned: Planned, path: bytes, vals: dict[str, list[bytes]]) -> bytes | None:
    """An entity's position: per component its first field in index order among matching values."""
    parts = []
    for name, desc in planned.components:
        if name == KEY_PROPERTY:
            parts.append(index.field(index.key_encoding(path), desc))
            continue
        encs = vals.get(name, ())
        if planned.sub.ineq_prop == name:
            encs = [e for e in encs if planned.sub.ineq.matches(e)]
        if not encs:
            return None
        parts.append(min(index.field(e, desc) for e in encs))
    return b"".join(parts) + path


def _rows_in(planned: Planned, entity: pb.Entity) -> list[index.IndexRow]:
    indexer = index.Indexer([planned.composite] if planned.composite else [])
    return [r for r in indexer.rows(entity) if r.idx == planned.index_rows_idx]


def projected(planned: Planned, item: Item, key: pb.Key) -> pb.Entity:
    """The projection result for ``item``: the key and the projected values decoded from the row."""
    out = pb.Entity(key=key)
    raw = item.canon
    pos = 0
    for name, desc in planned.components:
        length = _field_length(raw, pos, desc)
        field = raw[pos:pos + length]
        pos += length
        if name == KEY_PROPERTY or name not in planned.sub.projection:
            continue
        value, _ = values.decode(values.complement(field) if desc else field, app_id=key.partition_id.app_id)
        out.properties[name].CopyFrom(value)
    return out


def _field_length(raw: bytes, pos: int, desc: bool) -> int:
    # Decoding the ascending form tells where the field ends.
    chunk = values.complement(raw[pos:]) if desc else raw[pos:]
    _, end = values.decode(chunk)
    return end


def distinct_key(planned: Planned, item: Item) -> bytes:
    """The canon without the path: equal for results with equal projected values."""
    pos = 0
    for _, desc in planned.components:
        pos += _field_length(item.canon, pos, desc)
    return item.canon[:pos]
