"""Order-preserving byte encodings of property values (the index value format).

Every indexed value encodes to bytes whose order is App Engine's order of
mixed values, so an index is a sorted set of byte strings and every query is
a range scan. The first byte is the type class, in App Engine's cross-type
order::

    null < integers and datetimes < booleans < strings and byte strings
         < floats < geo points < users < keys

Within a class the encoding sorts like the values. Each encoding is
self-delimiting (fixed width, or escaped and 00-terminated), so the
concatenation of several encodings and a key path still sorts field by field;
that is what composite index rows are. A descending index stores the
byte-complement of each field, which reverses its order and stays
self-delimiting.

Integers and datetimes share a class (App Engine stores a datetime as integer
microseconds), as do strings and byte strings; a trailing subtype byte keeps
them decodable for projection queries, so equal-looking values of different
subtypes are adjacent but not equal.
"""

from __future__ import annotations

import struct

from datastore_svc.keys import decode_path, encode_path, escape, unescape
from kiln.pb.datastore.v1 import datastore_pb2 as pb

NULL, INT, BOOL, STRING, DOUBLE, GEO, USER, KEY = (bytes([t]) for t in range(0x10, 0x90, 0x10))
CLASS_END = b"\xff"

_SUB_INT, _SUB_TIMESTAMP = b"\x00", b"\x01"
_SUB_STRING, _SUB_BYTES = b"\x00", b"\x01"
_SIGN = 1 << 63
_UINT64 = struct.Struct(">Q")
_DOUBLE = struct.Struct(">d")

UNINDEXED_MEANINGS = frozenset({pb.MEANING_TEXT, pb.MEANING_BLOB, pb.MEANING_ZLIB})


def _terminated(raw: bytes) -> bytes:
    return escape(raw) + b"\x00"


def _int(value: int) -> bytes:
    return _UINT64.pack((value + _SIGN) & 0xFFFFFFFFFFFFFFFF)


def _double(value: float) -> bytes:
    (bits,) = _UINT64.unpack(_DOUBLE.pack(value))
    # Negative doubles: invert every bit (larger magnitude sorts first);
    # positive: set the sign bit so they sort after every negative.
    return _UINT64.pack(bits ^ 0xFFFFFFFFFFFFFFFF if bits & _SIGN else bits | _SIGN)


def _undouble(raw: bytes) -> float:
    (bits,) = _UINT64.unpack(raw)
    bits = bits ^ _SIGN if bits & _SIGN else bits ^ 0xFFFFFFFFFFFFFFFF
    return float(_DOUBLE.unpack(_UINT64.pack(bits))[0])


def is_indexable(value: pb.Value) -> bool:
    """Whether a (non-list) value goes into the built-in indexes."""
    kind = value.WhichOneof("value_type")
    return (kind not in (None, "entity_value", "array_value") and not value.exclude_from_indexes
            and value.meaning not in UNINDEXED_MEANINGS)


def encode(value: pb.Value) -> bytes:
    """The ascending index encoding of one non-list value.

    Raises:
        ValueError: the value is a list, an embedded entity or unset.
    """
    kind = value.WhichOneof("value_type")
    if kind == "null_value":
        return NULL
    if kind == "integer_value":
        return INT + _int(value.integer_value) + _SUB_INT
    if kind == "timestamp_value":
        ts = value.timestamp_value
        return INT + _int(ts.seconds * 1_000_000 + ts.nanos // 1000) + _SUB_TIMESTAMP
    if kind == "boolean_value":
        return BOOL + (b"\x01" if value.boolean_value else b"\x00")
    if kind == "string_value":
        return STRING + _terminated(value.string_value.encode()) + _SUB_STRING
    if kind == "blob_value":
        return STRING + _terminated(value.blob_value) + _SUB_BYTES
    if kind == "double_value":
        return DOUBLE + _double(value.double_value)
    if kind == "geo_point_value":
        return GEO + _double(value.geo_point_value.latitude) + _double(value.geo_point_value.longitude)
    if kind == "user_value":
        user = value.user_value
        return USER + _terminated(user.email.encode()) + _terminated(user.user_id.encode())
    if kind == "key_value":
        key = value.key_value
        return KEY + _terminated(key.partition_id.namespace.encode()) + encode_path(key.path) + b"\x00"
    raise ValueError(f"{kind or 'unset'} values are not indexable")


def complement(raw: bytes) -> bytes:
    """The descending encoding: every byte inverted."""
    return raw.translate(_COMPLEMENT)


_COMPLEMENT = bytes(255 - b for b in range(256))


def decode(raw: bytes, pos: int = 0, *, app_id: str = "") -> tuple[pb.Value, int]:
    """Decode one ascending encoding at ``raw[pos:]``; return the value and the end offset."""
    tag = raw[pos:pos + 1]
    pos += 1
    if tag == NULL:
        return pb.Value(null_value=pb.NULL_VALUE_UNSPECIFIED), pos
    if tag == INT:
        number = _UINT64.unpack_from(raw, pos)[0] - _SIGN
        sub = raw[pos + 8:pos + 9]
        if sub == _SUB_TIMESTAMP:
            value = pb.Value()
            value.timestamp_value.seconds, micros = divmod(number, 1_000_000)
            value.timestamp_value.nanos = micros * 1000
            return value, pos + 9
        return pb.Value(integer_value=number), pos + 9
    if tag == BOOL:
        return pb.Value(boolean_value=raw[pos] == 1), pos + 1
    if tag == STRING:
        text, pos = _read_terminated(raw, pos)
        if raw[pos:pos + 1] == _SUB_BYTES:
            return pb.Value(blob_value=text, meaning=pb.MEANING_BYTESTRING), pos + 1
        return pb.Value(string_value=text.decode()), pos + 1
    if tag == DOUBLE:
        return pb.Value(double_value=_undouble(raw[pos:pos + 8])), pos + 8
    if tag == GEO:
        point = pb.GeoPoint(latitude=_undouble(raw[pos:pos + 8]), longitude=_undouble(raw[pos + 8:pos + 16]))
        return pb.Value(geo_point_value=point), pos + 16
    if tag == USER:
        email, pos = _read_terminated(raw, pos)
        user_id, pos = _read_terminated(raw, pos)
        return pb.Value(user_value=pb.User(email=email.decode(), user_id=user_id.decode())), pos
    if tag == KEY:
        namespace, pos = _read_terminated(raw, pos)
        end = _key_path_end(raw, pos)
        key = pb.Key(partition_id=pb.PartitionId(app_id=app_id, namespace=namespace.decode()),
                     path=decode_path(raw[pos:end]))
        return pb.Value(key_value=key), end + 1
    raise ValueError(f"unknown value tag {tag!r}")


def _read_terminated(raw: bytes, pos: int) -> tuple[bytes, int]:
    end = raw.index(b"\x00", pos)
    return unescape(raw[pos:end]), end + 1


def _key_path_end(raw: bytes, pos: int) -> int:
    """Offset of the 00 that ends an encoded key path starting at ``pos``."""
    while raw[pos] != 0:
        pos = raw.index(b"\x00", pos) + 1  # past the escaped kind
        if raw[pos] == 1:  # id
            pos += 9
        else:  # name
            pos = raw.index(b"\x00", pos + 1) + 1
    return pos


def value_class(encoded: bytes) -> bytes:
    """The type-class byte of an encoding (App Engine's inequality filters stay in one class)."""
    return encoded[:1]


def class_end(encoded: bytes) -> bytes:
    """The smallest encoding above every value of ``encoded``'s class."""
    return bytes([encoded[0] + 1])
