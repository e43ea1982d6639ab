"""The Cassandra engine: entities in Apache Cassandra (production).

Schema (see ``shared/CASSANDRA.md`` for the full design this grows into):

- ``entities``: one partition per entity group ``(app, ns, grp)``, rows
  clustered by the encoded key path, so a get reads one row and an ancestor
  query is one clustering slice, both strongly consistent. The rows of one
  group in one call are written in one single-partition batch, which Cassandra
  applies atomically and in isolation.
- ``id_counters``: id blocks reserved with lightweight transactions (Paxos),
  so two service replicas never hand out the same id. A CAS whose outcome is
  unknown (write timeout) is resolved by reading ``op_id`` at SERIAL.

The driver is imported only when this engine is chosen. Its exceptions become
:class:`~kiln.errors.UnavailableError` so callers see one kind of failure.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from typing import Any

from datastore_svc.engine.base import Ref, Row
from datastore_svc.keys import PREFIX_END
from kiln.errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)

_SEQ = "sequential"


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


def _schema(keyspace: str, datacenter: str, replication: int) -> list[str]:
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
        f"{{'class': 'NetworkTopologyStrategy', '{datacenter}': {replication}}}",
        f"""CREATE TABLE IF NOT EXISTS {keyspace}.entities (
              app text, ns text, grp blob, path blob, kind text, entity blob,
              PRIMARY KEY ((app, ns, grp), path))""",
        f"""CREATE TABLE IF NOT EXISTS {keyspace}.id_counters (
              app text, space text, next_id bigint, op_id uuid,
              PRIMARY KEY ((app, space)))""",
    ]


class CassandraEngine:
    """Cassandra-backed :class:`~datastore_svc.engine.base.Engine`."""

    features = frozenset({"ancestor_query", "atomic_group_batch"})

    def __init__(self, session: Any, cluster: Any, keyspace: str) -> None:
        from cassandra import ConsistencyLevel
        from cassandra.query import BatchStatement, BatchType

        self._session = session
        self._cluster = cluster
        self._cl = ConsistencyLevel
        self._batch_cls = BatchStatement
        self._batch_type = BatchType.UNLOGGED
        ks = keyspace
        prep = session.prepare
        self._get = prep(f"SELECT entity FROM {ks}.entities WHERE app=? AND ns=? AND grp=? AND path=?")
        self._put = prep(f"INSERT INTO {ks}.entities (app, ns, grp, path, kind, entity) VALUES (?,?,?,?,?,?)")
        self._del = prep(f"DELETE FROM {ks}.entities WHERE app=? AND ns=? AND grp=? AND path=?")
        self._scan_incl = prep(f"SELECT path, kind, entity FROM {ks}.entities WHERE app=? AND ns=? AND grp=? "
                               "AND path >= ? AND path < ? LIMIT ?")
        self._scan_excl = prep(f"SELECT path, kind, entity FROM {ks}.entities WHERE app=? AND ns=? AND grp=? "
                               "AND path > ? AND path < ? LIMIT ?")
        self._ctr_read = prep(f"SELECT next_id, op_id FROM {ks}.id_counters WHERE app=? AND space=?")
        self._ctr_read.consistency_level = ConsistencyLevel.SERIAL
        self._ctr_init = prep(f"INSERT INTO {ks}.id_counters (app, space, next_id, op_id) VALUES (?,?,?,?) "
                              "IF NOT EXISTS")
        self._ctr_cas = prep(f"UPDATE {ks}.id_counters SET next_id=?, op_id=? WHERE app=? AND space=? "
                             "IF next_id=?")
        for stmt in (self._get, self._put, self._del, self._scan_incl, self._scan_excl):
            stmt.consistency_level = ConsistencyLevel.LOCAL_QUORUM

    async def _exec(self, stmt: Any, params: Any = None) -> list[Any]:
        """Run a statement; returns its rows (one page: callers bound their reads with LIMIT)."""
        from cassandra import DriverException
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def ok(rows: Any) -> None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(rows))

        def fail(exc: BaseException) -> None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_exception(exc))

        try:
            rf = self._session.execute_async(stmt, params)
        except DriverException as exc:
            raise UnavailableError(f"cassandra: {exc}") from exc
        rf.add_callbacks(ok, fail)
        try:
            return await fut
        except DriverException as exc:
            raise UnavailableError(f"cassandra: {exc}") from exc
        except Exception as exc:
            # cassandra.* request errors (timeouts, unavailable) are not all DriverExceptions.
            if type(exc).__module__.startswith("cassandra"):
                raise UnavailableError(f"cassandra: {exc}") from exc
            raise

    async def get(self, app: str, namespace: str, refs: list[Ref]) -> list[bytes | None]:
        results = await asyncio.gather(*(self._exec(self._get, (app, namespace, r.group, r.path)) for r in refs))
        out: list[bytes | None] = []
        for rows in results:
            row = rows[0] if rows else None
            out.append(bytes(row.entity) if row else None)
        return out

    async def put(self, app: str, namespace: str, rows: list[Row]) -> None:
        by_group: dict[bytes, list[Row]] = collections.defaultdict(list)
        for row in rows:
            by_group[row.group].append(row)
        await asyncio.gather(*(self._put_group(app, namespace, g) for g in by_group.values()))

    async def _put_group(self, app: str, namespace: str, rows: list[Row]) -> None:
        batch = self._batch_cls(batch_type=self._batch_type, consistency_level=self._cl.LOCAL_QUORUM)
        for r in rows:
            batch.add(self._put, (app, namespace, r.group, r.path, r.kind, r.entity))
        await self._exec(batch)

    async def delete(self, app: str, namespace: str, refs: list[Ref]) -> None:
        by_group: dict[bytes, list[Ref]] = collections.defaultdict(list)
        for ref in refs:
            by_group[ref.group].append(ref)

        async def _delete_group(group_refs: list[Ref]) -> None:
            batch = self._batch_cls(batch_type=self._batch_type, consistency_level=self._cl.LOCAL_QUORUM)
            for r in group_refs:
                batch.add(self._del, (app, namespace, r.group, r.path))
            await self._exec(batch)

        await asyncio.gather(*(_delete_group(g) for g in by_group.values()))

    async def _cas_counter(self, app: str, new_next: Any) -> int:
        """Advance the counter with LWT; ``new_next(current)`` gives the new value or None to stop."""
        from cassandra import WriteTimeout
        for _ in range(100):
            row = _first(await self._exec(self._ctr_read, (app, _SEQ)))
            current = row.next_id if row else None
            target = new_next(current if current is not None else 1)
            if target is None:
                return int(current if current is not None else 1)
            op = uuid.uuid4()
            try:
                if current is None:
                    res = await self._exec(self._ctr_init, (app, _SEQ, target, op))
                else:
                    res = await self._exec(self._ctr_cas, (target, op, app, _SEQ, current))
            except UnavailableError as exc:
                if not isinstance(exc.__cause__, WriteTimeout):
                    raise
                check = _first(await self._exec(self._ctr_read, (app, _SEQ)))
                if check is not None and check.op_id == op:
                    return int(current if current is not None else 1)
                continue
            if _first(res)[0]:  # [applied]
                return int(current if current is not None else 1)
            await asyncio.sleep(0)
        raise UnavailableError("cassandra: id allocation contention did not settle")

    async def allocate_ids(self, app: str, count: int) -> int:
        return await self._cas_counter(app, lambda current: current + count)

    async def reserve_ids_up_to(self, app: str, max_id: int) -> None:
        await self._cas_counter(app, lambda current: max_id + 1 if current <= max_id else None)

    async def scan_group(self, app: str, namespace: str, group: bytes, prefix: bytes,
                         start_after: bytes | None, limit: int) -> list[tuple[bytes, str, bytes]]:
        if start_after and start_after >= prefix:
            stmt, low = self._scan_excl, start_after
        else:
            stmt, low = self._scan_incl, prefix
        rows = await self._exec(stmt, (app, namespace, group, low, prefix + PREFIX_END, limit))
        return [(bytes(r.path), r.kind, bytes(r.entity)) for r in rows]

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._cluster.shutdown)


async def create(hosts: str, keyspace: str, datacenter: str, replication: int) -> CassandraEngine:
    """Connect to Cassandra at ``hosts`` (``h1:port,h2:port``) and create the schema if needed."""
    from cassandra.cluster import Cluster, NoHostAvailable
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    if not keyspace.isidentifier():
        raise ConfigError(f"cassandra_keyspace: {keyspace!r} is not a valid keyspace name")
    points = []
    port = 9042
    for item in hosts.split(","):
        host, _, p = item.strip().rpartition(":")
        if not host:
            host, p = p, "9042"
        points.append(host)
        port = int(p)
    cluster = Cluster(points, port=port, protocol_version=5,
                      load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=datacenter)))
    loop = asyncio.get_running_loop()
    try:
        session = await loop.run_in_executor(None, cluster.connect)
        for stmt in _schema(keyspace, datacenter, replication):
            await loop.run_in_executor(None, lambda s=stmt: session.execute(s, timeout=60))
        engine = await loop.run_in_executor(None, CassandraEngine, session, cluster, keyspace)
    except NoHostAvailable as exc:
        cluster.shutdown()
        raise UnavailableError(f"cassandra: cannot connect to {hosts}: {exc}") from exc
    except Exception:
        cluster.shutdown()
        raise
    log.info("cassandra engine ready: %s keyspace %s", hosts, keyspace)
    return engine
