"""The entity form: datastore values as typed form fields, and the fields a browser sends back as values.

Pure functions (no I/O; ``tests/unit/test_console_forms.py``). A property the form can write is a :class:`Field`
with a type from :data:`TYPES` (or ``list:<type>``) and a text; one it cannot (an embedded entity, a mixed list,
a string with a meaning such as Email or Link, a key in another namespace) is shown as it is and kept as it is.
Every text is checked here: a wrong one gives a :class:`Field` ``error`` naming what was expected, and nothing is
written. A field sent back exactly as it was shown keeps its stored value (and its meaning) untouched.
"""

from __future__ import annotations

import ast
import base64
import binascii
import dataclasses
import datetime
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence

from console import values
from kiln.pb.datastore.v1 import datastore_pb2 as pb

# The types a field may have, in the order the form offers them: (form name, label).
TYPES = (("string", "String"), ("text", "Text (long, unindexed)"), ("integer", "Integer"), ("float", "Float"),
         ("boolean", "Boolean"), ("datetime", "DateTime"), ("key", "Key"), ("bytes", "Bytes (base64)"),
         ("geopt", "GeoPt"), ("user", "User"), ("null", "Null"))
LIST = "list:"  # a list field's type is this prefix and its items' type; its text is a JSON array
LIST_ITEM_TYPES = ("string", "integer", "float", "boolean", "datetime", "key", "geopt", "user")
MAX_ROWS = 200  # fields a form may send
MAX_NAME_BYTES = 1500
INT64 = (-(2 ** 63), 2 ** 63 - 1)

_NAMES = dict(TYPES) | {LIST + t: "List of " + dict(TYPES)[t] for t in LIST_ITEM_TYPES}
_USER = re.compile(r"(?P<email>[^\s()]+@[^\s()]+)(?: \((?P<domain>[^()]+)\))?")
_KEY_SEPARATOR = re.compile(r"\s*>\s*")
_KEY_ELEMENT = re.compile(r"(?P<kind>[^:>\s][^:>]*):(?P<id>-?\d+|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")
_PLAIN_MEANINGS = (pb.MEANING_UNSPECIFIED,)


class FieldError(ValueError):
    """A field's text is not a value of its type (the message says what was expected)."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One row of the form: a property's name, type and text; ``type`` is "" for a value kept as it is."""

    name: str
    type: str = "string"
    text: str = ""
    indexed: bool = True
    new: bool = False  # a row for a property the entity does not have yet (its name is editable)
    error: str = ""
    shown: values.Shown | None = None  # a kept value, laid out for reading
    remove: bool = False  # marked for removal (shown again so when another field is wrong the mark stays)


def type_options() -> list[tuple[str, str]]:
    """Every type a field may have: (form name, label)."""
    return list(_NAMES.items())


def fingerprint(entity: pb.Entity) -> str:
    """What the form remembers of the entity it shows: a later save compares it with the stored one."""
    return hashlib.sha256(entity.SerializeToString(deterministic=True)).hexdigest()


# --- value → field --------------------------------------------------------------------------------------------


def _item_field(value: pb.Value, namespace: str) -> tuple[str, str] | None:
    """``value`` as (type, text), or ``None`` when the form cannot write it back as it is."""
    kind = value.WhichOneof("value_type") or "null_value"
    if kind == "string_value":
        if value.meaning == pb.MEANING_TEXT:
            return "text", value.string_value
        return ("string", value.string_value) if value.meaning in _PLAIN_MEANINGS else None
    if kind == "blob_value":
        if value.meaning not in (pb.MEANING_UNSPECIFIED, pb.MEANING_BLOB, pb.MEANING_BYTESTRING):
            return None
        return "bytes", base64.b64encode(value.blob_value).decode("ascii")
    if value.meaning not in _PLAIN_MEANINGS:
        return None
    if kind == "null_value":
        return "null", ""
    if kind == "boolean_value":
        return "boolean", "true" if value.boolean_value else "false"
    if kind == "integer_value":
        return "integer", str(value.integer_value)
    if kind == "double_value":
        return "float", repr(value.double_value)
    if kind == "timestamp_value":
        return "datetime", value.timestamp_value.ToDatetime(datetime.UTC).isoformat().replace("+00:00", "Z")
    if kind == "key_value":
        key = value.key_value
        if key.partition_id.namespace != namespace or not key.path or \
                any(e.WhichOneof("id_type") is None for e in key.path):
            return None
        return "key", values.key_path(key)
    if kind == "geo_point_value":
        return "geopt", f"{value.geo_point_value.latitude}, {value.geo_point_value.longitude}"
    if kind == "user_value":
        user = value.user_value
        if not user.email or user.user_id or user.federated_identity:
            return None
        return "user", user.email + (f" ({user.auth_domain})" if user.auth_domain else "")
    return None


def _native(item_type: str, text: str) -> object:
    """A list item as JSON shows it: numbers and booleans as such, every other item as its text."""
    if item_type == "integer":
        return int(text)
    if item_type == "float":
        return float(text) if math.isfinite(float(text)) else text
    if item_type == "boolean":
        return text == "true"
    return text


def to_field(name: str, value: pb.Value, namespace: str) -> Field:
    """The form's row for property ``name`` holding ``value`` of an entity in ``namespace``."""
    indexed = not value.exclude_from_indexes
    if value.HasField("array_value") and value.meaning in _PLAIN_MEANINGS:
        items = [_item_field(v, namespace) for v in value.array_value.values]
        types = {t for t, _ in (i for i in items if i is not None)}
        if all(i is not None for i in items) and len(types) <= 1 and types <= set(LIST_ITEM_TYPES) and \
                all(v.exclude_from_indexes == value.exclude_from_indexes or not v.exclude_from_indexes
                    for v in value.array_value.values):
            item_type = types.pop() if types else "string"
            texts = [_native(item_type, text) for _, text in (i for i in items if i is not None)]
            return Field(name, LIST + item_type, json.dumps(texts, ensure_ascii=False), indexed)
        return Field(name, "", indexed=indexed, shown=values.show(value, full=True))
    found = _item_field(value, namespace)
    if found is None:
        return Field(name, "", indexed=indexed, shown=values.show(value, full=True))
    return Field(name, found[0], found[1], indexed)


def to_fields(entity: pb.Entity) -> list[Field]:
    """The form's rows for every property of ``entity``, by name."""
    namespace = entity.key.partition_id.namespace
    return [to_field(name, entity.properties[name], namespace) for name in sorted(entity.properties)]


# --- field → value --------------------------------------------------------------------------------------------


def parse_key(text: str, namespace: str) -> pb.Key:
    """A key written as the console shows it (``Kind:12 > Kind:'name'``), in ``namespace``.

    Raises:
        FieldError: ``text`` is not one.
    """
    key = pb.Key(partition_id=pb.PartitionId(namespace=namespace))
    position, text = 0, text.strip()
    while True:
        match = _KEY_ELEMENT.match(text, position)
        if match is None:
            raise FieldError(f"expected a key such as Kind:12 or Parent:'a' > Kind:'b', got {text[:100]!r}")
        ident = match["id"]
        if ident[0] in "'\"":
            try:
                name = ast.literal_eval(ident)
            except (ValueError, SyntaxError):
                raise FieldError(f"not a quoted key name: {ident[:100]}") from None
            if not isinstance(name, str) or not name:
                raise FieldError("a key name must be non-empty text")
            key.path.add(kind=match["kind"].strip(), name=name)
        else:
            number = int(ident)
            if not 0 < number <= INT64[1]:
                raise FieldError(f"a key id must be a positive 64-bit integer, got {ident}")
            key.path.add(kind=match["kind"].strip(), id=number)
        position = match.end()
        if position == len(text):
            return key
        separator = _KEY_SEPARATOR.match(text, position)
        if separator is None:
            raise FieldError(f"expected a key such as Kind:12 or Parent:'a' > Kind:'b', got {text[:100]!r}")
        position = separator.end()


def _parse_datetime(text: str) -> pb.Value:
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise FieldError(f"expected a date and time such as 2026-05-17T08:30:15Z, got {text[:100]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)  # as App Engine: a naive datetime is UTC
    value = pb.Value()
    value.timestamp_value.FromDatetime(when.astimezone(datetime.UTC))
    return value


def _parse_item(item_type: str, text: str, namespace: str) -> pb.Value:
    """One value of ``item_type`` from its text (its exclusion from indexes is set by the caller)."""
    if item_type == "string":
        return pb.Value(string_value=text)
    if item_type == "text":
        return pb.Value(string_value=text, meaning=pb.MEANING_TEXT)
    if item_type == "null":
        if text.strip() not in ("", "null"):
            raise FieldError(f"a null has no value (leave it empty), got {text[:100]!r}")
        return pb.Value(null_value=pb.NULL_VALUE_UNSPECIFIED)
    if item_type == "boolean":
        if text.strip().lower() not in ("true", "false"):
            raise FieldError(f"expected true or false, got {text[:100]!r}")
        return pb.Value(boolean_value=text.strip().lower() == "true")
    if item_type == "integer":
        try:
            number = int(text.strip())
        except ValueError:
            raise FieldError(f"expected an integer, got {text[:100]!r}") from None
        if not INT64[0] <= number <= INT64[1]:
            raise FieldError(f"an integer must fit in 64 bits, got {text[:100]}")
        return pb.Value(integer_value=number)
    if item_type == "float":
        try:
            return pb.Value(double_value=float(text.strip()))
        except ValueError:
            raise FieldError(f"expected a number, got {text[:100]!r}") from None
    if item_type == "datetime":
        return _parse_datetime(text)
    if item_type == "key":
        return pb.Value(key_value=parse_key(text.strip(), namespace))
    if item_type == "bytes":
        try:
            return pb.Value(blob_value=base64.b64decode("".join(text.split()), validate=True))
        except (binascii.Error, ValueError):
            raise FieldError(f"expected base64, got {text[:100]!r}") from None
    if item_type == "geopt":
        parts = text.split(",")
        try:
            lat, lng = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
        except ValueError:
            lat, lng = math.nan, math.nan
        if not (-90 <= lat <= 90 and -180 <= lng <= 180):
            raise FieldError(f"expected latitude, longitude (-90..90, -180..180), got {text[:100]!r}")
        return pb.Value(geo_point_value=pb.GeoPoint(latitude=lat, longitude=lng))
    if item_type == "user":
        match = _USER.fullmatch(text.strip())
        if match is None:
            raise FieldError(f"expected an email address, optionally followed by (auth domain), got {text[:100]!r}")
        return pb.Value(user_value=pb.User(email=match["email"], auth_domain=match["domain"] or ""))
    raise FieldError(f"unknown type {item_type[:50]!r}")


def parse_value(type_name: str, text: str, indexed: bool, namespace: str) -> pb.Value:
    """The value a field of ``type_name`` with ``text`` stands for, in an entity of ``namespace``.

    Text and blobs are never indexed (as App Engine's Text and Blob); a bytes field that is indexed is a
    ByteString.

    Raises:
        FieldError: ``text`` is not a value of the type (or the type is unknown).
    """
    if type_name.startswith(LIST):
        item_type = type_name[len(LIST):]
        if item_type not in LIST_ITEM_TYPES:
            raise FieldError(f"unknown type {type_name[:50]!r}")
        try:
            items = json.loads(text) if text.strip() else []
        except ValueError:
            raise FieldError(f'expected a JSON list such as ["a", "b"], got {text[:100]!r}') from None
        if not isinstance(items, list):
            raise FieldError(f'expected a JSON list such as ["a", "b"], got {text[:100]!r}')
        value = pb.Value(exclude_from_indexes=not indexed)
        for i, item in enumerate(items):
            if isinstance(item, bool):
                item = "true" if item else "false"
            elif isinstance(item, int | float):
                item = repr(item)
            elif not isinstance(item, str):
                raise FieldError(f"item {i + 1}: expected a {_NAMES[item_type]}, got {json.dumps(item)[:100]}")
            try:
                parsed = _parse_item(item_type, item, namespace)
            except FieldError as exc:
                raise FieldError(f"item {i + 1}: {exc}") from None
            parsed.exclude_from_indexes = not indexed
            value.array_value.values.append(parsed)
        return value
    if type_name not in dict(TYPES):
        raise FieldError(f"unknown type {type_name[:50]!r}")
    value = _parse_item(type_name, text, namespace)
    if type_name == "text":
        indexed = False
    elif type_name == "bytes":
        value.meaning = pb.MEANING_BYTESTRING if indexed else pb.MEANING_BLOB
    value.exclude_from_indexes = not indexed
    return value


# --- a submitted form -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Submitted:
    """One row as the browser sent it."""

    name: str
    type: str  # "" for a kept value (its row sends only its name and whether to remove it)
    text: str
    indexed: bool
    remove: bool
    new: bool


def read_rows(form: Mapping[str, str]) -> list[Submitted]:
    """The rows of a posted form (``rows`` of them, each ``p<i>.<part>``).

    Raises:
        FieldError: ``rows`` is not a count the form could have sent.
    """
    try:
        count = int(form.get("rows", "0"))
    except ValueError:
        raise FieldError("rows: not a number") from None
    if not 0 <= count <= MAX_ROWS:
        raise FieldError(f"rows: at most {MAX_ROWS}")
    return [Submitted(name=form.get(f"p{i}.name", ""), type=form.get(f"p{i}.type", ""),
                      text=form.get(f"p{i}.value", ""), indexed=form.get(f"p{i}.indexed", "") == "on",
                      remove=form.get(f"p{i}.remove", "") == "on", new=form.get(f"p{i}.new", "") == "1")
            for i in range(count)]


def _name_error(name: str) -> str:
    if not name:
        return "a property needs a name"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"a property name is at most {MAX_NAME_BYTES} bytes"
    if name.startswith("__") and name.endswith("__"):
        return "names like __this__ are reserved by the datastore"
    return ""


def apply(entity: pb.Entity | None, rows: Sequence[Submitted], namespace: str) -> tuple[pb.Entity, list[Field]]:
    """``entity`` (``None``: a new one) with the form's ``rows`` applied, and the rows to show again.

    A row sent back as it was shown keeps the stored value (with its meaning); a kept value's row can only be
    removed; a new row with neither name nor value is ignored. When any row's field has an ``error``, the entity
    returned must not be written.
    """
    out = pb.Entity()
    if entity is not None:
        out.CopyFrom(entity)
    stored = {name: to_field(name, v, namespace) for name, v in out.properties.items()}
    shown: list[Field] = []
    seen: set[str] = set()
    for row in rows:
        error = ""
        before = stored.get(row.name)
        if row.new and not row.name and not row.text.strip():
            continue  # a blank row
        if row.new:
            error = _name_error(row.name) or (f"{row.name} is already a property of this entity"
                                              if row.name in stored or row.name in seen else "")
        elif before is None:
            error = f"{row.name} is no longer a property of this entity (reload the page)"
        seen.add(row.name)
        if error:
            shown.append(Field(row.name, row.type or "string", row.text, row.indexed, row.new, error))
            continue
        if row.remove and before is not None:
            del out.properties[row.name]
            shown.append(dataclasses.replace(before, remove=True))
            continue
        if before is not None and not before.type:
            shown.append(before)  # kept as it is
            continue
        if before is not None and (row.type, row.text, row.indexed) == (before.type, before.text, before.indexed):
            shown.append(before)  # untouched: the stored value stays, meaning and all
            continue
        try:
            out.properties[row.name].CopyFrom(parse_value(row.type, row.text, row.indexed, namespace))
        except FieldError as exc:
            shown.append(Field(row.name, row.type, row.text, row.indexed, row.new, str(exc)))
            continue
        shown.append(Field(row.name, row.type, row.text, row.indexed, row.new))
    return out, shown


def has_errors(fields: Sequence[Field]) -> bool:
    """Whether any field of the form is wrong (then nothing is written)."""
    return any(f.error for f in fields)


def blank_rows(count: int) -> list[Field]:
    """``count`` empty rows for new properties."""
    return [Field("", new=True) for _ in range(count)]
