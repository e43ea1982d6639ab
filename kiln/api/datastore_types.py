"""Datastore value types, mirroring ``google.appengine.api.datastore_types``.

:class:`Key` plus the typed wrappers App Engine apps use (``Text``, ``Blob``,
``ByteString``, ``GeoPt``, ``Link``…), and the conversion between Python values
and the protobuf ``Value`` of ``kiln.pb.datastore.v1``.
"""

from __future__ import annotations

import base64
import datetime
import os
from collections.abc import Iterable
from typing import Any

from kiln.errors import BadRequestError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

_EPOCH = datetime.datetime(1970, 1, 1)


class BadKeyError(BadRequestError):
    """A key or its encoded string form is invalid."""


class BadValueError(BadRequestError):
    """A property value cannot be stored."""


class Key:
    """A datastore key: app, namespace and the (kind, id | name) path.

    ``str(key)`` is the URL-safe encoded form; ``Key(encoded)`` parses it back.
    """

    __slots__ = ("_pb",)

    def __init__(self, encoded: str | None = None, *, _pb: pb.Key | None = None) -> None:
        if _pb is not None:
            self._pb = _pb
            return
        if encoded is None:
            raise BadKeyError("Key() needs an encoded key string; use Key.from_path(...)")
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            self._pb = pb.Key.FromString(raw)
        except Exception:  # noqa: BLE001 - any decoding failure is a bad key string
            raise BadKeyError(f"invalid encoded key string {encoded!r}") from None
        if not self._pb.path:
            raise BadKeyError(f"invalid encoded key string {encoded!r}")

    @classmethod
    def from_path(cls, *args: Any, parent: Key | None = None, namespace: str | None = None,
                  _app: str | None = None) -> Key:
        """``Key.from_path('Parent', 1, 'Child', 'name', parent=None, namespace=None)``."""
        if not args or len(args) % 2:
            raise BadKeyError("from_path needs (kind, id_or_name) pairs")
        key = pb.Key()
        if parent is not None:
            key.CopyFrom(parent._pb)
            if not parent.has_id_or_name():
                raise BadKeyError("the parent key is incomplete")
        else:
            key.partition_id.app_id = _app or os.environ.get("APPLICATION_ID", "")
            key.partition_id.namespace = namespace if namespace is not None else ""
        for kind, ident in zip(args[::2], args[1::2]):
            if not isinstance(kind, str) or not kind:
                raise BadKeyError(f"kind must be a non-empty string, got {kind!r}")
            elem = key.path.add(kind=kind)
            if isinstance(ident, bool) or not isinstance(ident, (int, str, type(None))):
                raise BadKeyError(f"id or name must be an int or str, got {ident!r}")
            if isinstance(ident, int):
                elem.id = ident
            elif isinstance(ident, str):
                elem.name = ident
        return cls(_pb=key)

    def to_pb(self) -> pb.Key:
        """A copy of the protobuf key."""
        out = pb.Key()
        out.CopyFrom(self._pb)
        return out

    def app(self) -> str:
        return self._pb.partition_id.app_id

    def namespace(self) -> str:
        return self._pb.partition_id.namespace

    def kind(self) -> str:
        return self._pb.path[-1].kind

    def id(self) -> int | None:
        last = self._pb.path[-1]
        return last.id if last.WhichOneof("id_type") == "id" else None

    def name(self) -> str | None:
        last = self._pb.path[-1]
        return last.name if last.WhichOneof("id_type") == "name" else None

    def id_or_name(self) -> int | str | None:
        return self.id() if self.id() is not None else self.name()

    def has_id_or_name(self) -> bool:
        return self._pb.path[-1].WhichOneof("id_type") is not None

    def parent(self) -> Key | None:
        if len(self._pb.path) < 2:
            return None
        key = self.to_pb()
        del key.path[-1]
        return Key(_pb=key)

    def to_path(self) -> list[Any]:
        out: list[Any] = []
        for e in self._pb.path:
            out += [e.kind, e.id if e.WhichOneof("id_type") == "id" else e.name or None]
        return out

    def __str__(self) -> str:
        return base64.urlsafe_b64encode(self._pb.SerializeToString(deterministic=True)).decode().rstrip("=")

    def __repr__(self) -> str:
        return f"datastore_types.Key.from_path({', '.join(repr(p) for p in self.to_path())}, _app={self.app()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and _key_tuple(self._pb) == _key_tuple(other._pb)

    def __hash__(self) -> int:
        return hash(_key_tuple(self._pb))


def _key_tuple(key: pb.Key) -> tuple[Any, ...]:
    return (key.partition_id.app_id, key.partition_id.namespace,
            tuple((e.kind, e.WhichOneof("id_type"), e.id, e.name) for e in key.path))


class Text(str):
    """Long text, never indexed."""


class Blob(bytes):
    """Long binary data, never indexed."""


class ByteString(bytes):
    """Short (<= 1500 bytes) binary data, indexed."""


class Link(str):
    """A URL."""


class Email(str):
    """An email address."""


class Category(str):
    """A category or tag."""


class PhoneNumber(str):
    """A phone number."""


class PostalAddress(str):
    """A postal address."""


class IM(str):
    """An instant messaging handle: ``"protocol address"``."""


class BlobKey(str):
    """A blobstore key."""


class Rating(int):
    """A rating, 0..100."""


class GeoPt:
    """A geographical point."""

    __slots__ = ("lat", "lon")

    def __init__(self, lat: float | str, lon: float | None = None) -> None:
        if lon is None and isinstance(lat, str):
            lat_text, _, lon_text = lat.partition(",")
            lat, lon = float(lat_text), float(lon_text)
        assert lon is not None
        if not (-90 <= float(lat) <= 90 and -180 <= float(lon) <= 180):
            raise BadValueError(f"GeoPt({lat}, {lon}): latitude must be in [-90, 90], longitude in [-180, 180]")
        self.lat, self.lon = float(lat), float(lon)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeoPt) and (self.lat, self.lon) == (other.lat, other.lon)

    def __hash__(self) -> int:
        return hash((self.lat, self.lon))

    def __str__(self) -> str:
        return f"{self.lat},{self.lon}"

    def __repr__(self) -> str:
        return f"datastore_types.GeoPt({self.lat!r}, {self.lon!r})"


_STRING_MEANINGS: dict[type, int] = {
    Text: pb.MEANING_TEXT, Link: pb.MEANING_LINK, Email: pb.MEANING_EMAIL, Category: pb.MEANING_CATEGORY,
    PhoneNumber: pb.MEANING_PHONE_NUMBER, PostalAddress: pb.MEANING_POSTAL_ADDRESS, IM: pb.MEANING_IM,
    BlobKey: pb.MEANING_BLOB_KEY,
}
_MEANING_STRINGS = {v: k for k, v in _STRING_MEANINGS.items()}


def to_value(value: Any, *, indexed: bool = True, name: str = "value") -> pb.Value:
    """Convert a Python value to a protobuf Value."""
    out = pb.Value()
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (list, tuple)):
                raise BadValueError(f"{name}: lists cannot contain lists")
            out.array_value.values.append(to_value(item, indexed=indexed, name=name))
        out.exclude_from_indexes = not indexed
        return out
    if value is None:
        out.null_value = pb.NULL_VALUE_UNSPECIFIED
    elif isinstance(value, bool):
        out.boolean_value = value
    elif isinstance(value, Rating):
        out.integer_value, out.meaning = int(value), pb.MEANING_RATING
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise BadValueError(f"{name}: integer {value} does not fit in 64 bits")
        out.integer_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
        out.meaning = _STRING_MEANINGS.get(type(value), pb.MEANING_UNSPECIFIED)  # type: ignore[assignment]
    elif isinstance(value, ByteString):
        out.blob_value, out.meaning = bytes(value), pb.MEANING_BYTESTRING
    elif isinstance(value, (bytes, bytearray)):
        out.blob_value, out.meaning = bytes(value), pb.MEANING_BLOB
    elif isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        delta = value - _EPOCH
        out.timestamp_value.seconds = delta.days * 86400 + delta.seconds
        out.timestamp_value.nanos = delta.microseconds * 1000
    elif isinstance(value, datetime.date):
        out.CopyFrom(to_value(datetime.datetime(value.year, value.month, value.day), indexed=indexed))
        out.meaning = pb.MEANING_DATE
    elif isinstance(value, datetime.time):
        out.CopyFrom(to_value(datetime.datetime.combine(_EPOCH.date(), value.replace(tzinfo=None))))
        out.meaning = pb.MEANING_TIME
    elif isinstance(value, Key):
        out.key_value.CopyFrom(value.to_pb())
    elif isinstance(value, GeoPt):
        out.geo_point_value.latitude, out.geo_point_value.longitude = value.lat, value.lon
    elif hasattr(value, "email") and hasattr(value, "auth_domain") and callable(value.email):
        out.user_value.email = value.email()
        out.user_value.auth_domain = value.auth_domain()
        out.user_value.user_id = value.user_id() or ""
    else:
        raise BadValueError(f"{name}: unsupported type {type(value).__name__}")
    if not indexed:
        out.exclude_from_indexes = True
    return out


def from_value(value: pb.Value) -> Any:
    """Convert a protobuf Value back to the Python value an App Engine app expects."""
    kind = value.WhichOneof("value_type")
    if kind == "array_value":
        return [from_value(v) for v in value.array_value.values]
    if kind in (None, "null_value"):
        return None
    if kind == "boolean_value":
        return value.boolean_value
    if kind == "integer_value":
        return Rating(value.integer_value) if value.meaning == pb.MEANING_RATING else value.integer_value
    if kind == "double_value":
        return value.double_value
    if kind == "string_value":
        return _MEANING_STRINGS.get(value.meaning, str)(value.string_value)
    if kind == "blob_value":
        return ByteString(value.blob_value) if value.meaning == pb.MEANING_BYTESTRING else Blob(value.blob_value)
    if kind == "timestamp_value":
        ts = value.timestamp_value
        dt = _EPOCH + datetime.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)
        if value.meaning == pb.MEANING_DATE:
            return dt.date()
        if value.meaning == pb.MEANING_TIME:
            return dt.time()
        return dt
    if kind == "key_value":
        return Key(_pb=value.key_value)
    if kind == "geo_point_value":
        return GeoPt(value.geo_point_value.latitude, value.geo_point_value.longitude)
    if kind == "user_value":
        from kiln.api import users
        u = value.user_value
        return users.User(email=u.email, _auth_domain=u.auth_domain, _user_id=u.user_id or None)
    if kind == "entity_value":
        return {k: from_value(v) for k, v in value.entity_value.properties.items()}
    raise BadValueError(f"unknown value type {kind}")


def keys_of(items: Iterable[Any]) -> list[Key]:
    """Accept Keys or encoded key strings."""
    out = []
    for item in items:
        out.append(item if isinstance(item, Key) else Key(item))
    return out
