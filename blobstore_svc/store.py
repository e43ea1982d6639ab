"""Where blobs live: the storage protocol, its domain records, and the embedded engine (SQLite rows and one file
per blob under the data directory).

A blob exists only once its info row is written, and the row is written last: the engine first stores the data
(:class:`BlobWriter`), then :meth:`BlobWriter.commit` adds the row. A writer that is aborted (the stream ended early
or failed) removes what it wrote; one left behind by a crash is swept when the service starts. Deleting a blob
removes its row, then its data, so the space is freed, not just hidden.

Every method takes the calling app's id: an app's rows and data are under its own id, so another app's key names
nothing.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import os
import pathlib
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from blobstore_svc.errors import UploadUrlNotFoundError, UploadUrlUsedError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Blobs are stored in chunks of this size (the last one shorter); a read finds a byte's chunk by division.
CHUNK_BYTES = 1024 * 1024
# Upload URL records are kept this long after they expire (a late consumer is told "expired", not "not found").
UPLOAD_RECORD_KEEP_SECONDS = 24 * 3600
# What the service's keys are made of (and all a key may be made of; longer or other keys are invalid). No dots:
# a key is also a file name of the embedded engine.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,200}")
_APP_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:~-]{0,199}")


def new_key() -> str:
    """A new blob key: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True)
class BlobRecord:
    """One stored blob's info."""

    key: str
    content_type: str
    creation_us: int
    filename: str
    size: int
    md5_hash: str


@dataclasses.dataclass(frozen=True)
class UploadRecord:
    """A one-time upload URL."""

    id: str
    success_path: str
    max_bytes_per_blob: int
    max_bytes_total: int
    expires_us: int


class BlobWriter(abc.ABC):
    """The data of one blob being stored: chunks in order, then :meth:`commit` (the row) or :meth:`abort`."""

    @abc.abstractmethod
    async def write(self, index: int, chunk: bytes) -> None:
        """Store chunk ``index`` (``CHUNK_BYTES`` long except the last)."""

    @abc.abstractmethod
    async def commit(self, record: BlobRecord) -> None:
        """Make the blob exist: its row, written after all its data."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Remove what was written; the blob never existed."""


class Store(abc.ABC):
    """The Blobstore's storage. Methods are safe to call concurrently."""

    async def open(self) -> None:
        """Connect and sweep what an earlier process left half-written."""

    @abc.abstractmethod
    async def begin(self, app: str, key: str) -> BlobWriter:
        """Start storing a new blob ``key`` of ``app``."""

    @abc.abstractmethod
    async def infos(self, app: str, keys: Sequence[str]) -> list[BlobRecord]:
        """The records of the keys that name blobs of ``app``, in the order given."""

    @abc.abstractmethod
    async def page(self, app: str, start_after: str, limit: int) -> list[BlobRecord]:
        """Up to ``limit`` records of ``app`` in key order, after ``start_after``."""

    @abc.abstractmethod
    def read(self, app: str, record: BlobRecord, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive, within the blob) of a blob, in pieces of at most CHUNK_BYTES."""

    @abc.abstractmethod
    async def delete(self, app: str, keys: Sequence[str]) -> None:
        """Delete the blobs (their rows, then their data); keys that name nothing are ignored."""

    @abc.abstractmethod
    async def put_upload(self, app: str, record: UploadRecord) -> None:
        """Record an upload URL."""

    @abc.abstractmethod
    async def take_upload(self, app: str, upload_id: str) -> UploadRecord:
        """Mark an upload URL used and return it; exactly one caller ever gets it.

        Raises:
            UploadUrlNotFoundError: no such record for ``app``.
            UploadUrlUsedError: it was taken before.
        """

    @abc.abstractmethod
    async def put_serving(self, app: str, key: str) -> None:
        """Mark blob ``key`` of ``app`` as served by an image serving URL."""

    @abc.abstractmethod
    async def drop_serving(self, app: str, key: str) -> None:
        """Remove the mark (none: nothing to do)."""

    @abc.abstractmethod
    async def serving(self, app: str, key: str) -> bool:
        """Whether blob ``key`` of ``app`` is marked (the blob itself may be gone: check its record too)."""

    async def close(self) -> None:
        """Release connections."""


def check_app(app: str) -> str:
    """``app`` if it is safe as a path component (the token's app ids always are)."""
    if not _APP_PATTERN.fullmatch(app):
        raise ValueError(f"app id {app!r} is not storable")
    return app


class EmbeddedStore(Store):
    """SQLite rows (``blobstore.sqlite3``) and one file per blob (``blobs/APP/KE/KEY``) under ``data_dir``.

    A blob's data is written to ``incoming/`` and renamed into place before its row is inserted; ``incoming/`` is
    emptied when the store opens, and files without a row (a crash between rename and insert) are removed then.
    """

    def __init__(self, data_dir: pathlib.Path) -> None:
        self._dir = data_dir
        self._blobs = data_dir / "blobs"
        self._incoming = data_dir / "incoming"
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir.chmod(0o700)  # every app's blobs
        self._blobs.mkdir(exist_ok=True)
        shutil.rmtree(self._incoming, ignore_errors=True)
        self._incoming.mkdir()
        db = sqlite3.connect(self._dir / "blobstore.sqlite3", check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript("""
            CREATE TABLE IF NOT EXISTS blobs (app_id TEXT, blob_key TEXT, content_type TEXT, creation_us INTEGER,
                                              filename TEXT, size INTEGER, md5_hash TEXT,
                                              PRIMARY KEY (app_id, blob_key));
            CREATE TABLE IF NOT EXISTS uploads (app_id TEXT, id TEXT, success_path TEXT, max_bytes_per_blob INTEGER,
                                                max_bytes_total INTEGER, expires_us INTEGER, used INTEGER,
                                                PRIMARY KEY (app_id, id));
            CREATE TABLE IF NOT EXISTS serving_urls (app_id TEXT, blob_key TEXT, PRIMARY KEY (app_id, blob_key));
        """)
        self._db = db
        self._sweep(db)

    def _sweep(self, db: sqlite3.Connection) -> None:
        """Remove blob files that have no row (stored by a process that died before its commit)."""
        for app_dir in self._blobs.iterdir():
            known = {row[0] for row in db.execute("SELECT blob_key FROM blobs WHERE app_id = ?", (app_dir.name,))}
            for path in app_dir.glob("*/*"):
                if path.name not in known:
                    log.info("removing blob data %s of app %s: it was never committed", path.name, app_dir.name)
                    path.unlink(missing_ok=True)
        db.execute("DELETE FROM uploads WHERE expires_us < ?",
                   ((time.time() - UPLOAD_RECORD_KEEP_SECONDS) * 1_000_000,))

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            if self._db is None:
                raise RuntimeError("EmbeddedStore.open() was not called")
            with self._lock:
                return fn(self._db)
        return await asyncio.to_thread(locked)

    def _path(self, app: str, key: str) -> pathlib.Path:
        return self._blobs / check_app(app) / key[:2] / key

    async def begin(self, app: str, key: str) -> BlobWriter:
        final = self._path(app, key)
        incoming = self._incoming / f"{check_app(app)}.{key}"
        handle = await asyncio.to_thread(open, incoming, "xb")
        return _FileWriter(self, handle, incoming, final, app)

    async def _commit(self, app: str, record: BlobRecord, incoming: pathlib.Path, final: pathlib.Path) -> None:
        def place() -> None:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(incoming, final)
        await asyncio.to_thread(place)
        try:
            await self._run(lambda db: db.execute(
                "INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (app, record.key, record.content_type, record.creation_us, record.filename, record.size,
                 record.md5_hash)))
        except BaseException:
            final.unlink(missing_ok=True)
            raise

    async def infos(self, app: str, keys: Sequence[str]) -> list[BlobRecord]:
        wanted = list(dict.fromkeys(keys))

        def select(db: sqlite3.Connection) -> dict[str, BlobRecord]:
            found: dict[str, BlobRecord] = {}
            for start in range(0, len(wanted), 500):
                part = wanted[start:start + 500]
                marks = ",".join("?" * len(part))
                for row in db.execute(f"SELECT blob_key, content_type, creation_us, filename, size, md5_hash "
                                      f"FROM blobs WHERE app_id = ? AND blob_key IN ({marks})", (app, *part)):
                    found[row[0]] = BlobRecord(*row)
            return found
        found = await self._run(select)
        return [found[k] for k in keys if k in found]

    async def page(self, app: str, start_after: str, limit: int) -> list[BlobRecord]:
        rows = await self._run(lambda db: db.execute(
            "SELECT blob_key, content_type, creation_us, filename, size, md5_hash FROM blobs "
            "WHERE app_id = ? AND blob_key > ? ORDER BY blob_key LIMIT ?", (app, start_after, limit)).fetchall())
        return [BlobRecord(*row) for row in rows]

    async def read(self, app: str, record: BlobRecord, start: int, end: int) -> AsyncIterator[bytes]:
        # The file stays readable once open, even if the blob is deleted meanwhile (POSIX unlink).
        try:
            handle = await asyncio.to_thread(open, self._path(app, record.key), "rb")
        except FileNotFoundError:
            return  # deleted between its row's read and here: the caller finds it short
        try:
            await asyncio.to_thread(handle.seek, start)
            left = end - start
            while left > 0:
                piece = await asyncio.to_thread(handle.read, min(left, CHUNK_BYTES))
                if not piece:
                    return
                left -= len(piece)
                yield piece
        finally:
            handle.close()

    async def delete(self, app: str, keys: Sequence[str]) -> None:
        wanted = list(dict.fromkeys(keys))

        def drop(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM blobs WHERE app_id = ? AND blob_key = ?", [(app, k) for k in wanted])
                db.executemany("DELETE FROM serving_urls WHERE app_id = ? AND blob_key = ?",
                               [(app, k) for k in wanted])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        await self._run(drop)

        def unlink() -> None:
            for key in wanted:
                self._path(app, key).unlink(missing_ok=True)
        await asyncio.to_thread(unlink)

    async def put_upload(self, app: str, record: UploadRecord) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, 0)",
            (app, record.id, record.success_path, record.max_bytes_per_blob, record.max_bytes_total,
             record.expires_us)))

    async def take_upload(self, app: str, upload_id: str) -> UploadRecord:
        def take(db: sqlite3.Connection) -> UploadRecord:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT id, success_path, max_bytes_per_blob, max_bytes_total, expires_us, used "
                                 "FROM uploads WHERE app_id = ? AND id = ?", (app, upload_id)).fetchone()
                if row is not None and not row[5]:
                    db.execute("UPDATE uploads SET used = 1 WHERE app_id = ? AND id = ?", (app, upload_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if row is None:
                raise UploadUrlNotFoundError(f"no upload URL {upload_id!r}")
            if row[5]:
                raise UploadUrlUsedError(f"the upload URL {upload_id!r} was used already")
            return UploadRecord(*row[:5])
        return await self._run(take)

    async def put_serving(self, app: str, key: str) -> None:
        await self._run(lambda db: db.execute("INSERT OR IGNORE INTO serving_urls VALUES (?, ?)", (app, key)))

    async def drop_serving(self, app: str, key: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM serving_urls WHERE app_id = ? AND blob_key = ?",
                                              (app, key)))

    async def serving(self, app: str, key: str) -> bool:
        row = await self._run(lambda db: db.execute("SELECT 1 FROM serving_urls WHERE app_id = ? AND blob_key = ?",
                                                    (app, key)).fetchone())
        return row is not None

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with self._lock:
                db.close()


class _FileWriter(BlobWriter):
    def __init__(self, store: EmbeddedStore, handle: Any, incoming: pathlib.Path, final: pathlib.Path,
                 app: str) -> None:
        self._store, self._handle, self._incoming, self._final, self._app = store, handle, incoming, final, app

    async def write(self, index: int, chunk: bytes) -> None:
        await asyncio.to_thread(self._handle.write, chunk)

    async def commit(self, record: BlobRecord) -> None:
        def flush() -> None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        await asyncio.to_thread(flush)
        await self._store._commit(self._app, record, self._incoming, self._final)

    async def abort(self) -> None:
        self._handle.close()
        self._incoming.unlink(missing_ok=True)
