"""Validation of keys and entities against App Engine's rules.

Everything a client sends is checked here before it reaches an engine, so a bad
request gets a precise :class:`~kiln.errors.BadRequestError` naming the key or
property, and nothing half-valid is ever stored.
"""

from __future__ import annotations

from kiln.errors import BadRequestError, TooLargeError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

# App Engine: "Maximum size for an entity: 1,048,572 bytes".
MAX_ENTITY_BYTES = 1_048_572
# Indexed strings and short byte strings are limited to 1500 bytes.
MAX_INDEXED_BYTES = 1500
MAX_BATCH = 500
MAX_GET_BATCH = 1000
MAX_PATH_DEPTH = 100
MAX_NAMESPACE_BYTES = 100

_UNINDEXED_MEANINGS = {pb.MEANING_TEXT, pb.MEANING_BLOB, pb.MEANING_ZLIB}


def check_namespace(namespace: str) -> None:
    """Namespaces follow App Engine's pattern ``[0-9A-Za-z._-]{0,100}``."""
    if len(namespace) > MAX_NAMESPACE_BYTES or any(
            not (c.isascii() and (c.isalnum() or c in "._-")) for c in namespace):
        raise BadRequestError(f"namespace {namespace!r}: must match [0-9A-Za-z._-]{{0,100}}")


def check_key(key: pb.Key, app_id: str, *, allow_incomplete: bool, what: str = "key") -> None:
    """Validate a key and bind it to the caller's app (fills ``partition_id.app_id``).

    Raises:
        BadRequestError: the key is malformed or names another app.
    """
    if key.partition_id.app_id and key.partition_id.app_id != app_id:
        raise BadRequestError(f"{what}: app {key.partition_id.app_id!r} does not match the calling app")
    key.partition_id.app_id = app_id
    check_namespace(key.partition_id.namespace)
    if not key.path:
        raise BadRequestError(f"{what}: a key needs at least one path element")
    if len(key.path) > MAX_PATH_DEPTH:
        raise BadRequestError(f"{what}: path deeper than {MAX_PATH_DEPTH} elements")
    last = len(key.path) - 1
    for i, elem in enumerate(key.path):
        where = f"{what}.path[{i}]"
        if not elem.kind:
            raise BadRequestError(f"{where}: kind must not be empty")
        if elem.kind.startswith("__") and elem.kind.endswith("__"):
            raise BadRequestError(f"{where}: kind {elem.kind!r} is reserved")
        if len(elem.kind.encode()) > MAX_INDEXED_BYTES:
            raise BadRequestError(f"{where}: kind longer than {MAX_INDEXED_BYTES} bytes")
        which = elem.WhichOneof("id_type")
        if which == "id" and elem.id <= 0:
            raise BadRequestError(f"{where}: id must be positive, got {elem.id}")
        if which == "name":
            if not elem.name:
                raise BadRequestError(f"{where}: name must not be empty")
            if len(elem.name.encode()) > MAX_INDEXED_BYTES:
                raise BadRequestError(f"{where}: name longer than {MAX_INDEXED_BYTES} bytes")
            if elem.name.startswith("__") and elem.name.endswith("__"):
                raise BadRequestError(f"{where}: name {elem.name!r} is reserved")
        if which is None and not (allow_incomplete and i == last):
            raise BadRequestError(f"{where}: incomplete key (no id or name)")


def is_incomplete(key: pb.Key) -> bool:
    """True when the last path element has neither id nor name."""
    return key.path[-1].WhichOneof("id_type") is None


def check_entity(entity: pb.Entity, app_id: str, *, what: str = "entity") -> None:
    """Validate an entity for Put (incomplete key allowed)."""
    check_key(entity.key, app_id, allow_incomplete=True, what=f"{what}.key")
    for name, value in entity.properties.items():
        _check_property_name(name, what)
        _check_value(value, f"{what}.{name}", top_level=True, app_id=app_id)
    size = entity.ByteSize()
    if size > MAX_ENTITY_BYTES:
        raise TooLargeError(f"{what}: entity is {size} bytes, more than the limit of {MAX_ENTITY_BYTES}")


def _check_property_name(name: str, what: str) -> None:
    if not name:
        raise BadRequestError(f"{what}: property name must not be empty")
    if name.startswith("__") and name.endswith("__"):
        raise BadRequestError(f"{what}.{name}: property name is reserved")
    if len(name.encode()) > MAX_INDEXED_BYTES:
        raise BadRequestError(f"{what}: property name longer than {MAX_INDEXED_BYTES} bytes")


def _check_value(value: pb.Value, where: str, *, top_level: bool, app_id: str) -> None:
    kind = value.WhichOneof("value_type")
    if kind is None:
        raise BadRequestError(f"{where}: value has no type set")
    indexed = not value.exclude_from_indexes and value.meaning not in _UNINDEXED_MEANINGS
    if kind == "string_value" and indexed and len(value.string_value.encode()) > MAX_INDEXED_BYTES:
        raise BadRequestError(
            f"{where}: indexed string longer than {MAX_INDEXED_BYTES} bytes; use Text (MEANING_TEXT) or exclude it from indexes")
    if kind == "blob_value" and indexed and len(value.blob_value) > MAX_INDEXED_BYTES:
        raise BadRequestError(
            f"{where}: indexed byte string longer than {MAX_INDEXED_BYTES} bytes; use Blob (MEANING_BLOB)")
    if kind == "timestamp_value" and value.timestamp_value.nanos % 1000:
        raise BadRequestError(f"{where}: datetimes have microsecond precision; nanos must be a multiple of 1000")
    if kind == "geo_point_value":
        gp = value.geo_point_value
        if not (-90 <= gp.latitude <= 90 and -180 <= gp.longitude <= 180):
            raise BadRequestError(f"{where}: GeoPt latitude must be in [-90, 90] and longitude in [-180, 180]")
    if kind == "key_value":
        check_key(value.key_value, app_id, allow_incomplete=False, what=where)
    if kind == "user_value" and not value.user_value.email:
        raise BadRequestError(f"{where}: a User value needs an email")
    if kind == "array_value":
        if not top_level:
            raise BadRequestError(f"{where}: lists cannot contain lists")
        for i, item in enumerate(value.array_value.values):
            _check_value(item, f"{where}[{i}]", top_level=False, app_id=app_id)
    if kind == "entity_value":
        for name, inner in value.entity_value.properties.items():
            _check_property_name(name, where)
            _check_value(inner, f"{where}.{name}", top_level=True, app_id=app_id)
