"""The Blobstore's cluster engine: blobs in 1 MiB chunks on Cassandra, as the control plane stores deployed files.

Tables (keyspace from config):

- ``blobstore_chunks``: a blob's chunks, one partition per ``(app_id, blob_key)``;
- ``blobstore_info``: one partition per app, one row per blob, written after every chunk — a blob without this
  row does not exist (a stream that ended early is invisible, and its chunks are removed);
- ``blobstore_pending``: a row per blob being written, from before its first chunk until its info row is in; rows
  older than :data:`PENDING_SWEEP_SECONDS` (their writer died) have their chunks removed when a replica starts;
- ``blobstore_uploads``: upload URL records (one partition each, with a TTL), taken once by a lightweight
  transaction;
- ``blobstore_serving``: a row per blob with an image serving URL (``images.get_serving_url``).

Deleting a blob deletes its info row, then its chunk partition (a partition tombstone: Cassandra frees the space at
compaction).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from blobstore_svc.errors import UploadUrlNotFoundError, UploadUrlUsedError
from blobstore_svc.store import (
    CHUNK_BYTES,
    UPLOAD_RECORD_KEEP_SECONDS,
    BlobRecord,
    BlobWriter,
    Store,
    UploadRecord,
)
from kiln_platform import cassandra
from kiln_platform.config import StorageConfig

log = logging.getLogger(__name__)

# A pending blob this old was left by a writer that died; its chunks are removed when a replica starts.
PENDING_SWEEP_SECONDS = 3600.0
# Chunk writes in flight for one blob (each up to 1 MiB).
WRITES_IN_FLIGHT = 4


def _tables(ks: str) -> list[str]:
    return [
        (f"CREATE TABLE IF NOT EXISTS {ks}.blobstore_chunks (app_id text, blob_key text, idx int, data blob, "
         "PRIMARY KEY ((app_id, blob_key), idx))"),
        (f"CREATE TABLE IF NOT EXISTS {ks}.blobstore_info (app_id text, blob_key text, content_type text, "
         "creation_us bigint, filename text, size bigint, md5_hash text, PRIMARY KEY (app_id, blob_key))"),
        (f"CREATE TABLE IF NOT EXISTS {ks}.blobstore_pending (app_id text, blob_key text, started_us bigint, "
         "PRIMARY KEY ((app_id, blob_key)))"),
        (f"CREATE TABLE IF NOT EXISTS {ks}.blobstore_uploads (app_id text, id text, success_path text, "
         "max_bytes_per_blob bigint, max_bytes_total bigint, expires_us bigint, used boolean, "
         "PRIMARY KEY ((app_id, id)))"),
        (f"CREATE TABLE IF NOT EXISTS {ks}.blobstore_serving (app_id text, blob_key text, "
         "PRIMARY KEY ((app_id, blob_key)))"),
    ]


_INFO_COLUMNS = "blob_key, content_type, creation_us, filename, size, md5_hash"


def _record(row: dict[str, Any]) -> BlobRecord:
    return BlobRecord(row["blob_key"], row["content_type"] or "", row["creation_us"] or 0, row["filename"] or "",
                      row["size"] or 0, row["md5_hash"] or "")


class CassandraStore(Store):
    """See module docstring."""

    def __init__(self, settings: StorageConfig) -> None:
        self._settings = settings
        self._ks_open: cassandra.Keyspace | None = None
        self._q: dict[str, Any] = {}

    @property
    def _ks(self) -> cassandra.Keyspace:
        if self._ks_open is None:
            raise RuntimeError("CassandraStore.open() was not called")
        return self._ks_open

    async def open(self) -> None:
        from cassandra.query import dict_factory

        self._ks_open = await cassandra.open_keyspace(self._settings, _tables, row_factory=dict_factory)
        ks = self._ks.name
        queries = {
            "put_chunk": f"INSERT INTO {ks}.blobstore_chunks (app_id, blob_key, idx, data) VALUES (?, ?, ?, ?)",
            "chunk": f"SELECT data FROM {ks}.blobstore_chunks WHERE app_id = ? AND blob_key = ? AND idx = ?",
            "drop_chunks": f"DELETE FROM {ks}.blobstore_chunks WHERE app_id = ? AND blob_key = ?",
            "put_info": f"INSERT INTO {ks}.blobstore_info (app_id, {_INFO_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            "info": f"SELECT {_INFO_COLUMNS} FROM {ks}.blobstore_info WHERE app_id = ? AND blob_key IN ?",
            "page": f"SELECT {_INFO_COLUMNS} FROM {ks}.blobstore_info WHERE app_id = ? AND blob_key > ? "
                    "ORDER BY blob_key LIMIT ?",
            "drop_info": f"DELETE FROM {ks}.blobstore_info WHERE app_id = ? AND blob_key = ?",
            "pend": f"INSERT INTO {ks}.blobstore_pending (app_id, blob_key, started_us) VALUES (?, ?, ?)",
            "unpend": f"DELETE FROM {ks}.blobstore_pending WHERE app_id = ? AND blob_key = ?",
            "pending": f"SELECT app_id, blob_key, started_us FROM {ks}.blobstore_pending",
            "put_upload": f"INSERT INTO {ks}.blobstore_uploads (app_id, id, success_path, max_bytes_per_blob, "
                          "max_bytes_total, expires_us, used) VALUES (?, ?, ?, ?, ?, ?, false) USING TTL ?",
            "take_upload": f"UPDATE {ks}.blobstore_uploads SET used = true WHERE app_id = ? AND id = ? "
                           "IF used = false",
            "put_serving": f"INSERT INTO {ks}.blobstore_serving (app_id, blob_key) VALUES (?, ?)",
            "drop_serving": f"DELETE FROM {ks}.blobstore_serving WHERE app_id = ? AND blob_key = ?",
            "serving": f"SELECT blob_key FROM {ks}.blobstore_serving WHERE app_id = ? AND blob_key = ?",
            "upload": f"SELECT id, success_path, max_bytes_per_blob, max_bytes_total, expires_us "
                      f"FROM {ks}.blobstore_uploads WHERE app_id = ? AND id = ?",
        }
        self._q = {name: self._ks.prepare(cql, consistency="LOCAL_QUORUM",
                                          serial="LOCAL_SERIAL" if name == "take_upload" else None)
                   for name, cql in queries.items()}
        await self._sweep()
        log.info("blobstore on cassandra: keyspace %s", ks)

    async def _exec(self, name: str, *params: Any) -> list[dict[str, Any]]:
        return await self._ks.execute(self._q[name], params)

    async def _sweep(self) -> None:
        """Remove the chunks of blobs whose writers died long ago (their pending rows are old)."""
        cutoff = (time.time() - PENDING_SWEEP_SECONDS) * 1_000_000
        for row in await self._exec("pending"):
            if (row["started_us"] or 0) < cutoff:
                log.info("removing blob data %s of app %s: it was never committed", row["blob_key"], row["app_id"])
                await self._exec("drop_chunks", row["app_id"], row["blob_key"])
                await self._exec("unpend", row["app_id"], row["blob_key"])

    async def begin(self, app: str, key: str) -> BlobWriter:
        await self._exec("pend", app, key, time.time_ns() // 1000)
        return _ChunkWriter(self, app, key)

    async def infos(self, app: str, keys: Sequence[str]) -> list[BlobRecord]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, BlobRecord] = {}
        for start in range(0, len(wanted), 100):
            for row in await self._exec("info", app, wanted[start:start + 100]):
                found[row["blob_key"]] = _record(row)
        return [found[k] for k in keys if k in found]

    async def page(self, app: str, start_after: str, limit: int) -> list[BlobRecord]:
        return [_record(row) for row in await self._exec("page", app, start_after, limit)]

    async def read(self, app: str, record: BlobRecord, start: int, end: int) -> AsyncIterator[bytes]:
        for index in range(start // CHUNK_BYTES, (end + CHUNK_BYTES - 1) // CHUNK_BYTES):
            rows = await self._exec("chunk", app, record.key, index)
            if not rows:
                return  # deleted meanwhile: the caller finds it short
            data: bytes = rows[0]["data"] or b""
            base = index * CHUNK_BYTES
            yield data[max(0, start - base):end - base]

    async def delete(self, app: str, keys: Sequence[str]) -> None:
        wanted = list(dict.fromkeys(keys))
        await asyncio.gather(*(self._exec("drop_info", app, k) for k in wanted))
        await asyncio.gather(*(self._exec("drop_serving", app, k) for k in wanted))
        await asyncio.gather(*(self._exec("drop_chunks", app, k) for k in wanted))

    async def put_upload(self, app: str, record: UploadRecord) -> None:
        ttl = max(1, int(record.expires_us / 1_000_000 - time.time() + UPLOAD_RECORD_KEEP_SECONDS))
        await self._exec("put_upload", app, record.id, record.success_path, record.max_bytes_per_blob,
                         record.max_bytes_total, record.expires_us, ttl)

    async def take_upload(self, app: str, upload_id: str) -> UploadRecord:
        applied = await self._exec("take_upload", app, upload_id)
        if not applied[0]["[applied]"]:
            if applied[0].get("used") is None:
                raise UploadUrlNotFoundError(f"no upload URL {upload_id!r}")
            raise UploadUrlUsedError(f"the upload URL {upload_id!r} was used already")
        row = (await self._exec("upload", app, upload_id))[0]
        return UploadRecord(row["id"], row["success_path"] or "", row["max_bytes_per_blob"] or 0,
                            row["max_bytes_total"] or 0, row["expires_us"] or 0)

    async def put_serving(self, app: str, key: str) -> None:
        await self._exec("put_serving", app, key)

    async def drop_serving(self, app: str, key: str) -> None:
        await self._exec("drop_serving", app, key)

    async def serving(self, app: str, key: str) -> bool:
        return bool(await self._exec("serving", app, key))

    async def close(self) -> None:
        if self._ks_open is not None:
            await self._ks_open.close()


class _ChunkWriter(BlobWriter):
    def __init__(self, store: CassandraStore, app: str, key: str) -> None:
        self._store, self._app, self._key = store, app, key
        self._writes: set[asyncio.Task[Any]] = set()

    async def write(self, index: int, chunk: bytes) -> None:
        while len(self._writes) >= WRITES_IN_FLIGHT:
            done, self._writes = await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        self._writes.add(asyncio.ensure_future(self._store._exec("put_chunk", self._app, self._key, index, chunk)))

    async def _drain(self) -> None:
        writes, self._writes = self._writes, set()
        if writes:
            for result in await asyncio.gather(*writes, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result

    async def commit(self, record: BlobRecord) -> None:
        await self._drain()
        await self._store._exec("put_info", self._app, record.key, record.content_type, record.creation_us,
                                record.filename, record.size, record.md5_hash)
        await self._store._exec("unpend", self._app, self._key)

    async def abort(self) -> None:
        try:
            await self._drain()
        except Exception as exc:  # noqa: BLE001 - the chunks that were written are removed all the same
            log.warning("blob %s of app %s: a chunk write failed while aborting: %s", self._key, self._app, exc)
        await self._store._exec("drop_chunks", self._app, self._key)
        await self._store._exec("unpend", self._app, self._key)
