"""Cassandra, for the services that keep data there (datastore, logs, control plane): the one way to connect,
create a keyspace, prepare statements with their consistency and run them from asyncio.

The driver is imported lazily, so processes that never use Cassandra do not load it. Calls are made from
asyncio through :meth:`Keyspace.execute`, which turns the driver's callbacks into an awaitable and its errors
into :class:`~kiln.errors.UnavailableError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal

from kiln.errors import ConfigError, UnavailableError
from kiln_platform.config import CassandraHost, StorageConfig

# The consistency levels kiln uses (names of the driver's ``ConsistencyLevel``).
Consistency = Literal["LOCAL_ONE", "LOCAL_QUORUM", "QUORUM", "SERIAL", "LOCAL_SERIAL"]
# Creating a keyspace or a table waits for schema agreement, which takes longer than a request.
SCHEMA_TIMEOUT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 30.0


def _level(name: Consistency | None) -> Any:
    from cassandra import ConsistencyLevel
    return None if name is None else getattr(ConsistencyLevel, name)


class Keyspace:
    """A session on one keyspace; made by :func:`open_keyspace`."""

    def __init__(self, cluster: Any, session: Any, name: str) -> None:
        self.name = name
        # The driver's session, for what this class does not wrap (batches are built with :meth:`batch`).
        self.session = session
        self._cluster = cluster

    def prepare(self, cql: str, *, consistency: Consistency | None = None,
                serial: Consistency | None = None) -> Any:
        """Prepare ``cql`` (it blocks: call it while opening, or in an executor).

        ``consistency`` and ``serial`` (the Paxos phase of a lightweight transaction) default to the driver's.
        """
        stmt = self.session.prepare(cql)
        if consistency is not None:
            stmt.consistency_level = _level(consistency)
        if serial is not None:
            stmt.serial_consistency_level = _level(serial)
        return stmt

    def batch(self, *, consistency: Consistency, serial: Consistency) -> Any:
        """An empty unlogged batch (one partition's conditional writes are still atomic)."""
        from cassandra.query import BatchStatement, BatchType
        return BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=_level(consistency),
                              serial_consistency_level=_level(serial))

    def statement(self, cql: str, *, consistency: Consistency) -> Any:
        """An unprepared statement (``%s`` parameters) at ``consistency``, for one-off reads."""
        from cassandra.query import SimpleStatement
        return SimpleStatement(cql, consistency_level=_level(consistency))

    async def execute(self, statement: Any, params: Sequence[Any] | None = None, *,
                      timeout: float | None = None) -> list[Any]:
        """Run one statement without blocking the event loop; its rows (one page: bound results with LIMIT).

        Raises:
            UnavailableError: the driver failed (no host, timeout, unavailable replicas…).
        """
        from cassandra import DriverException

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()

        def settle(result: list[Any] | None, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result or [])

        def ok(rows: Any) -> None:
            loop.call_soon_threadsafe(settle, list(rows) if rows is not None else [], None)

        def fail(exc: BaseException) -> None:
            loop.call_soon_threadsafe(settle, None, exc)

        options = {} if timeout is None else {"timeout": timeout}
        try:
            self.session.execute_async(statement, params, **options).add_callbacks(ok, fail)
            return await fut
        except DriverException as exc:
            raise UnavailableError(f"cassandra: {exc}") from exc
        except Exception as exc:
            # Request errors (timeouts, unavailable replicas) are not all DriverExceptions.
            if type(exc).__module__.startswith("cassandra"):
                raise UnavailableError(f"cassandra: {exc}") from exc
            raise

    async def close(self) -> None:
        """Disconnect (the driver's shutdown blocks, so it runs in an executor)."""
        await asyncio.get_running_loop().run_in_executor(None, self._cluster.shutdown)


async def open_keyspace(settings: StorageConfig, tables: Callable[[str], Sequence[str]], *,
                        row_factory: Callable[..., Any] | None = None) -> Keyspace:
    """Connect to ``settings.cassandra_hosts``, create the keyspace (``NetworkTopologyStrategy`` with
    ``cassandra_replication`` copies in the local datacenter) and the tables ``tables(keyspace)`` if missing.

    Raises:
        UnavailableError: no host answered, or the schema could not be created.
    """
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    name, datacenter = settings.cassandra_keyspace, settings.cassandra_datacenter
    where = ",".join(str(h) for h in settings.cassandra_hosts)
    options: dict[str, Any] = {"request_timeout": REQUEST_TIMEOUT_SECONDS}
    if row_factory is not None:
        options["row_factory"] = row_factory
    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=datacenter)),
                               **options)
    cluster = Cluster([(h.host, h.port) for h in settings.cassandra_hosts], protocol_version=5,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        session = await asyncio.get_running_loop().run_in_executor(None, cluster.connect)
    except NoHostAvailable as exc:
        cluster.shutdown()
        raise UnavailableError(f"cassandra: cannot connect to {where}: {exc}") from exc
    keyspace = Keyspace(cluster, session, name)
    try:
        # The settings' validation keeps quotes out of the name and the datacenter.
        await keyspace.execute(f"CREATE KEYSPACE IF NOT EXISTS {name} WITH replication = {{'class': "
                               f"'NetworkTopologyStrategy', '{datacenter}': {settings.cassandra_replication}}}",
                               timeout=SCHEMA_TIMEOUT_SECONDS)
        for table in tables(name):
            await keyspace.execute(table, timeout=SCHEMA_TIMEOUT_SECONDS)
    except BaseException:
        cluster.shutdown()
        raise
    return keyspace


def drop_keyspace(hosts: str, keyspace: str, *, setting: str = "cassandra_hosts") -> None:
    """Drop ``keyspace`` (if it exists) on the cluster at ``hosts`` (``host:port[,…]``); blocking, for tools
    (``kiln dev --clear-datastore``, benchmarks) that reset a keyspace outside any service.

    Raises:
        ConfigError: ``hosts`` or ``keyspace`` is malformed (the message names ``setting``).
    """
    from cassandra.cluster import Cluster

    try:
        settings = StorageConfig(storage="cassandra", cassandra_hosts=CassandraHost.parse_list(hosts, setting),
                                 cassandra_keyspace=keyspace)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cluster = Cluster([(h.host, h.port) for h in settings.cassandra_hosts], protocol_version=5)
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}",
                                  timeout=SCHEMA_TIMEOUT_SECONDS)
    finally:
        cluster.shutdown()


class NamedStatements:
    """What a store on one keyspace shares: the keyspace once opened, its statements prepared by name, and running
    one by name. A store subclasses it (beside its own ``Store`` interface) and calls :meth:`_open_keyspace`,
    then :meth:`_prepare` with its statements, from its ``open``."""

    def __init__(self, settings: StorageConfig) -> None:
        self._settings = settings
        self._ks_open: Keyspace | None = None
        self._q: dict[str, Any] = {}

    @property
    def _ks(self) -> Keyspace:
        if self._ks_open is None:
            raise RuntimeError(f"{type(self).__name__}.open() was not called")
        return self._ks_open

    async def _open_keyspace(self, tables: Callable[[str], Sequence[str]]) -> Keyspace:
        """Connect and create the keyspace and ``tables`` (rows come back as dicts)."""
        from cassandra.query import dict_factory

        self._ks_open = await open_keyspace(self._settings, tables, row_factory=dict_factory)
        return self._ks_open

    def _prepare(self, queries: dict[str, str], *, lwt: Collection[str] = ()) -> None:
        """Prepare each statement at LOCAL_QUORUM (the lightweight transactions ``lwt`` with a LOCAL_SERIAL
        Paxos phase)."""
        self._q = {name: self._ks.prepare(cql, consistency="LOCAL_QUORUM",
                                          serial="LOCAL_SERIAL" if name in lwt else None)
                   for name, cql in queries.items()}

    async def _exec(self, name: str, *params: Any) -> list[dict[str, Any]]:
        return await self._ks.execute(self._q[name], params)

    async def close(self) -> None:
        if self._ks_open is not None:
            await self._ks_open.close()
