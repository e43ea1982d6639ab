"""The control plane's cluster engine: versions, defaults and blobs on Cassandra.

Tables (keyspace from config):

- ``versions``: one partition per app, one row per major version (its minor,
  creation time and the serialized :class:`Version`); the default version and
  its generation are *static* columns of the same partition, so switching the
  default and deleting a version are lightweight transactions on one partition
  and cannot race (a deleted version is never the default).
- ``blob_chunks``: a blob's 1 MiB chunks, partitioned by ``(app, sha256)``;
- ``blobs``: the blob's size and chunk count, written after every chunk — a
  blob without this row is not stored (an interrupted upload is invisible and
  uploaded again);
- ``app_blobs``: one partition per app listing its blobs with when they were
  stored (written before the ``blobs`` row), for collecting unused ones.

The app's ``dispatch.yaml`` and its generation are static columns of its versions partition too, replaced whole
by a lightweight transaction on the generation.

Creating a version and collecting garbage exclude each other through the
static ``gc_epoch``/``gc_until`` of the app's versions partition: a collection
takes it (epoch + 1, a lease), deletes, and releases it (epoch + 1 again); a
version is created only with a lightweight transaction that the epoch it read
before checking its blobs is still current and no collection holds the lease.
Deletions carry the timestamp of the blob's own writes (``USING TIMESTAMP``),
so an upload of the same content that races a collection survives it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from deploy.control.store import (
    CHUNK_BYTES, Store, default_refused, loaded_form, named_blobs, no_version, not_uploaded, stored_form)
from kiln_platform import cassandra
from kiln_platform.config import StorageConfig
from kiln.errors import ConflictError, NotFoundError
from kiln.pb.deploy.v1 import deploy_pb2 as pb

log = logging.getLogger(__name__)

# Compare-and-set loops give up after this many lost races (another deploy kept winning).
CAS_ATTEMPTS = 20
# A collection holds the app for at most this long (it stops deleting before; a dead one's lease runs out).
GC_LEASE_SECONDS = 120.0


def _tables(ks: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {ks}.versions (app_id text, version_id text, minor bigint, created_us bigint, "
        "data blob, default_version text STATIC, generation bigint STATIC, gc_epoch bigint STATIC, "
        "gc_until_us bigint STATIC, PRIMARY KEY (app_id, version_id))",
        f"CREATE TABLE IF NOT EXISTS {ks}.blob_chunks (app_id text, sha256 text, idx int, data blob, "
        "PRIMARY KEY ((app_id, sha256), idx))",
        f"CREATE TABLE IF NOT EXISTS {ks}.blobs (app_id text, sha256 text, size bigint, chunks int, "
        "PRIMARY KEY ((app_id, sha256)))",
        f"CREATE TABLE IF NOT EXISTS {ks}.app_blobs (app_id text, sha256 text, stored_us bigint, "
        "PRIMARY KEY (app_id, sha256))",
    ]


# Columns added after the first release: (table, column, type).
_ADDED_COLUMNS = [("versions", "gc_epoch", "bigint static"), ("versions", "gc_until_us", "bigint static"),
                  ("versions", "dispatch_yaml", "text static"), ("versions", "dispatch_generation", "bigint static")]


class CassandraStore(Store):
    """See module docstring. Call :meth:`open` first."""

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
        for table, column, kind in _ADDED_COLUMNS:
            present = await self._ks.execute(
                "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s AND "
                "table_name = %s AND column_name = %s", (self._ks.name, table, column))
            if not present:
                await self._ks.execute(f"ALTER TABLE {self._ks.name}.{table} ADD {column} {kind}",
                                       timeout=cassandra.SCHEMA_TIMEOUT_SECONDS)
        ks = self._ks.name
        lwt = {"insert", "replace", "set_default", "delete", "gc_set", "set_dispatch"}
        queries = {
            "have": f"SELECT sha256 FROM {ks}.blobs WHERE app_id = ? AND sha256 = ?",
            "blob": f"SELECT size, chunks FROM {ks}.blobs WHERE app_id = ? AND sha256 = ?",
            "put_chunk": f"INSERT INTO {ks}.blob_chunks (app_id, sha256, idx, data) VALUES (?, ?, ?, ?)",
            "put_blob": f"INSERT INTO {ks}.blobs (app_id, sha256, size, chunks) VALUES (?, ?, ?, ?)",
            "list_blob": f"INSERT INTO {ks}.app_blobs (app_id, sha256, stored_us) VALUES (?, ?, ?)",
            "app_blobs": f"SELECT sha256, stored_us, WRITETIME(stored_us) AS written FROM {ks}.app_blobs "
                          "WHERE app_id = ?",
            "blob_written": f"SELECT WRITETIME(size) AS written FROM {ks}.blobs "
                             "WHERE app_id = ? AND sha256 = ?",
            "drop_blob": f"DELETE FROM {ks}.blobs USING TIMESTAMP ? WHERE app_id = ? AND sha256 = ?",
            "drop_chunks": f"DELETE FROM {ks}.blob_chunks USING TIMESTAMP ? WHERE app_id = ? AND sha256 = ?",
            "unlist_blob": f"DELETE FROM {ks}.app_blobs USING TIMESTAMP ? WHERE app_id = ? AND sha256 = ?",
            "gc_state": f"SELECT gc_epoch, gc_until_us FROM {ks}.versions WHERE app_id = ? LIMIT 1",
            "gc_set": f"UPDATE {ks}.versions SET gc_epoch = ?, gc_until_us = ? WHERE app_id = ? "
                       "IF gc_epoch = ? AND gc_until_us = ?",
            "all_files": f"SELECT data FROM {ks}.versions WHERE app_id = ?",
            "chunk": f"SELECT data FROM {ks}.blob_chunks WHERE app_id = ? AND sha256 = ? AND idx = ?",
            "minor": f"SELECT minor FROM {ks}.versions WHERE app_id = ? AND version_id = ?",
            "insert": f"UPDATE {ks}.versions SET minor = ?, created_us = ?, data = ? "
                       "WHERE app_id = ? AND version_id = ? IF minor = null AND gc_epoch = ? "
                       "AND gc_until_us = null",
            "replace": f"UPDATE {ks}.versions SET minor = ?, created_us = ?, data = ? "
                        "WHERE app_id = ? AND version_id = ? IF minor = ? AND gc_epoch = ? "
                        "AND gc_until_us = null",
            "get": f"SELECT data, default_version FROM {ks}.versions WHERE app_id = ? AND version_id = ?",
            "default": f"SELECT default_version, generation FROM {ks}.versions WHERE app_id = ? LIMIT 1",
            "list": f"SELECT data, created_us, default_version FROM {ks}.versions WHERE app_id = ?",
            "set_default": f"UPDATE {ks}.versions SET default_version = ?, generation = ? "
                            "WHERE app_id = ? AND version_id = ? IF minor > 0 AND generation = ?",
            "delete": f"DELETE FROM {ks}.versions WHERE app_id = ? AND version_id = ? "
                       "IF minor > 0 AND default_version != ?",
            "apps": f"SELECT DISTINCT app_id, default_version, generation, dispatch_generation FROM {ks}.versions",
            "dispatch": f"SELECT dispatch_yaml, dispatch_generation FROM {ks}.versions WHERE app_id = ? LIMIT 1",
            "set_dispatch": f"UPDATE {ks}.versions SET dispatch_yaml = ?, dispatch_generation = ? WHERE app_id = ? "
                             "IF dispatch_generation = ?",
        }
        self._q = {name: self._ks.prepare(cql, consistency="LOCAL_QUORUM",
                                          serial="LOCAL_SERIAL" if name in lwt else None)
                   for name, cql in queries.items()}
        log.info("control plane on cassandra: keyspace %s", ks)

    async def _exec(self, name: str, *params: Any) -> list[dict[str, Any]]:
        return await self._ks.execute(self._q[name], params)

    async def missing_blobs(self, app_id: str, hashes: Sequence[str]) -> list[str]:
        unique = list(dict.fromkeys(hashes))
        sem = asyncio.Semaphore(64)

        async def has(h: str) -> bool:
            async with sem:
                return bool(await self._exec("have", app_id, h))
        found = await asyncio.gather(*(has(h) for h in unique))
        return [h for h, ok in zip(unique, found) if not ok]

    async def put_blob(self, app_id: str, sha256: str, data: bytes) -> None:
        chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
        await asyncio.gather(*(self._exec("put_chunk", app_id, sha256, i, c) for i, c in enumerate(chunks)))
        await self._exec("list_blob", app_id, sha256, time.time_ns() // 1000)
        await self._exec("put_blob", app_id, sha256, len(data), len(chunks))

    async def read_blob(self, app_id: str, sha256: str) -> AsyncIterator[bytes]:
        rows = await self._exec("blob", app_id, sha256)
        if not rows:
            raise NotFoundError(f"app {app_id!r} has no file with sha256 {sha256}")
        for i in range(rows[0]["chunks"]):
            chunk = await self._exec("chunk", app_id, sha256, i)
            if not chunk:
                raise NotFoundError(f"app {app_id!r}: file {sha256} lost chunk {i}")
            yield chunk[0]["data"] or b""

    async def _default(self, app_id: str) -> tuple[str | None, int | None]:
        rows = await self._exec("default", app_id)
        return (rows[0]["default_version"], rows[0]["generation"]) if rows else (None, None)

    async def _gc_state(self, app_id: str) -> tuple[int | None, int | None]:
        rows = await self._exec("gc_state", app_id)
        return (rows[0]["gc_epoch"], rows[0]["gc_until_us"]) if rows else (None, None)

    async def create_version(self, version: pb.Version) -> pb.Version:
        stored = pb.Version()
        stored.CopyFrom(version)
        hashes = [f.sha256 for f in version.files]
        lost = 0
        while lost < CAS_ATTEMPTS:
            epoch, until = await self._gc_state(version.app_id)
            if until is not None:  # a collection holds the app: wait for it, or break its lease if it died
                if until > time.time_ns() // 1000:
                    await asyncio.sleep(0.2)
                else:
                    await self._exec("gc_set", (epoch or 0) + 1, None, version.app_id, epoch, until)
                continue
            missing = await self.missing_blobs(version.app_id, hashes)
            if missing:
                raise not_uploaded(version, missing)
            rows = await self._exec("minor", version.app_id, version.version_id)
            previous = rows[0]["minor"] if rows else None
            stored.minor = (previous or 0) + 1
            stored.created_at.FromNanoseconds(time.time_ns())
            created_us, data = stored.created_at.ToMicroseconds(), stored_form(stored)
            if previous is None:
                result = await self._exec("insert", stored.minor, created_us, data, version.app_id,
                                          version.version_id, epoch)
            else:
                result = await self._exec("replace", stored.minor, created_us, data, version.app_id,
                                          version.version_id, previous, epoch)
            if result[0]["[applied]"]:
                stored.is_default = (await self._default(version.app_id))[0] == version.version_id
                return stored
            lost += 1
        raise ConflictError(f"version {version.version_id!r}: other deploys of it kept winning; try again")

    async def collect_garbage(self, app_id: str, grace_seconds: float) -> int:
        started = time.time()
        epoch, until = await self._gc_state(app_id)
        if until is not None and until > time.time_ns() // 1000:
            return 0  # another collection is running
        mine = (epoch or 0) + 1
        lease = int((started + GC_LEASE_SECONDS) * 1_000_000)
        if not (await self._exec("gc_set", mine, lease, app_id, epoch, until))[0]["[applied]"]:
            return 0
        deleted = 0
        try:
            named = named_blobs([r["data"] for r in await self._exec("all_files", app_id) if r["data"] is not None])
            cutoff = (time.time() - grace_seconds) * 1_000_000
            for row in await self._exec("app_blobs", app_id):
                if time.time() - started > GC_LEASE_SECONDS * 0.8:
                    break  # the rest waits for the next collection; the lease must not run out mid-deletion
                sha = row["sha256"]
                if sha in named or (row["stored_us"] or 0) >= cutoff:
                    continue
                blob = await self._exec("blob_written", app_id, sha)
                # The stored blob's last write (its blobs row; the listing's for an upload that never finished):
                # an upload of the same content made since has later timestamps and survives these deletions.
                ts = blob[0]["written"] if blob and blob[0]["written"] else row["written"]
                await self._exec("drop_blob", ts, app_id, sha)
                await self._exec("drop_chunks", ts, app_id, sha)
                await self._exec("unlist_blob", ts, app_id, sha)
                deleted += 1
        finally:
            await self._exec("gc_set", mine + 1, None, app_id, mine, lease)
        return deleted

    async def get_version(self, app_id: str, version_id: str) -> pb.Version | None:
        wanted = version_id or (await self._default(app_id))[0]
        if not wanted:
            return None
        rows = await self._exec("get", app_id, wanted)
        if not rows or rows[0]["data"] is None:
            return None
        return loaded_form(rows[0]["data"], rows[0]["default_version"])

    async def list_versions(self, app_id: str) -> list[pb.Version]:
        rows = [r for r in await self._exec("list", app_id) if r["data"] is not None]
        rows.sort(key=lambda r: r["created_us"] or 0, reverse=True)
        return [loaded_form(r["data"], r["default_version"], files=False) for r in rows]

    async def set_default(self, app_id: str, version_id: str) -> int:
        for _ in range(CAS_ATTEMPTS):
            generation = (await self._default(app_id))[1]
            result = await self._exec("set_default", version_id, (generation or 0) + 1, app_id, version_id,
                                      generation)
            if result[0]["[applied]"]:
                return (generation or 0) + 1
            if result[0].get("minor") is None:
                raise no_version(app_id, version_id)
        raise ConflictError(f"app {app_id!r}: the default version kept changing; try again")

    async def delete_version(self, app_id: str, version_id: str) -> None:
        result = await self._exec("delete", app_id, version_id, version_id)
        if result[0]["[applied]"]:
            return
        if result[0].get("minor") is None:
            raise no_version(app_id, version_id)
        raise default_refused(app_id, version_id)

    async def list_apps(self) -> list[pb.AppInfo]:
        rows = await self._exec("apps")
        return sorted((pb.AppInfo(app_id=r["app_id"], default_version=r["default_version"] or "",
                                  generation=r["generation"] or 0, dispatch_generation=r["dispatch_generation"] or 0)
                       for r in rows), key=lambda a: a.app_id)

    async def get_dispatch(self, app_id: str) -> tuple[str, int]:
        rows = await self._exec("dispatch", app_id)
        return (rows[0]["dispatch_yaml"] or "", rows[0]["dispatch_generation"] or 0) if rows else ("", 0)

    async def set_dispatch(self, app_id: str, dispatch_yaml: str) -> int:
        for _ in range(CAS_ATTEMPTS):
            rows = await self._exec("dispatch", app_id)
            generation = rows[0]["dispatch_generation"] if rows else None
            result = await self._exec("set_dispatch", dispatch_yaml, (generation or 0) + 1, app_id, generation)
            if result[0]["[applied]"]:
                return (generation or 0) + 1
        raise ConflictError(f"app {app_id!r}: its dispatch rules kept changing; try again")

    async def close(self) -> None:
        if self._ks_open is not None:
            await self._ks_open.close()
