"""Apps' keys on Cassandra, so that any number of identity_svc replicas share them.

One table, partitioned by app and clustered by period, newest first. A period's key is written with a
lightweight transaction (``INSERT … IF NOT EXISTS``, Paxos at LOCAL_SERIAL) and read back at LOCAL_SERIAL, so
replicas that made a key for the same period at once all end up signing with the one that won.
"""

from __future__ import annotations

import logging
from typing import Any

from identity_svc.keys import StoredKey
from kiln_platform import cassandra
from kiln_platform.config import StorageConfig

log = logging.getLogger(__name__)

_COLUMNS = "app, period_start, key_name, sealed, certificate"


def _tables(ks: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {ks}.identity_keys (app text, period_start bigint, key_name text, sealed blob, "
        "certificate text, PRIMARY KEY ((app), period_start)) WITH CLUSTERING ORDER BY (period_start DESC)",
    ]


def _row(row: Any) -> StoredKey:
    return StoredKey(str(row[0]), int(row[1]), str(row[2]), bytes(row[3]), str(row[4]))


class CassandraKeyStore:
    """The same operations as :class:`identity_svc.store.SqliteKeyStore`, on Cassandra (module docstring)."""

    def __init__(self, settings: StorageConfig) -> None:
        self._settings = settings
        self._ks: cassandra.Keyspace | None = None
        self._stmts: dict[str, Any] = {}

    async def open(self) -> None:
        self._ks = await cassandra.open_keyspace(self._settings, _tables)
        ks, prepare = self._ks.name, self._ks.prepare
        self._stmts = {
            "add": prepare(f"INSERT INTO {ks}.identity_keys ({_COLUMNS}) VALUES (?,?,?,?,?) IF NOT EXISTS",
                           consistency="LOCAL_QUORUM", serial="LOCAL_SERIAL"),
            # Read at LOCAL_SERIAL: sees the winner of any transaction in flight for the period.
            "find": prepare(f"SELECT {_COLUMNS} FROM {ks}.identity_keys WHERE app = ? AND period_start = ?",
                            consistency="LOCAL_SERIAL"),
            "since": prepare(f"SELECT {_COLUMNS} FROM {ks}.identity_keys WHERE app = ? AND period_start >= ?",
                             consistency="LOCAL_QUORUM"),
        }
        log.info("apps' keys on cassandra: keyspace %s", ks)

    @property
    def _keyspace(self) -> cassandra.Keyspace:
        if self._ks is None:
            raise RuntimeError("CassandraKeyStore.open() was not called")
        return self._ks

    async def add(self, key: StoredKey) -> StoredKey:
        await self._keyspace.execute(self._stmts["add"], (key.app, key.period_start, key.key_name, key.sealed,
                                                          key.certificate_pem))
        found = await self.find(key.app, key.period_start)
        if found is None:
            raise RuntimeError(f"the key of app {key.app!r} for period {key.period_start} vanished after its write")
        return found

    async def find(self, app: str, period_start: int) -> StoredKey | None:
        rows = await self._keyspace.execute(self._stmts["find"], (app, period_start))
        return _row(rows[0]) if rows else None

    async def since(self, app: str, period_start: int) -> list[StoredKey]:
        return [_row(r) for r in await self._keyspace.execute(self._stmts["since"], (app, period_start))]

    async def close(self) -> None:
        if self._ks is not None:
            await self._ks.close()
