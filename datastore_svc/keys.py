"""Order-preserving byte encodings of key paths.

A path encodes element by element; each element is self-terminating, so byte
order of encodings equals App Engine's key order and an ancestor's encoding is
a prefix of every descendant's:

    element = escape(kind) 00 ( 01 <8-byte sign-flipped id> | 02 escape(name) 00 )

``escape`` maps 00 -> 01 01 and 01 -> 01 02, so the 00 terminators stay unique;
ids sort before names, as in App Engine. Kinds and names are UTF-8, which
never contains the byte FF, so ``prefix + FF`` bounds every descendant of
``prefix``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from kiln.pb.datastore.v1 import datastore_pb2 as pb

_ID, _NAME = b"\x01", b"\x02"
PREFIX_END = b"\xff"


def escape(raw: bytes) -> bytes:
    """Escape so that 00 can terminate: 00 -> 01 01, 01 -> 01 02."""
    return raw.replace(b"\x01", b"\x01\x02").replace(b"\x00", b"\x01\x01")


def unescape(raw: bytes) -> bytes:
    """Invert :func:`escape`."""
    return raw.replace(b"\x01\x01", b"\x00").replace(b"\x01\x02", b"\x01")


def encode_element(elem: pb.PathElement) -> bytes:
    """Encode one complete path element."""
    out = escape(elem.kind.encode()) + b"\x00"
    if elem.WhichOneof("id_type") == "id":
        return out + _ID + struct.pack(">Q", elem.id ^ (1 << 63))
    return out + _NAME + escape(elem.name.encode()) + b"\x00"


def encode_path(path: Iterable[pb.PathElement]) -> bytes:
    """Encode a complete path (root first)."""
    return b"".join(encode_element(e) for e in path)


def group_of(raw: bytes) -> bytes:
    """The entity group of an encoded path: the encoding of its root element, which is its prefix."""
    end = _find_terminator(raw, 0)  # after the root's kind
    if raw[end + 1:end + 2] == _ID:
        return raw[:end + 10]
    return raw[:_find_terminator(raw, end + 2) + 1]


def decode_path(raw: bytes) -> list[pb.PathElement]:
    """Invert :func:`encode_path`."""
    out: list[pb.PathElement] = []
    i = 0
    while i < len(raw):
        end = _find_terminator(raw, i)
        kind = unescape(raw[i:end]).decode()
        tag = raw[end + 1:end + 2]
        if tag == _ID:
            (value,) = struct.unpack(">Q", raw[end + 2:end + 10])
            out.append(pb.PathElement(kind=kind, id=value ^ (1 << 63)))
            i = end + 10
        else:
            stop = _find_terminator(raw, end + 2)
            out.append(pb.PathElement(kind=kind, name=unescape(raw[end + 2:stop]).decode()))
            i = stop + 1
    return out


def _find_terminator(raw: bytes, start: int) -> int:
    # Escaping emits only 01 01 and 01 02, never a bare 00, so the first 00 is
    # always the terminator.
    return raw.index(b"\x00", start)
