"""Datastore values as the console shows them: a type name and text for each, lists and embedded entities as
nested values, keys as links. Pure functions (no I/O); templates only lay them out, escaping every text."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime

from google.protobuf.message import DecodeError

from kiln.errors import BadRequestError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

SHORT_CHARS = 80  # a string shown in a table is cut here (the entity page shows it whole)
SHORT_BYTES = 8  # a blob shows this many bytes in hex in a table (the entity page shows up to FULL_BYTES)
FULL_BYTES = 4096

_MEANING_TYPES = {
    pb.MEANING_TEXT: "Text", pb.MEANING_BLOB: "Blob", pb.MEANING_BYTESTRING: "ByteString", pb.MEANING_DATE: "Date",
    pb.MEANING_TIME: "Time", pb.MEANING_LINK: "Link", pb.MEANING_EMAIL: "Email", pb.MEANING_CATEGORY: "Category",
    pb.MEANING_PHONE_NUMBER: "PhoneNumber", pb.MEANING_POSTAL_ADDRESS: "PostalAddress", pb.MEANING_RATING: "Rating",
    pb.MEANING_IM: "IM", pb.MEANING_BLOB_KEY: "BlobKey", pb.MEANING_ZLIB: "Blob (zlib)",
}
_BASE_TYPES = {
    "null_value": "Null", "boolean_value": "Boolean", "integer_value": "Integer", "double_value": "Float",
    "timestamp_value": "DateTime", "key_value": "Key", "string_value": "String", "blob_value": "Bytes",
    "geo_point_value": "GeoPt", "user_value": "User", "array_value": "List", "entity_value": "Embedded entity",
}


@dataclasses.dataclass(frozen=True)
class Shown:
    """One value laid out: its type, its text (cut when ``cut``), and its parts for lists and entities."""

    type: str
    text: str = ""
    cut: bool = False  # the text is an abbreviation of a longer value
    key: str = ""  # for keys: the encoded key the entity page takes
    items: tuple[Shown, ...] = ()  # for lists
    properties: tuple[tuple[str, Shown], ...] = ()  # for embedded entities
    indexed: bool = True


def encode_key(key: pb.Key) -> str:
    """A key as the URL-safe text the console's links carry (its namespace and path; the app is the console's)."""
    bare = pb.Key(partition_id=pb.PartitionId(namespace=key.partition_id.namespace), path=key.path)
    return base64.urlsafe_b64encode(bare.SerializeToString(deterministic=True)).decode("ascii").rstrip("=")


def decode_key(text: str) -> pb.Key:
    """The key :func:`encode_key` made.

    Raises:
        BadRequestError: ``text`` is not one (a complete key with a kind and an id or name in every element).
    """
    try:
        key = pb.Key.FromString(base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True))
    except (binascii.Error, ValueError, DecodeError):
        raise BadRequestError(f"not an entity key: {text[:100]!r}") from None
    if not key.path or any(not e.kind or e.WhichOneof("id_type") is None for e in key.path):
        raise BadRequestError(f"not a complete entity key: {text[:100]!r}")
    return key


def key_path(key: pb.Key) -> str:
    """A key's path as App Engine's consoles wrote it: ``Kind:id > Kind:'name'``."""
    return " > ".join(f"{e.kind}:{e.id}" if e.WhichOneof("id_type") == "id" else f"{e.kind}:{e.name!r}"
                      for e in key.path)


def _cut(text: str, full: bool) -> tuple[str, bool]:
    if full or len(text) <= SHORT_CHARS:
        return text, False
    return text[:SHORT_CHARS] + "…", True


def _timestamp(value: pb.Value) -> str:
    when = value.timestamp_value.ToDatetime(datetime.UTC)
    if value.meaning == pb.MEANING_DATE:
        return when.date().isoformat()
    if value.meaning == pb.MEANING_TIME:
        return when.time().isoformat()
    return when.isoformat().replace("+00:00", "Z")


def show(value: pb.Value, *, full: bool = False) -> Shown:
    """``value`` laid out; ``full`` shows long strings whole and more of a blob (the entity page)."""
    kind = value.WhichOneof("value_type") or "null_value"
    type_name = _MEANING_TYPES.get(value.meaning, _BASE_TYPES[kind])
    indexed = not value.exclude_from_indexes
    if kind == "null_value":
        return Shown(type_name, "null", indexed=indexed)
    if kind == "boolean_value":
        return Shown(type_name, "true" if value.boolean_value else "false", indexed=indexed)
    if kind == "integer_value":
        return Shown(type_name, str(value.integer_value), indexed=indexed)
    if kind == "double_value":
        return Shown(type_name, repr(value.double_value), indexed=indexed)
    if kind == "timestamp_value":
        return Shown(type_name, _timestamp(value), indexed=indexed)
    if kind == "key_value":
        return Shown(type_name, key_path(value.key_value), key=encode_key(value.key_value), indexed=indexed)
    if kind == "string_value":
        text, cut = _cut(value.string_value, full)
        return Shown(type_name, text, cut=cut, indexed=indexed)
    if kind == "blob_value":
        data = value.blob_value
        limit = FULL_BYTES if full else SHORT_BYTES
        text = f"{len(data)} bytes" + (f": {data[:limit].hex(' ')}" if data else "")
        return Shown(type_name, text + (" …" if len(data) > limit else ""), cut=len(data) > limit, indexed=indexed)
    if kind == "geo_point_value":
        return Shown(type_name, f"{value.geo_point_value.latitude}, {value.geo_point_value.longitude}",
                     indexed=indexed)
    if kind == "user_value":
        user = value.user_value
        return Shown(type_name, user.email + (f" ({user.auth_domain})" if user.auth_domain else ""), indexed=indexed)
    if kind == "array_value":
        items = tuple(show(v, full=full) for v in value.array_value.values)
        return Shown(type_name, f"{len(items)} values" if items else "empty list", items=items, indexed=indexed)
    entity = value.entity_value
    props = tuple((name, show(entity.properties[name], full=full)) for name in sorted(entity.properties))
    return Shown(type_name, key_path(entity.key) if entity.key.path else "", properties=props, indexed=indexed)
