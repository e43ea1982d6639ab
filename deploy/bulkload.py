"""Bulk loading: CSV rows into entities of a kind and back, the way App Engine's bulkloader did.

**Mapping** — which column becomes which property, of which type — is a small
YAML file::

    kind: Greeting                 # or --kind
    key: id                        # optional: the column holding each entity's key name (or id, key_type: int)
    key_type: str
    properties:
    - column: author
      type: str                    # str text int float bool datetime date bytes (base64)
    - column: written
      property: date               # the property name, when it differs from the column
      type: datetime
      required: true               # an empty cell rejects the row (else it stores None)
    - column: body
      type: text                   # long text, not indexed
      indexed: false

or a Python file defining ``properties`` (column -> type or a function that
turns the cell's text into the value) and optionally ``kind`` and ``key``.

**Loading** is batched (``Put`` of up to 500 entities) and resumable: progress
is kept beside the CSV in ``CSV.kiln-bulkload-KIND``. Before each batch is
written its ids are allocated and recorded, so a batch interrupted by a crash
is written again with the same keys on the next run — every row becomes
exactly one entity however often the load is interrupted. Rows that cannot be
converted are not loaded: each is copied to the rejects file with the reason.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime
import hashlib
import json
import pathlib
import runpy
from collections.abc import Callable, Iterator
from typing import Any

from kiln_platform import appyaml
from kiln.api import datastore_types
from kiln.errors import BadRequestError, ConfigError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

TYPES = ("str", "text", "int", "float", "bool", "datetime", "date", "bytes")
MAX_BATCH = 500
TRUE, FALSE = frozenset({"true", "1", "yes", "y", "t"}), frozenset({"false", "0", "no", "n", "f"})
UTC = datetime.timezone.utc


class RowError(ValueError):
    """A row that cannot become an entity (the message says which column and why)."""


@dataclasses.dataclass(frozen=True)
class Column:
    """One column's property."""

    column: str
    prop: str
    type: str = "str"
    indexed: bool = True
    required: bool = False
    convert: Callable[[str], Any] | None = None  # a Python mapping's own converter


@dataclasses.dataclass(frozen=True)
class Mapping:
    """A kind's mapping (see module docstring)."""

    kind: str
    columns: tuple[Column, ...]
    key: str = ""
    key_type: str = "str"

    def headers(self) -> list[str]:
        return ([self.key] if self.key else []) + [c.column for c in self.columns]


def load_mapping(path: pathlib.Path, kind: str = "") -> Mapping:
    """Read a YAML (``.yaml``/``.yml``) or Python (``.py``) mapping; ``kind`` overrides its kind."""
    if path.suffix == ".py":
        return _python_mapping(path, kind)
    data = appyaml.load_yaml(path.read_text(), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with kind, key and properties")
    unknown = set(data) - {"kind", "key", "key_type", "properties"}
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}; expected kind, key, key_type, "
                          "properties")
    props = data.get("properties")
    if not isinstance(props, list) or not props:
        raise ConfigError(f"{path}: properties must be a list of columns")
    columns = []
    for i, item in enumerate(props):
        where = f"{path}: properties[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("column"), str) or not item["column"]:
            raise ConfigError(f"{where}: needs a column name")
        extra = set(item) - {"column", "property", "type", "indexed", "required"}
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
        typ = str(item.get("type", "str"))
        if typ not in TYPES:
            raise ConfigError(f"{where}: type {typ!r} is not one of {', '.join(TYPES)}")
        columns.append(Column(item["column"], str(item.get("property") or item["column"]), typ,
                              bool(item.get("indexed", typ != "text")), bool(item.get("required", False))))
    key_type = str(data.get("key_type", "str"))
    if key_type not in ("str", "int"):
        raise ConfigError(f"{path}: key_type must be str or int")
    return _checked(Mapping(kind or str(data.get("kind") or ""), tuple(columns), str(data.get("key") or ""),
                            key_type), path)


def _python_mapping(path: pathlib.Path, kind: str) -> Mapping:
    namespace = runpy.run_path(str(path))
    props = namespace.get("properties")
    if not isinstance(props, dict) or not props:
        raise ConfigError(f"{path}: define properties = {{'column': type or function, ...}}")
    names = {str: "str", int: "int", float: "float", bool: "bool", bytes: "bytes",
             datetime.datetime: "datetime", datetime.date: "date"}
    columns = []
    for column, typ in props.items():
        if typ in names:
            columns.append(Column(column, column, names[typ]))
        elif callable(typ):
            columns.append(Column(column, column, "str", convert=typ))
        else:
            raise ConfigError(f"{path}: properties[{column!r}] must be a type or a function")
    key = namespace.get("key", "")
    return _checked(Mapping(kind or str(namespace.get("kind", "")), tuple(columns), str(key or ""),
                            "int" if namespace.get("key_type") is int else "str"), path)


def _checked(mapping: Mapping, path: pathlib.Path) -> Mapping:
    if not mapping.kind:
        raise ConfigError(f"{path}: no kind; put kind: in the mapping or pass --kind")
    props = [c.prop for c in mapping.columns]
    if len(set(props)) != len(props):
        raise ConfigError(f"{path}: two columns map to the same property")
    return mapping


def _value(col: Column, text: str) -> pb.Value:
    if col.convert is not None:
        return python_value(col.convert(text))
    t = col.type
    if t == "str":
        if len(text.encode()) > 1500 and col.indexed:
            raise RowError(f"{col.column}: longer than 1500 bytes; use type text for long strings")
        return pb.Value(string_value=text)
    if t == "text":
        return pb.Value(string_value=text, meaning=pb.MEANING_TEXT, exclude_from_indexes=True)
    if t == "int":
        try:
            number = int(text.strip())
        except ValueError:
            raise RowError(f"{col.column}: {text[:40]!r} is not an integer") from None
        if not -(2 ** 63) <= number < 2 ** 63:
            raise RowError(f"{col.column}: {text[:40]!r} does not fit in 64 bits")
        return pb.Value(integer_value=number)
    if t == "float":
        try:
            return pb.Value(double_value=float(text.strip()))
        except ValueError:
            raise RowError(f"{col.column}: {text[:40]!r} is not a number") from None
    if t == "bool":
        low = text.strip().lower()
        if low not in TRUE | FALSE:
            raise RowError(f"{col.column}: {text[:40]!r} is not a boolean (true/false, yes/no, 1/0)")
        return pb.Value(boolean_value=low in TRUE)
    if t in ("datetime", "date"):
        try:
            when = (datetime.datetime.fromisoformat(text.strip()) if t == "datetime" else
                    datetime.datetime.combine(datetime.date.fromisoformat(text.strip()), datetime.time()))
        except ValueError:
            raise RowError(f"{col.column}: {text[:40]!r} is not an ISO 8601 {t}") from None
        out = pb.Value(meaning=pb.MEANING_DATE if t == "date" else pb.MEANING_UNSPECIFIED)
        out.timestamp_value.FromDatetime(when if when.tzinfo else when.replace(tzinfo=UTC))
        return out
    try:
        return pb.Value(blob_value=base64.b64decode(text, validate=True), meaning=pb.MEANING_BLOB,
                        exclude_from_indexes=True)
    except ValueError:
        raise RowError(f"{col.column}: not base64") from None


def python_value(value: Any) -> pb.Value:
    """A Python mapping function's result as a Value (any type an App Engine app may store)."""
    try:
        return datastore_types.to_value(value)
    except datastore_types.BadValueError as exc:
        raise RowError(f"the mapping function returned an unstorable value: {exc}") from None


def to_entity(mapping: Mapping, row: dict[str, str | None], app_id: str, namespace: str) -> pb.Entity:
    """One CSV row as an entity (its key incomplete unless the mapping names a key column)."""
    entity = pb.Entity()
    entity.key.partition_id.app_id = app_id
    entity.key.partition_id.namespace = namespace
    elem = entity.key.path.add(kind=mapping.kind)
    if mapping.key:
        raw = (row.get(mapping.key) or "").strip()
        if not raw:
            raise RowError(f"{mapping.key}: the key column is empty")
        if mapping.key_type == "int":
            if not raw.isdigit() or int(raw) == 0 or int(raw) >= 2 ** 63:
                raise RowError(f"{mapping.key}: {raw[:40]!r} is not a positive 64-bit id")
            elem.id = int(raw)
        else:
            elem.name = raw
    for col in mapping.columns:
        if col.column not in row:
            raise RowError(f"{col.column}: no such column in the CSV header")
        text = row[col.column]
        if text is None:
            raise RowError("the row has fewer cells than the header")
        if text == "":
            if col.required:
                raise RowError(f"{col.column}: required, but empty")
            value = pb.Value(null_value=pb.NULL_VALUE_UNSPECIFIED)
        else:
            try:
                value = _value(col, text)
            except RowError:
                raise
            except Exception as exc:  # noqa: BLE001 - a Python mapping's function failed on this cell
                raise RowError(f"{col.column}: {exc}") from None
        if not col.indexed:
            value.exclude_from_indexes = True
        entity.properties[col.prop].CopyFrom(value)
    if None in row:
        raise RowError("the row has more cells than the header")
    return entity


def to_row(mapping: Mapping, entity: pb.Entity) -> list[str]:
    """An entity as CSV cells in the mapping's column order (the reverse of :func:`to_entity`)."""
    cells = []
    if mapping.key:
        elem = entity.key.path[-1]
        cells.append(str(elem.id) if elem.WhichOneof("id_type") == "id" else elem.name)
    for col in mapping.columns:
        v = entity.properties.get(col.prop)
        cells.append("" if v is None else _text(v, col))
    return cells


def _text(v: pb.Value, col: Column) -> str:
    kind = v.WhichOneof("value_type")
    if kind in (None, "null_value"):
        return ""
    if kind == "boolean_value":
        return "true" if v.boolean_value else "false"
    if kind == "timestamp_value":
        when = v.timestamp_value.ToDatetime(UTC)
        return when.date().isoformat() if col.type == "date" else when.isoformat()
    if kind == "blob_value":
        return base64.b64encode(v.blob_value).decode()
    if kind in ("integer_value", "double_value", "string_value"):
        return str(getattr(v, kind))
    return json.dumps(str(v))


# --- progress -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class State:
    """What a load has done: rows written, and the batch in flight with its allocated ids."""

    source: str  # fingerprint of the CSV, mapping target and app
    done_rows: int = 0
    loaded: int = 0
    rejected: int = 0
    pending_start: int = -1  # the batch in flight: rows after pending_start up to pending_end
    pending_end: int = -1
    pending_ids: list[int] = dataclasses.field(default_factory=list)
    finished: bool = False

    @classmethod
    def read(cls, path: pathlib.Path, source: str) -> State | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("source") != source:
            return None
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def write(self, path: pathlib.Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)))
        tmp.replace(path)


def fingerprint(csv_path: pathlib.Path, mapping: Mapping, app_id: str, namespace: str) -> str:
    h = hashlib.sha256()
    with open(csv_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps([app_id, namespace, mapping.kind, mapping.key, mapping.key_type,
                         [(c.column, c.prop, c.type, c.indexed, c.required) for c in mapping.columns]]).encode())
    return h.hexdigest()


def rows(csv_path: pathlib.Path, skip: int) -> Iterator[tuple[int, dict[str, str | None]]]:
    """``(row number, row)`` from the CSV's data rows (numbered from 1), after ``skip`` of them."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise BadRequestError(f"{csv_path}: empty; the first line must name the columns")
        for number, row in enumerate(reader, start=1):
            if number > skip:
                yield number, row
