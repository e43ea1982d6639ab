"""App Engine's Blobstore API (``google.appengine.api.blobstore`` and ``google.appengine.ext.blobstore``) for kiln
apps, served by kiln's blobstore service.

- ``BlobKey``: a blob's key (compares and hashes as its text).
- ``BlobInfo``: ``content_type``, ``creation``, ``filename``, ``size``, ``md5_hash``; ``BlobInfo.get(keys)``,
  ``BlobInfo.all()`` (a query: iterate, ``fetch(limit, offset)``, ``count()``, ``get()``, ``filter("size >",
  1000)``, ``order("-creation")``), ``open()``, ``delete()``; ``get(keys)`` is ``BlobInfo.get``.
- ``BlobReader(blob, buffer_size=131072, position=0)``: a read-only file over a blob (``read``, ``readline``,
  ``readlines``, ``seek``, ``tell``, iteration, ``with``), reading ``buffer_size`` bytes a call.
- ``fetch_data(blob, start_index, end_index)``: bytes ``start_index`` to ``end_index`` inclusive, at most
  ``MAX_BLOB_FETCH_SIZE`` a call; a range past the end is cut at the end.
- ``delete(keys)``, ``create_upload_url(success_path, max_bytes_per_blob=None, max_bytes_total=None)`` and
  their ``*_async`` forms returning an RPC whose ``get_result()`` collects the call.
- ``get_uploads(environ, field_name=None)``: in the success handler of an upload URL, the ``BlobInfo`` of each
  file uploaded (as ``BlobstoreUploadHandler.get_uploads``), read from the blob-info parts the router forwards;
  ``parse_blob_info(field_storage)`` reads one such part from a ``cgi.FieldStorage``.
- App Engine's errors: ``Error``, ``InternalError``, ``BlobNotFoundError``, ``DataIndexOutOfRangeError``,
  ``BlobFetchSizeTooLargeError``, ``PermissionDeniedError``, ``BlobInfoParseError``.

An app sees only its own blobs: another app's key is not found. kiln has no Cloud Storage, so
``create_upload_url`` refuses ``gs_bucket_name``.

``BlobInfo.all()`` filters and orders on the client (the service lists an app's blobs in key order); ``gql`` is
not offered. Google's SDK's ``BlobInfo.all()``/``gql`` run through kiln's API host instead.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.message
import email.parser
import email.policy
import io
import itertools
import operator
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kiln import gql as _gql
from kiln import runtime as _runtime
from kiln.api import _rpc
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc

__all__ = [
    "BLOB_INFO_KIND",
    "BLOB_KEY_HEADER",
    "BLOB_RANGE_HEADER",
    "MAX_BLOB_FETCH_SIZE",
    "RPC",
    "UPLOAD_INFO_CREATION_HEADER",
    "BlobFetchSizeTooLargeError",
    "BlobInfo",
    "BlobInfoParseError",
    "BlobInfoQuery",
    "BlobKey",
    "BlobNotFoundError",
    "BlobReader",
    "CreationFormatError",
    "DataIndexOutOfRangeError",
    "Error",
    "InternalError",
    "PermissionDeniedError",
    "create_rpc",
    "create_upload_url",
    "create_upload_url_async",
    "delete",
    "delete_async",
    "fetch_data",
    "fetch_data_async",
    "get",
    "get_uploads",
    "parse_blob_info",
]

BLOB_INFO_KIND = "__BlobInfo__"
BLOB_KEY_HEADER = "X-AppEngine-BlobKey"
BLOB_RANGE_HEADER = "X-AppEngine-BlobRange"
UPLOAD_INFO_CREATION_HEADER = "X-AppEngine-Upload-Creation"
MAX_BLOB_FETCH_SIZE = (1 << 20) - (1 << 15)
UPLOAD_PATH = "/_ah/upload/"
DEFAULT_DEADLINE = 30.0


class Error(Exception):
    """Base class of the Blobstore API's errors."""


class InternalError(Error):
    """The blobstore service failed."""


class BlobNotFoundError(Error):
    """No blob of the app has the key."""


class DataIndexOutOfRangeError(Error):
    """A fetch's start index is negative or its end index is before it."""


class BlobFetchSizeTooLargeError(Error):
    """A fetch asks for more than MAX_BLOB_FETCH_SIZE bytes."""


class PermissionDeniedError(Error):
    """The app may not do this."""


class CreationFormatError(Error):
    """An upload's creation time header is malformed."""


class BlobInfoParseError(Error):
    """An upload's blob-info part lacks a value or has a malformed one."""


_ERRORS = _rpc.ErrorTable(codes={
    "BLOB_NOT_FOUND": BlobNotFoundError, "INVALID_BLOB_KEY": BlobNotFoundError,
    "DATA_INDEX_OUT_OF_RANGE": DataIndexOutOfRangeError, "BLOB_FETCH_SIZE_TOO_LARGE": BlobFetchSizeTooLargeError,
    "PERMISSION_DENIED": PermissionDeniedError, "UNSPECIFIED": InternalError,
}, unclassified=lambda details: Error(f"the blobstore service failed: {details}"))


class BlobKey:
    """A blob's key: App Engine's ``datastore_types.BlobKey``, compared and hashed as its text."""

    __slots__ = ("_key",)

    def __init__(self, blob_key: str | BlobKey) -> None:
        text = str(blob_key)
        if not isinstance(blob_key, str | BlobKey):
            raise TypeError(f"a BlobKey is made from text, got {type(blob_key).__name__}")
        self._key = text

    def __str__(self) -> str:
        return self._key

    def __repr__(self) -> str:
        return f"datastore_types.BlobKey({self._key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlobKey) and other._key == self._key

    def __lt__(self, other: BlobKey) -> bool:
        return self._key < other._key

    def __hash__(self) -> int:
        return hash((BlobKey, self._key))


# What kiln's blob keys are made of (as blobstore_svc checks them): other text names no blob.
_KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def could_be_key(text: str) -> bool:
    """Whether ``text`` could be a blob key of kiln's (1 to 200 URL-safe characters)."""
    return 0 < len(text) <= 200 and _KEY_CHARACTERS.issuperset(text)


def _key_text(blob: Any) -> str:
    """A BlobKey, a BlobInfo or text as the key's text."""
    if isinstance(blob, BlobInfo):
        return str(blob.key())
    if isinstance(blob, BlobKey | str):
        return str(blob)
    raise TypeError(f"expected a BlobKey, a BlobInfo or a string, got {type(blob).__name__}")


def _stub() -> blobstore_pb2_grpc.BlobstoreServiceStub:
    return _rpc.stub("BLOBSTORE", blobstore_pb2_grpc.BlobstoreServiceStub)


RPC = _rpc.UserRPC


def create_rpc(deadline: float | None = None, callback: Callable[[], Any] | None = None) -> RPC:
    """An RPC for the ``*_async`` functions."""
    return RPC(deadline=deadline, callback=callback)


def _start(rpc: RPC | None, method: Any, request: Any, hook: Callable[[Any], Any], *, now: bool = False) -> RPC:
    rpc = rpc or create_rpc()
    return rpc.make_call(method, request, hook=hook, table=_ERRORS, default_timeout=DEFAULT_DEADLINE, now=now)


# --- BlobInfo --------------------------------------------------------------------------------------------------

_PROPERTIES = ("content_type", "creation", "filename", "size", "md5_hash")


class BlobInfo:
    """A blob's information (read-only; App Engine's ``blobstore.BlobInfo``)."""

    def __init__(self, key: BlobKey | str, values: dict[str, Any] | None = None) -> None:
        self._key = BlobKey(key)
        values = values or {}
        unknown = set(values) - set(_PROPERTIES)
        if unknown:
            raise TypeError(f"BlobInfo has no properties {sorted(unknown)}")
        self._values = {name: values.get(name) for name in _PROPERTIES}

    @classmethod
    def _from_proto(cls, info: pb.BlobInfo) -> BlobInfo:
        creation = datetime.datetime.fromtimestamp(info.creation.ToMicroseconds() / 1e6, datetime.UTC)
        return cls(info.blob_key, {
            "content_type": info.content_type, "creation": creation.replace(tzinfo=None), "filename": info.filename,
            "size": info.size, "md5_hash": info.md5_hash})

    def key(self) -> BlobKey:
        return self._key

    @property
    def content_type(self) -> str:
        return str(self._values["content_type"] or "")

    @property
    def creation(self) -> datetime.datetime | None:
        found: datetime.datetime | None = self._values["creation"]
        return found

    @property
    def filename(self) -> str:
        return str(self._values["filename"] or "")

    @property
    def size(self) -> int:
        return int(self._values["size"] or 0)

    @property
    def md5_hash(self) -> str:
        return str(self._values["md5_hash"] or "")

    @property
    def gs_object_name(self) -> None:
        """Always ``None``: kiln has no Cloud Storage."""
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlobInfo) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"<BlobInfo {self._key} {self.filename!r} {self.size} bytes>"

    @classmethod
    def get(cls, blob_keys: Any) -> Any:
        """The BlobInfo of one key (``None`` if it names no blob), or a list for a list of keys."""
        return get(blob_keys)

    @classmethod
    def all(cls) -> BlobInfoQuery:
        """A query over every blob of the app."""
        return BlobInfoQuery()

    @classmethod
    def gql(cls, query_string: str, *args: Any, **kwds: Any) -> BlobInfoQuery:
        """A query from a GQL string without its ``SELECT * FROM __BlobInfo__``, e.g.
        ``BlobInfo.gql("WHERE size > :1 ORDER BY size DESC LIMIT 10", 1000)`` (App Engine's ``BlobInfo.gql``).

        Raises:
            kiln.gql.GqlError: the string is not GQL, or binds its arguments wrongly.
            ValueError: it filters or orders on something that is not a BlobInfo property, or names an ancestor.
        """
        bound = _gql.bind(_gql.parse(f"SELECT * FROM {BLOB_INFO_KIND} {query_string}"), args, kwds)
        if bound.ancestor is not None or bound.keys_only or bound.projection or bound.distinct:
            raise ValueError("BlobInfo.gql: only WHERE on properties, ORDER BY, LIMIT and OFFSET are supported")
        query = BlobInfoQuery()
        for cond in bound.conditions:
            query.filter(f"{cond.prop} {cond.op}", cond.value)
        for order in bound.orders:
            query.order(f"-{order.prop}" if order.descending else order.prop)
        query._limit, query._offset = bound.limit, bound.offset or 0
        return query

    @classmethod
    def kind(cls) -> str:
        return BLOB_INFO_KIND

    @classmethod
    def properties(cls) -> tuple[str, ...]:
        return _PROPERTIES

    def open(self, buffer_size: int = 131072, position: int = 0) -> BlobReader:
        """A :class:`BlobReader` over this blob."""
        return BlobReader(self, buffer_size=buffer_size, position=position)

    def delete(self) -> None:
        """Delete this blob."""
        delete(self._key)


def get(blob_keys: Any) -> Any:
    """The BlobInfo of one key (``None`` if it names no blob of the app), or a list (``None`` for each missing)."""
    single = not isinstance(blob_keys, list | tuple)
    keys = [_key_text(k) for k in ([blob_keys] if single else blob_keys)]
    found: dict[str, BlobInfo] = {}
    for start in range(0, len(keys), 1000):
        response = _rpc.call(_stub().GetBlobInfo, pb.GetBlobInfoRequest(blob_keys=keys[start:start + 1000]),
                             timeout=DEFAULT_DEADLINE, table=_ERRORS)
        found.update((i.blob_key, BlobInfo._from_proto(i)) for i in response.infos)
    infos = [found.get(k) for k in keys]
    return infos[0] if single else infos


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "IN": lambda value, choices: value in choices, "in": lambda value, choices: value in choices}


class BlobInfoQuery:
    """A query over the app's BlobInfos: filters and orders apply on the client, over the service's listing."""

    def __init__(self) -> None:
        self._filters: list[tuple[str, Callable[[Any, Any], bool], Any]] = []
        self._orders: list[tuple[str, bool]] = []
        self._limit: int | None = None  # GQL's LIMIT and OFFSET (BlobInfo.gql)
        self._offset = 0

    def filter(self, property_operator: str, value: Any) -> BlobInfoQuery:
        """Keep the blobs whose property compares true, e.g. ``filter("size >", 1000)``."""
        name, _, op = property_operator.strip().partition(" ")
        op = op.strip() or "="
        if name not in _PROPERTIES or op not in _OPERATORS:
            raise ValueError(f"cannot filter BlobInfo on {property_operator!r}: use one of {', '.join(_PROPERTIES)} "
                             f"with one of {' '.join(_OPERATORS)}")
        self._filters.append((name, _OPERATORS[op], value))
        return self

    def order(self, prop: str) -> BlobInfoQuery:
        """Order by a property (``-name`` for descending); the last order given breaks the ties of none."""
        name = prop.lstrip("-")
        if name not in _PROPERTIES:
            raise ValueError(f"cannot order BlobInfo by {prop!r}: use one of {', '.join(_PROPERTIES)}")
        self._orders.append((name, prop.startswith("-")))
        return self

    def _listing(self) -> Iterator[BlobInfo]:
        start_after = ""
        while True:
            page = _rpc.call(_stub().QueryBlobInfo, pb.QueryBlobInfoRequest(start_after=start_after),
                             timeout=DEFAULT_DEADLINE, table=_ERRORS)
            for info in page.infos:
                yield BlobInfo._from_proto(info)
            if not page.more or not page.infos:
                return
            start_after = page.infos[-1].blob_key

    def run(self) -> Iterator[BlobInfo]:
        """The matching BlobInfos, ordered (then cut by a GQL ``OFFSET`` and ``LIMIT``)."""
        found: Iterable[BlobInfo] = (info for info in self._listing()
                                     if all(op(getattr(info, name), value) for name, op, value in self._filters))
        if self._orders:
            ordered = list(found)
            for name, descending in reversed(self._orders):
                ordered.sort(key=lambda info, n=name: getattr(info, n), reverse=descending)  # type: ignore[misc]
            found = ordered
        stop = None if self._limit is None else self._offset + self._limit
        return itertools.islice(found, self._offset, stop)

    def __iter__(self) -> Iterator[BlobInfo]:
        return self.run()

    def fetch(self, limit: int | None, offset: int = 0) -> list[BlobInfo]:
        """Up to ``limit`` matches after skipping ``offset``."""
        out: list[BlobInfo] = []
        for index, info in enumerate(self.run()):
            if index < offset:
                continue
            if limit is not None and len(out) >= limit:
                break
            out.append(info)
        return out

    def get(self) -> BlobInfo | None:
        """The first match, or ``None``."""
        found = self.fetch(1)
        return found[0] if found else None

    def count(self, limit: int | None = None) -> int:
        """How many match (at most ``limit``)."""
        return len(self.fetch(limit))


# --- data ------------------------------------------------------------------------------------------------------

def fetch_data_async(blob: Any, start_index: int, end_index: int, rpc: RPC | None = None) -> RPC:
    """Start :func:`fetch_data`; ``get_result()`` returns the bytes."""
    key = _key_text(blob)
    if not isinstance(start_index, int) or isinstance(start_index, bool):
        raise TypeError("start_index must be integer.")
    if not isinstance(end_index, int) or isinstance(end_index, bool):
        raise TypeError("end_index must be integer.")
    if start_index < 0:
        raise DataIndexOutOfRangeError("May not fetch blob at negative index.")
    if end_index < start_index:
        raise DataIndexOutOfRangeError(f"Start index {start_index} > end index {end_index}")
    if end_index - start_index + 1 > MAX_BLOB_FETCH_SIZE:
        raise BlobFetchSizeTooLargeError(f"Blob fetch size is too large: {end_index - start_index + 1}")
    request = pb.FetchDataRequest(blob_key=key, start_index=start_index, end_index=end_index)
    return _start(rpc, _stub().FetchData, request, lambda response: response.data)


def fetch_data(blob: Any, start_index: int, end_index: int, rpc: RPC | None = None) -> bytes:
    """Bytes ``start_index`` to ``end_index`` (inclusive) of a blob; fewer when the range passes its end."""
    data: bytes = fetch_data_async(blob, start_index, end_index, rpc).get_result()
    return data


def delete_async(blob_keys: Any, rpc: RPC | None = None, _token: Any = None) -> RPC:
    """Start :func:`delete`."""
    keys = [_key_text(k) for k in (blob_keys if isinstance(blob_keys, list | tuple) else [blob_keys])]
    keys = [k for k in keys if could_be_key(k)]  # other text names no blob; deleting nothing is no error
    return _start(rpc, _stub().DeleteBlobs, pb.DeleteBlobsRequest(blob_keys=keys), lambda _response: None)


def delete(blob_keys: Any, rpc: RPC | None = None, _token: Any = None) -> None:
    """Delete one blob or a list of them and free their space; keys that name nothing are ignored."""
    delete_async(blob_keys, rpc).get_result()


def upload_url(environ: Any, upload_id: str) -> str:
    """The URL of upload ``upload_id``: on the host the request came to (``HTTP_HOST``), else the app's default
    version's (``DEFAULT_VERSION_HOSTNAME``); the SDK's service (kiln.sdk.blobstore) builds it here too."""
    host = environ.get("HTTP_HOST") or environ.get("DEFAULT_VERSION_HOSTNAME") or _rpc.setting(
        "DEFAULT_VERSION_HOSTNAME") or "localhost"
    scheme = environ.get("wsgi.url_scheme") or "http"
    return f"{scheme}://{host}{UPLOAD_PATH}{upload_id}"


def create_upload_url_async(success_path: str, max_bytes_per_blob: int | None = None,
                            max_bytes_total: int | None = None, rpc: RPC | None = None,
                            gs_bucket_name: str | None = None) -> RPC:
    """Start :func:`create_upload_url`."""
    if not isinstance(success_path, str):
        raise TypeError("success_path must be a string.")
    limits = {}
    for name, value in (("max_bytes_per_blob", max_bytes_per_blob), ("max_bytes_total", max_bytes_total)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be integer.")
        if value < 1:
            raise ValueError(f"{name} must be positive.")
        limits[name] = value
    if limits.get("max_bytes_total", 1 << 62) < limits.get("max_bytes_per_blob", 0):
        raise ValueError("max_bytes_total can not be less than max_upload_size_per_blob_bytes")
    if gs_bucket_name is not None:
        raise Error("kiln has no Cloud Storage: gs_bucket_name is not supported")
    environ = _runtime.request_environ() or {}
    request = pb.CreateUploadUrlRequest(success_path=success_path, **limits)
    return _start(rpc, _stub().CreateUploadUrl, request, lambda response: upload_url(environ, response.upload_url.id))


def create_upload_url(success_path: str, max_bytes_per_blob: int | None = None, max_bytes_total: int | None = None,
                      rpc: RPC | None = None, gs_bucket_name: str | None = None) -> str:
    """A one-time URL on the app's host that takes a multipart form of files, stores each as a blob and forwards
    the request to ``success_path``; good for 10 minutes."""
    url: str = create_upload_url_async(success_path, max_bytes_per_blob, max_bytes_total, rpc,
                                       gs_bucket_name).get_result()
    return url


# --- BlobReader ------------------------------------------------------------------------------------------------

class BlobReader:
    """A read-only file over a blob, reading ``buffer_size`` bytes a call (App Engine's ``blobstore.BlobReader``)."""

    def __init__(self, blob: Any, buffer_size: int = 131072, position: int = 0) -> None:
        if not 0 < buffer_size <= MAX_BLOB_FETCH_SIZE:
            raise ValueError(f"buffer_size must be 1 to {MAX_BLOB_FETCH_SIZE}, got {buffer_size}")
        if position < 0:
            raise ValueError(f"position must be 0 or more, got {position}")
        self._info: BlobInfo | None = blob if isinstance(blob, BlobInfo) else None
        self._key = _key_text(blob)
        self._buffer_size = buffer_size
        self._position = position
        self._buffer = b""
        self._buffer_at = 0
        self.closed = False

    @property
    def blob_info(self) -> BlobInfo:
        """The blob's info (read from the service once)."""
        if self._info is None:
            found = get(self._key)
            if found is None:
                raise BlobNotFoundError(f"no blob has the key {self._key!r}")
            self._info = found
        return self._info

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _fill(self) -> bytes:
        """The buffered bytes from the position on, refilled when none are left (empty at the end)."""
        offset = self._position - self._buffer_at
        if not 0 <= offset < len(self._buffer):
            self._buffer = fetch_data(self._key, self._position, self._position + self._buffer_size - 1)
            self._buffer_at, offset = self._position, 0
        return self._buffer[offset:]

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all the rest when negative)."""
        self._check_open()
        if size < 0:
            size = max(0, self.blob_info.size - self._position)
        parts: list[bytes] = []
        while size > 0:
            piece = self._fill()[:size]
            if not piece:
                break
            parts.append(piece)
            self._position += len(piece)
            size -= len(piece)
        return b"".join(parts)

    def readline(self, size: int = -1) -> bytes:
        """The next line with its ``\\n`` (at most ``size`` bytes when given)."""
        self._check_open()
        parts: list[bytes] = []
        taken = 0
        while size < 0 or taken < size:
            piece = self._fill()
            if not piece:
                break
            end = piece.find(b"\n") + 1 or len(piece)
            if size >= 0:
                end = min(end, size - taken)
            parts.append(piece[:end])
            taken += end
            self._position += end
            if parts[-1].endswith(b"\n"):
                break
        return b"".join(parts)

    def readlines(self, sizehint: int | None = None) -> list[bytes]:
        """The remaining lines (stopping once ``sizehint`` bytes were read, when given)."""
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if sizehint is not None and total >= sizehint:
                break
        return lines

    def seek(self, offset: int, whence: int = 0) -> None:
        """Move to ``offset`` from the start (0), the position (1) or the end (2)."""
        self._check_open()
        base = {0: 0, 1: self._position}.get(whence)
        if base is None:
            if whence != 2:
                raise ValueError(f"whence must be 0, 1 or 2, got {whence}")
            base = self.blob_info.size
        if base + offset < 0:
            raise OSError(22, "Invalid argument: a position before the start")
        self._position = base + offset

    def tell(self) -> int:
        """The position."""
        self._check_open()
        return self._position

    def close(self) -> None:
        self.closed = True
        self._buffer = b""

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def __enter__(self) -> typing.Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- uploads ---------------------------------------------------------------------------------------------------

_UPLOADS_KEY = "kiln.blobstore.uploads"  # where get_uploads keeps what it read, in the request's environ
_CREATION_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _upload_info(key: str | None, filename: str | None, inner: email.message.Message, field: str) -> BlobInfo:
    """A BlobInfo from a blob-info part's key, file name and inner headers (App Engine's upload info)."""
    values: dict[str, Any] = {"filename": filename}
    for name, header in (("content_type", "Content-Type"), ("size", "Content-Length"),
                         ("creation", UPLOAD_INFO_CREATION_HEADER), ("md5_hash", "Content-MD5")):
        values[name] = inner.get(header)
    missing = [n for n, v in values.items() if v is None] + ([] if key else ["blob_key"])
    if missing:
        raise BlobInfoParseError(f"Field {field} has no {missing[0]}.")
    try:
        values["size"] = int(values["size"])
    except ValueError:
        raise BlobInfoParseError(f"{values['size']} is not a valid value for {field} size.") from None
    try:
        values["creation"] = datetime.datetime.strptime(str(values["creation"]).strip(), _CREATION_FORMAT)
    except ValueError:
        raise CreationFormatError(f"Could not parse creation {values['creation']!r} in field {field}.") from None
    try:
        values["md5_hash"] = base64.urlsafe_b64decode(str(values["md5_hash"])).decode("ascii")
    except (ValueError, binascii.Error):
        raise BlobInfoParseError(f"Field {field} has a malformed Content-MD5.") from None
    values["content_type"] = str(values["content_type"])
    return BlobInfo(str(key), values)


def parse_blob_info(field_storage: Any) -> BlobInfo | None:
    """The BlobInfo of one blob-info part of an upload's forwarded form, as a ``cgi.FieldStorage`` (App Engine's
    ``blobstore.parse_blob_info``); ``None`` for ``None``.

    Raises:
        BlobInfoParseError: the part lacks the file name, the blob key or one of the upload headers.
    """
    if field_storage is None:
        return None
    field_storage.file.seek(0)
    inner = email.parser.Parser().parsestr(_text(field_storage.file.read()))
    field_storage.file.seek(0)
    return _upload_info(field_storage.type_options.get("blob-key"),
                        field_storage.disposition_options.get("filename"), inner, str(field_storage.name))


def _text(data: str | bytes) -> str:
    return data.decode("utf-8") if isinstance(data, bytes) else data


def _read_uploads(environ: Any) -> list[tuple[str, BlobInfo]]:
    """(field name, BlobInfo) of each blob-info part of the request's form, in order; the body is put back."""
    content_type = str(environ.get("CONTENT_TYPE", ""))
    if not content_type.lower().startswith("multipart/form-data"):
        return []
    stream = environ["wsgi.input"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = stream.read(length) if length > 0 else stream.read()
    environ["wsgi.input"] = io.BytesIO(body)  # the app may read the form itself too
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    found = []
    for part in message.iter_parts() if message.is_multipart() else ():
        if part.get_content_type() != "message/external-body" or part.get_param("blob-key") is None:
            continue
        field = str(part.get_param("name", header="content-disposition") or "")
        inner = part.get_payload()
        first = inner[0] if isinstance(inner, list) and inner else None
        headers = first if isinstance(first, email.message.Message) else email.message.Message()
        found.append((field, _upload_info(str(part.get_param("blob-key")), part.get_filename(), headers, field)))
    return found


def get_uploads(environ: Any, field_name: str | None = None) -> list[BlobInfo]:
    """The BlobInfo of each file uploaded with this request (the success handler of an upload URL), in form
    order; only field ``field_name``'s when given. The body is read once (the app may still read it).

    Raises:
        BlobInfoParseError: a blob-info part is malformed.
    """
    found = environ.get(_UPLOADS_KEY)
    if found is None:
        found = environ[_UPLOADS_KEY] = _read_uploads(environ)
    return [info for name, info in found if field_name is None or name == field_name]
