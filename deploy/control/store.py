"""Where the control plane keeps apps, versions and files: the interface and the embedded engine.

Blobs (file contents) are stored per app under their SHA-256, so an app never
learns what another app uploaded and an unchanged file is uploaded once. A
blob becomes visible only when all of it is stored; a version only when every
blob it names is. The default version and its generation live with the
versions, so switching the default and deleting a version cannot race.

Blobs no version names any more (their versions were deleted or replaced by a
new minor) are deleted by :meth:`Store.collect_garbage`, except those stored
within a grace period (a deploy in progress has uploaded them but not yet
created its version). Creating a version and collecting are exclusive: a
version is never created naming a blob a collection deletes — it is refused
as not uploaded, and the CLI uploads the file again.

The embedded engine (``kiln dev``, one-machine installs) keeps SQLite rows in
``DATA_DIR/control.sqlite3`` and blobs as files under ``DATA_DIR/blobs``
(written to a temporary name, fsynced, renamed). :mod:`deploy.control.cassandra_store`
is the cluster engine.
"""

from __future__ import annotations

import abc
import asyncio
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from kiln.errors import FailedPreconditionError, NotFoundError
from kiln.pb.deploy.v1 import deploy_pb2 as pb

T = TypeVar("T")
CHUNK_BYTES = 1024 * 1024


def stored_form(version: pb.Version) -> bytes:
    """The version as stored: everything but ``is_default`` (which follows the app's default)."""
    copy = pb.Version()
    copy.CopyFrom(version)
    copy.ClearField("is_default")
    return copy.SerializeToString()


def loaded_form(data: bytes, default_version: str | None, *, files: bool = True) -> pb.Version:
    version = pb.Version.FromString(data)
    version.is_default = version.version_id == default_version
    if not files:
        del version.files[:]
    return version


class Store(abc.ABC):
    """The control plane's storage (see module docstring). Methods are safe to call concurrently."""

    @abc.abstractmethod
    async def missing_blobs(self, app_id: str, hashes: Sequence[str]) -> list[str]:
        """The hashes in ``hashes`` not stored for ``app_id``, in their order."""

    @abc.abstractmethod
    async def put_blob(self, app_id: str, sha256: str, data: bytes) -> None:
        """Store a blob whose hash the caller verified; storing it twice is harmless."""

    @abc.abstractmethod
    def read_blob(self, app_id: str, sha256: str) -> AsyncIterator[bytes]:
        """The blob in chunks of at most CHUNK_BYTES; NotFoundError if it is not stored."""

    @abc.abstractmethod
    async def create_version(self, version: pb.Version) -> pb.Version:
        """Store ``version`` as the next minor of its major version; returns it as stored.
        FailedPreconditionError (naming a file) if a blob it names is not stored."""

    @abc.abstractmethod
    async def get_version(self, app_id: str, version_id: str) -> pb.Version | None:
        """One version with its files (``version_id`` empty: the default), or None."""

    @abc.abstractmethod
    async def list_versions(self, app_id: str) -> list[pb.Version]:
        """The app's versions without their file lists, newest first."""

    @abc.abstractmethod
    async def set_default(self, app_id: str, version_id: str) -> int:
        """Make ``version_id`` the default; returns the new generation. NotFoundError if no such version."""

    @abc.abstractmethod
    async def delete_version(self, app_id: str, version_id: str) -> None:
        """Delete a version. NotFoundError if absent; FailedPreconditionError if it is the default."""

    @abc.abstractmethod
    async def list_apps(self) -> list[pb.AppInfo]:
        """Every app that has a version, with its default, sorted by id."""

    @abc.abstractmethod
    async def set_dispatch(self, app_id: str, dispatch_yaml: str) -> int:
        """Replace the app's dispatch.yaml (checked by the caller) as a whole; returns its new generation."""

    @abc.abstractmethod
    async def get_dispatch(self, app_id: str) -> tuple[str, int]:
        """The app's dispatch.yaml ("" when it has none) and its generation (0 when never set)."""

    @abc.abstractmethod
    async def collect_garbage(self, app_id: str, grace_seconds: float) -> int:
        """Delete the app's blobs that no version names and that were stored more than ``grace_seconds`` ago;
        returns how many. Exclusive with :meth:`create_version` (see module docstring)."""

    async def close(self) -> None:
        """Release connections."""


def no_version(app_id: str, version_id: str) -> NotFoundError:
    return NotFoundError(f"app {app_id!r} has no version {version_id!r}; kiln versions list shows its versions")


def not_uploaded(version: pb.Version, missing: Sequence[str]) -> FailedPreconditionError:
    absent = set(missing)
    paths = [f.path for f in version.files if f.sha256 in absent]
    return FailedPreconditionError(f"{len(paths)} file(s) not uploaded yet, e.g. {paths[0]!r}; upload them "
                                   "(UploadBlob) before creating the version")


def named_blobs(versions: Sequence[bytes]) -> set[str]:
    """The hashes the stored versions name."""
    return {f.sha256 for data in versions for f in pb.Version.FromString(data).files}


def default_refused(app_id: str, version_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(f"version {version_id!r} serves app {app_id!r} by default; make another version "
                                   "the default first (kiln versions set-default)")


class EmbeddedStore(Store):
    """SQLite rows and blob files under a data directory."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        self._dir = data_dir
        self._blobs = data_dir / "blobs"
        self._blobs.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)  # every app's files and the platform's records
        self._db = sqlite3.connect(data_dir / "control.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS apps (app_id TEXT PRIMARY KEY, default_version TEXT, generation INTEGER);
            CREATE TABLE IF NOT EXISTS versions (app_id TEXT, version_id TEXT, minor INTEGER, created REAL,
                                                 data BLOB, PRIMARY KEY (app_id, version_id));
            CREATE TABLE IF NOT EXISTS blobs (app_id TEXT, sha256 TEXT, size INTEGER, stored REAL,
                                              PRIMARY KEY (app_id, sha256));
        """)
        if "stored" not in {row[1] for row in self._db.execute("PRAGMA table_info(blobs)")}:
            self._db.execute("ALTER TABLE blobs ADD COLUMN stored REAL")  # stores made before collection
        if "dispatch_yaml" not in {row[1] for row in self._db.execute("PRAGMA table_info(apps)")}:
            self._db.execute("ALTER TABLE apps ADD COLUMN dispatch_yaml TEXT")  # stores made before dispatch.yaml
            self._db.execute("ALTER TABLE apps ADD COLUMN dispatch_generation INTEGER")
        self._lock = threading.Lock()

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(*args)
        return await asyncio.to_thread(locked)

    async def _transaction(self, fn: Any) -> Any:
        """Run ``fn(db)`` in one write transaction (BEGIN IMMEDIATE: writers queue, readers go on)."""
        def run() -> Any:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
                self._db.execute("COMMIT")
                return out
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return await self._run(run)

    def _path(self, app_id: str, sha256: str) -> pathlib.Path:
        return self._blobs / app_id / sha256[:2] / sha256

    def _missing(self, app_id: str, hashes: Sequence[str]) -> list[str]:
        have: set[str] = set()
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), 500):
            part = unique[i:i + 500]
            rows = self._db.execute(f"SELECT sha256 FROM blobs WHERE app_id = ? AND sha256 IN "
                                    f"({','.join('?' * len(part))})", (app_id, *part))
            have.update(r[0] for r in rows)
        return [h for h in unique if h not in have]

    async def missing_blobs(self, app_id: str, hashes: Sequence[str]) -> list[str]:
        result: list[str] = await self._run(self._missing, app_id, hashes)
        return result

    async def put_blob(self, app_id: str, sha256: str, data: bytes) -> None:
        path = self._path(app_id, sha256)
        tmp = path.with_name(f".{sha256}.{os.getpid()}.{threading.get_ident()}.tmp")

        def write() -> None:  # outside the lock: files are written under unique names
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        def publish() -> None:  # under the lock, so a collection never deletes the file between these two steps
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(path)
            self._db.execute("INSERT INTO blobs (app_id, sha256, size, stored) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (app_id, sha256) DO UPDATE SET stored = excluded.stored",
                             (app_id, sha256, len(data), time.time()))

        await asyncio.to_thread(write)
        await self._run(publish)

    async def read_blob(self, app_id: str, sha256: str) -> AsyncIterator[bytes]:
        known = await self._run(lambda: self._db.execute(
            "SELECT size FROM blobs WHERE app_id = ? AND sha256 = ?", (app_id, sha256)).fetchone())
        if known is None:
            raise NotFoundError(f"app {app_id!r} has no file with sha256 {sha256}")
        try:
            f = open(self._path(app_id, sha256), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"app {app_id!r} has no file with sha256 {sha256}") from None
        with f:
            while True:
                chunk = await asyncio.to_thread(f.read, CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk

    def _default(self, app_id: str) -> tuple[str | None, int]:
        row = self._db.execute("SELECT default_version, generation FROM apps WHERE app_id = ?", (app_id,)).fetchone()
        return (row[0], row[1] or 0) if row else (None, 0)

    @staticmethod
    def _require(db: sqlite3.Connection, app_id: str, version_id: str) -> None:
        if db.execute("SELECT 1 FROM versions WHERE app_id = ? AND version_id = ?",
                      (app_id, version_id)).fetchone() is None:
            raise no_version(app_id, version_id)

    async def create_version(self, version: pb.Version) -> pb.Version:
        def run(db: sqlite3.Connection) -> pb.Version:
            missing = self._missing(version.app_id, [f.sha256 for f in version.files])
            if missing:
                raise not_uploaded(version, missing)
            row = db.execute("SELECT minor FROM versions WHERE app_id = ? AND version_id = ?",
                             (version.app_id, version.version_id)).fetchone()
            stored = pb.Version()
            stored.CopyFrom(version)
            stored.minor = (row[0] if row else 0) + 1
            stored.created_at.FromNanoseconds(time.time_ns())
            db.execute("INSERT OR IGNORE INTO apps (app_id, generation) VALUES (?, 0)", (version.app_id,))
            db.execute("INSERT OR REPLACE INTO versions (app_id, version_id, minor, created, data) "
                       "VALUES (?, ?, ?, ?, ?)", (version.app_id, version.version_id, stored.minor,
                                                  time.time(), stored_form(stored)))
            stored.is_default = self._default(version.app_id)[0] == version.version_id
            return stored
        result: pb.Version = await self._transaction(run)
        return result

    async def get_version(self, app_id: str, version_id: str) -> pb.Version | None:
        def run() -> pb.Version | None:
            default = self._default(app_id)[0]
            wanted = version_id or default
            if not wanted:
                return None
            row = self._db.execute("SELECT data FROM versions WHERE app_id = ? AND version_id = ?",
                                   (app_id, wanted)).fetchone()
            return loaded_form(row[0], default) if row else None
        result: pb.Version | None = await self._run(run)
        return result

    async def list_versions(self, app_id: str) -> list[pb.Version]:
        def run() -> list[pb.Version]:
            default = self._default(app_id)[0]
            rows = self._db.execute("SELECT data FROM versions WHERE app_id = ? ORDER BY created DESC", (app_id,))
            return [loaded_form(r[0], default, files=False) for r in rows]
        result: list[pb.Version] = await self._run(run)
        return result

    async def set_default(self, app_id: str, version_id: str) -> int:
        def run(db: sqlite3.Connection) -> int:
            self._require(db, app_id, version_id)
            generation = self._default(app_id)[1] + 1
            db.execute("UPDATE apps SET default_version = ?, generation = ? WHERE app_id = ?",
                       (version_id, generation, app_id))
            return generation
        result: int = await self._transaction(run)
        return result

    async def delete_version(self, app_id: str, version_id: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            self._require(db, app_id, version_id)
            if self._default(app_id)[0] == version_id:
                raise default_refused(app_id, version_id)
            db.execute("DELETE FROM versions WHERE app_id = ? AND version_id = ?", (app_id, version_id))
        await self._transaction(run)

    async def list_apps(self) -> list[pb.AppInfo]:
        def run() -> list[pb.AppInfo]:
            rows = self._db.execute("SELECT app_id, default_version, generation, dispatch_generation FROM apps "
                                    "ORDER BY app_id")
            return [pb.AppInfo(app_id=r[0], default_version=r[1] or "", generation=r[2] or 0,
                               dispatch_generation=r[3] or 0) for r in rows]
        result: list[pb.AppInfo] = await self._run(run)
        return result

    async def set_dispatch(self, app_id: str, dispatch_yaml: str) -> int:
        def run(db: sqlite3.Connection) -> int:
            db.execute("INSERT OR IGNORE INTO apps (app_id, generation) VALUES (?, 0)", (app_id,))
            row = db.execute("SELECT dispatch_generation FROM apps WHERE app_id = ?", (app_id,)).fetchone()
            generation = (row[0] or 0) + 1
            db.execute("UPDATE apps SET dispatch_yaml = ?, dispatch_generation = ? WHERE app_id = ?",
                       (dispatch_yaml, generation, app_id))
            return generation
        result: int = await self._transaction(run)
        return result

    async def get_dispatch(self, app_id: str) -> tuple[str, int]:
        def run() -> tuple[str, int]:
            row = self._db.execute("SELECT dispatch_yaml, dispatch_generation FROM apps WHERE app_id = ?",
                                   (app_id,)).fetchone()
            return (row[0] or "", row[1] or 0) if row else ("", 0)
        result: tuple[str, int] = await self._run(run)
        return result

    async def collect_garbage(self, app_id: str, grace_seconds: float) -> int:
        def run() -> int:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                named = named_blobs([r[0] for r in self._db.execute(
                    "SELECT data FROM versions WHERE app_id = ?", (app_id,))])
                rows = self._db.execute("SELECT sha256 FROM blobs WHERE app_id = ? AND coalesce(stored, 0) < ?",
                                        (app_id, time.time() - grace_seconds)).fetchall()
                unused = [r[0] for r in rows if r[0] not in named]
                self._db.executemany("DELETE FROM blobs WHERE app_id = ? AND sha256 = ?",
                                     [(app_id, h) for h in unused])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for h in unused:  # still under the lock: put_blob cannot publish the same file meanwhile
                self._path(app_id, h).unlink(missing_ok=True)
            return len(unused)
        result: int = await self._run(run)
        return result

    async def close(self) -> None:
        await self._run(self._db.close)
