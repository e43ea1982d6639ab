"""Connecting to Cassandra, shared by the services that keep data there (datastore, logs).

The driver is imported lazily, so processes that never use Cassandra do not
load it. Calls are made from asyncio through :func:`execute`, which turns the
driver's callbacks into an awaitable and its errors into ``UnavailableError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from kiln.errors import ConfigError, UnavailableError


def contact_points(hosts: str) -> tuple[list[str], int]:
    """``h1:port,h2:port`` → the hosts and the (one) port the driver takes."""
    points, port = [], 9042
    for item in hosts.split(","):
        host, _, p = item.strip().rpartition(":")
        if not host:
            host, p = p, "9042"
        if not p.isdigit():
            raise ConfigError(f"cassandra_hosts: expected host:port, got {item.strip()!r}")
        points.append(host)
        port = int(p)
    return points, port


async def connect(hosts: str, datacenter: str, *, row_factory: Callable[..., Any] | None = None) -> tuple[Any, Any]:
    """Connect; return ``(cluster, session)``.

    Raises:
        UnavailableError: no host answered.
    """
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    points, port = contact_points(hosts)
    options: dict[str, Any] = {"request_timeout": 30}
    if row_factory is not None:
        options["row_factory"] = row_factory
    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=datacenter)),
                               **options)
    cluster = Cluster(points, port=port, protocol_version=5, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        session = await asyncio.get_running_loop().run_in_executor(None, cluster.connect)
    except NoHostAvailable as exc:
        cluster.shutdown()
        raise UnavailableError(f"cassandra: cannot connect to {hosts}: {exc}") from exc
    return cluster, session


async def execute(session: Any, statement: Any, params: Sequence[Any] | None = None) -> list[Any]:
    """Run one statement without blocking the event loop; its rows (one page: bound results with LIMIT)."""
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

    try:
        session.execute_async(statement, params).add_callbacks(ok, fail)
        return await fut
    except DriverException as exc:
        raise UnavailableError(f"cassandra: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("cassandra"):  # request errors (timeouts…) are not all DriverExceptions
            raise UnavailableError(f"cassandra: {exc}") from exc
        raise
