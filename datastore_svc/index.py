"""Index definitions and the index rows an entity produces.

An index is a sorted set of byte rows inside a partition named by an index id
(``idx``). Built-in indexes, which App Engine keeps for every app:

- the kind index ``K kind``: one row per entity, the encoded key path;
- the property indexes ``P kind prop A`` and ``P kind prop D``: one row per
  indexed value, ``value + path`` ascending and ``complement(value) + path``
  descending (App Engine breaks ties by key ascending in both directions).

Composite indexes come from ``index.yaml``: ``C <id>`` (plus the ancestor's
path for ``ancestor: yes`` indexes, one row per ancestor) with rows
``v1 + v2 + … + path``, one per combination of the properties' values
("exploding" indexes, as in App Engine).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping

from datastore_svc import values
from datastore_svc.keys import encode_path, escape, unescape
from kiln_platform import indexyaml
from kiln.errors import BadRequestError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

KEY_PROPERTY = "__key__"
# App Engine: "Maximum number of index entries for an entity: 20000". Its SDK counted one entry per indexed
# property value (each element of a list; ``_MAX_INDEXED_PROPERTIES`` over ``EntityProto.property``), and a
# composite index adds one entry per combination of values it indexes.
MAX_INDEX_ENTRIES = 20_000


@dataclasses.dataclass(frozen=True, slots=True)
class IndexRow:
    """One row of one index: ``row`` sorts within ``idx`` and ends with ``path``."""

    idx: bytes
    row: bytes
    path: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class IndexDef:
    """A composite index: kind, ancestor flag and ordered ``(property, descending)`` pairs."""

    kind: str
    ancestor: bool
    props: tuple[tuple[str, bool], ...]

    @property
    def id(self) -> bytes:
        """A stable 8-byte id derived from the definition itself."""
        canon = "\x00".join([self.kind, "1" if self.ancestor else "0",
                             *(f"{name}\x00{'D' if desc else 'A'}" for name, desc in self.props)])
        return hashlib.sha256(canon.encode()).digest()[:8]

    def to_json(self) -> str:
        """The definition as stored by the engines."""
        return json.dumps({"kind": self.kind, "ancestor": self.ancestor, "props": [list(p) for p in self.props]})

    @classmethod
    def from_json(cls, raw: str) -> IndexDef:
        """Invert :meth:`to_json`."""
        obj = json.loads(raw)
        return cls(obj["kind"], bool(obj["ancestor"]), tuple((str(n), bool(d)) for n, d in obj["props"]))

    def yaml(self) -> str:
        """The definition as an ``index.yaml`` entry."""
        return indexyaml.render(self.to_pb())

    def to_pb(self) -> pb.CompositeIndex:
        """The contract form."""
        return pb.CompositeIndex(kind=self.kind, ancestor=self.ancestor, properties=[
            pb.PropertyOrder(property=pb.PropertyReference(name=name),
                             direction=pb.PropertyOrder.DIRECTION_DESCENDING if desc
                             else pb.PropertyOrder.DIRECTION_ASCENDING) for name, desc in self.props])

    @classmethod
    def from_pb(cls, msg: pb.CompositeIndex, *, what: str = "index") -> IndexDef:
        """Validate and convert the contract form."""
        if not msg.kind:
            raise BadRequestError(f"{what}: kind must not be empty")
        if not msg.properties:
            raise BadRequestError(f"{what}: a composite index needs at least one property")
        props = []
        for i, order in enumerate(msg.properties):
            if not order.property.name:
                raise BadRequestError(f"{what}.properties[{i}]: name must not be empty")
            props.append((order.property.name, order.direction == pb.PropertyOrder.DIRECTION_DESCENDING))
        names = [name for name, _ in props]
        if len(set(names)) != len(names):
            raise BadRequestError(f"{what}: a property appears twice")
        return cls(msg.kind, msg.ancestor, tuple(props))


def kind_idx(kind: str) -> bytes:
    """The partition of the kind index of ``kind``."""
    return b"K" + escape(kind.encode()) + b"\x00"


def prop_idx(kind: str, prop: str, descending: bool) -> bytes:
    """The partition of a built-in property index."""
    return b"P" + escape(kind.encode()) + b"\x00" + escape(prop.encode()) + (b"\x00D" if descending else b"\x00A")


def composite_idx(defn: IndexDef, ancestor_path: bytes = b"") -> bytes:
    """The partition of a composite index (with the ancestor's path for ancestor indexes)."""
    return b"C" + defn.id + ancestor_path


def field(encoded: bytes, descending: bool) -> bytes:
    """One value's part of an index row."""
    return values.complement(encoded) if descending else encoded


def key_encoding(path: bytes) -> bytes:
    """The encoding of an entity's own key as an index field (its namespace is the partition's)."""
    return values.KEY + b"\x00" + path + b"\x00"


def indexed_values(entity: pb.Entity) -> dict[str, list[bytes]]:
    """Each indexed property's distinct value encodings, ascending.

    Lists index every element; embedded entities index their properties under
    dotted names (``address.city``), as App Engine's structured properties do.
    """
    out: dict[str, set[bytes]] = {}
    _collect(entity.properties, "", out)
    return {name: sorted(encs) for name, encs in out.items()}


def _collect(props: Mapping[str, pb.Value], prefix: str, out: dict[str, set[bytes]]) -> None:
    for name, value in props.items():
        full = prefix + name
        if _indexed_empty_list(value):
            out.setdefault(full, set()).add(values.NULL)
            continue
        items: Iterable[pb.Value] = value.array_value.values if value.HasField("array_value") else (value,)
        for item in items:
            if item.HasField("entity_value"):
                if not item.exclude_from_indexes:
                    _collect(item.entity_value.properties, full + ".", out)
            elif values.is_indexable(item):
                out.setdefault(full, set()).add(values.encode(item))


def _indexed_empty_list(value: pb.Value) -> bool:
    """Whether ``value`` is an indexed empty list, which App Engine indexes as one null: its SDK writes an empty list
    as a null property (meaning ``EMPTY_LIST``), and Google's datastore stub finds it with ``= None``."""
    return value.HasField("array_value") and not value.array_value.values and not value.exclude_from_indexes


def indexed_value_count(props: Mapping[str, pb.Value]) -> int:
    """How many indexed values ``props`` hold, counted as App Engine did: every element of a list, duplicates
    too, and the properties of indexed embedded entities."""
    count = 0
    for value in props.values():
        if _indexed_empty_list(value):
            count += 1
            continue
        items: Iterable[pb.Value] = value.array_value.values if value.HasField("array_value") else (value,)
        for item in items:
            if item.HasField("entity_value"):
                if not item.exclude_from_indexes:
                    count += indexed_value_count(item.entity_value.properties)
            elif values.is_indexable(item):
                count += 1
    return count


def _key_text(key: pb.Key) -> str:
    return "/".join(f"{e.kind}({e.id if e.WhichOneof('id_type') == 'id' else repr(e.name)})" for e in key.path)


def _too_many(key: pb.Key, built_in: int, composite: int, detail: str = "") -> BadRequestError:
    return BadRequestError(
        f"Too many indexed properties for entity {_key_text(key)}: {built_in} indexed values and {composite} "
        f"composite index entries{detail}; the limit is {MAX_INDEX_ENTRIES} index entries (exclude values "
        "from indexes or index fewer list values)")


def _ancestor_paths(key: pb.Key) -> list[bytes]:
    return [encode_path(key.path[:n]) for n in range(1, len(key.path) + 1)]


class Indexer:
    """Computes every index row of an entity for one app's set of composite indexes."""

    def __init__(self, composites: Iterable[IndexDef] = ()) -> None:
        self.composites = tuple(composites)

    def rows(self, entity: pb.Entity, *, check_limit: bool = False) -> set[IndexRow]:
        """All index rows of ``entity`` (built-in and composite).

        Args:
            check_limit: refuse an entity past App Engine's :data:`MAX_INDEX_ENTRIES` (entities being
                written); rows of stored entities are computed without it, so that entities written under
                another index set can still be overwritten and deleted.

        Raises:
            BadRequestError: over the limit; and always, a composite index whose combinations alone pass it
                (an exploding index, never expanded).
        """
        built_in = indexed_value_count(entity.properties)
        if check_limit and built_in > MAX_INDEX_ENTRIES:
            raise _too_many(entity.key, built_in, 0)
        kind = entity.key.path[-1].kind
        path = encode_path(entity.key.path)
        vals = indexed_values(entity)
        out = {IndexRow(kind_idx(kind), path, path)}
        for name, encs in vals.items():
            asc, desc = prop_idx(kind, name, False), prop_idx(kind, name, True)
            for enc in encs:
                out.add(IndexRow(asc, enc + path, path))
                out.add(IndexRow(desc, values.complement(enc) + path, path))
        composite = 0
        for defn in self.composites:
            if defn.kind == kind:
                rows = self._composite(defn, entity.key, path, vals, built_in if check_limit else 0, composite)
                composite += len(rows)
                out.update(rows)
        return out

    @staticmethod
    def _composite(defn: IndexDef, key: pb.Key, path: bytes, vals: dict[str, list[bytes]],
                   built_in: int, composite: int) -> list[IndexRow]:
        columns = []
        for name, desc in defn.props:
            if name == KEY_PROPERTY:
                columns.append([field(key_encoding(path), desc)])
                continue
            encs = vals.get(name)
            if not encs:
                return []  # an entity without the property is not in the index
            columns.append([field(enc, desc) for enc in encs])
        combos = 1
        for col in columns:
            combos *= len(col)
        ancestors = _ancestor_paths(key) if defn.ancestor else [b""]
        if built_in + composite + combos * len(ancestors) > MAX_INDEX_ENTRIES:
            names = ", ".join(name for name, _ in defn.props)
            raise _too_many(key, built_in, composite + combos * len(ancestors),
                            f" (the index on {defn.kind}: {names} explodes into {combos * len(ancestors)})")
        rows = []
        for anc in ancestors:
            idx = composite_idx(defn, anc)
            for combo in itertools.product(*columns):
                rows.append(IndexRow(idx, b"".join(combo) + path, path))
        return rows


def metadata_of(rows: Iterable[IndexRow]) -> set[tuple[str, str, bytes]]:
    """``(kind, property, value class)`` facts the rows show; property "" (and class b"") marks a kind."""
    out: set[tuple[str, str, bytes]] = set()
    for row in rows:
        tag = row.idx[:1]
        if tag == b"K":
            out.add((unescape(row.idx[1:-1]).decode(), "", b""))
        elif tag == b"P" and row.idx.endswith(b"\x00A"):
            kind_end = row.idx.index(b"\x00", 1)
            out.add((unescape(row.idx[1:kind_end]).decode(), unescape(row.idx[kind_end + 1:-2]).decode(),
                     values.value_class(row.row)))
    return out
