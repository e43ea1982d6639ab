"""Byte forwarders between a Unix socket and TCP: how an instance without a network reaches what it may reach.

An isolated instance runs in a network namespace of its own with only a
loopback interface (``runtime.manager``). Its instance manager, outside,
listens on one Unix socket per destination the instance needs (NATS and each
service it calls) and forwards each connection to that destination
(:class:`UnixToTcp`); path-named Unix sockets are reached through the file
system, which the namespace does not cut. The instance's gRPC channels dial
``unix:PATH`` directly; its NATS client speaks only TCP, so the runtime
listens on its own loopback and forwards to the NATS socket
(:func:`tcp_to_unix`). Nothing else is reachable from inside.

Forwarding is byte for byte: TLS, if used, stays end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import select
import socket
import struct
import time
from collections.abc import Sequence

from kiln.errors import ConfigError
from kiln_platform.config import HostPort

log = logging.getLogger("kiln_platform.forward")

CHUNK = 256 * 1024

# The connection handlers in progress. asyncio's stream servers hold a handler's task only through the connection's
# transport, which the loop stops referring to once the peer half-closes: without this set the garbage collector
# may destroy a connection that is still answering.
_handlers: set[asyncio.Task[None]] = set()


def _hold() -> None:
    task = asyncio.current_task()
    if task is not None:
        _handlers.add(task)
        task.add_done_callback(_handlers.discard)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the end on (a half-close); on an error close the other side, which
    ends the opposite direction too."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
            return
    except (ConnectionError, OSError):
        pass
    writer.close()


async def splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy both ways until both directions end, then close both."""
    try:
        await asyncio.gather(_pump(a[0], b[1]), _pump(b[0], a[1]))
    finally:
        for _, writer in (a, b):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


def parse_target(target: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too).

    Raises:
        ValueError: not host:port.
    """
    try:
        parsed = HostPort.parse(target, "target")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return parsed.host, parsed.port


class UnixToTcp:
    """Listen on a Unix socket that only ``gid`` (and root) may use; forward each connection to the first of
    ``targets`` that accepts it."""

    def __init__(self, path: pathlib.Path, targets: Sequence[str], gid: int | None = None) -> None:
        if not targets:
            raise ValueError(f"{path}: no destination to forward to")
        self.path = path
        self.targets = [parse_target(t) for t in targets]
        self._gid = gid
        self._server: asyncio.AbstractServer | None = None
        self._peers: dict[asyncio.Task[None] | None, int] = {}  # connection -> pidfd of the process at its Unix end

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        if self._gid is not None:
            os.chown(self.path, 0, self._gid)
        os.chmod(self.path, 0o660)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _hold()
        pidfd = _peer_pidfd(writer)
        if pidfd is None:
            await self._forward(reader, writer)
            return
        task = asyncio.current_task()
        self._peers[task] = pidfd
        try:
            await self._forward(reader, writer)
        finally:
            del self._peers[task]
            os.close(pidfd)

    async def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until no connection is left whose process at the Unix end has exited.

        A dead instance's connections end when this loop reads their end of stream and passes it on; until then
        the destination (NATS) still counts the instance's connection, and its subscriptions, as alive.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_exited(fd) for fd in self._peers.values()):
            await asyncio.sleep(0.005)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for host, port in self.targets:
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                break
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("%s: %s:%d unreachable: %s", self.path.name, host, port, exc)
        else:
            writer.close()
            return
        await splice((reader, writer), upstream)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_pidfd(writer: asyncio.StreamWriter) -> int | None:
    """A pidfd of the process that connected (SO_PEERCRED), or None where the kernel does not say."""
    sock = writer.get_extra_info("socket")
    try:
        pid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[0]
        return os.pidfd_open(pid) if pid > 0 else None
    except (OSError, AttributeError):
        return None


def _exited(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])  # a pidfd is readable once its process has exited


async def tcp_to_unix(path: pathlib.Path) -> asyncio.Server:
    """Listen on a free loopback port and forward each connection to the Unix socket ``path``."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _hold()
        try:
            upstream = await asyncio.open_unix_connection(str(path))
        except OSError as exc:
            log.warning("%s unreachable: %s", path, exc)
            writer.close()
            return
        await splice((reader, writer), upstream)

    return await asyncio.start_server(serve, "127.0.0.1", 0)
