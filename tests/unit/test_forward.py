"""kiln_platform.forward: Unix socket <-> TCP forwarding, byte for byte, on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat

import pytest

from kiln_platform import forward


async def echo_server() -> tuple[asyncio.AbstractServer, str]:
    """Answers each connection with the SHA-256 of everything it sent, once the client half-closes."""
    async def serve(reader, writer):
        digest = hashlib.sha256()
        while data := await reader.read(65536):
            digest.update(data)
        writer.write(digest.hexdigest().encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    return server, f"{host}:{port}"


async def send_and_hash(reader, writer, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_unix_socket_forwards_bytes_to_tcp_and_back(tmp_path):
    server, target = await echo_server()
    relay = forward.UnixToTcp(tmp_path / "svc.sock", [target])
    await relay.start()
    data = os.urandom(3_000_000)
    answer = await send_and_hash(*await asyncio.open_unix_connection(str(relay.path)), data)
    assert answer == hashlib.sha256(data).hexdigest().encode()
    await relay.close()
    server.close()


async def test_loopback_to_unix_to_tcp_carries_many_connections_at_once(tmp_path):
    server, target = await echo_server()
    relay = forward.UnixToTcp(tmp_path / "svc.sock", [target])
    await relay.start()
    inner = await forward.tcp_to_unix(relay.path)
    port = inner.sockets[0].getsockname()[1]
    payloads = [os.urandom(10_000 + i * 997) for i in range(40)]

    async def one(data: bytes) -> bytes:
        return await send_and_hash(*await asyncio.open_connection("127.0.0.1", port), data)

    answers = await asyncio.gather(*(one(p) for p in payloads))
    assert answers == [hashlib.sha256(p).hexdigest().encode() for p in payloads]
    inner.close()
    await relay.close()
    server.close()


async def test_the_next_target_is_used_when_the_first_refuses(tmp_path):
    server, target = await echo_server()
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead = f"127.0.0.1:{closed.sockets[0].getsockname()[1]}"
    closed.close()
    await closed.wait_closed()
    relay = forward.UnixToTcp(tmp_path / "svc.sock", [dead, target])
    await relay.start()
    answer = await send_and_hash(*await asyncio.open_unix_connection(str(relay.path)), b"hello")
    assert answer == hashlib.sha256(b"hello").hexdigest().encode()
    await relay.close()
    server.close()


async def test_an_unreachable_destination_closes_the_connection(tmp_path):
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead = f"127.0.0.1:{closed.sockets[0].getsockname()[1]}"
    closed.close()
    await closed.wait_closed()
    relay = forward.UnixToTcp(tmp_path / "svc.sock", [dead])
    await relay.start()
    reader, writer = await asyncio.open_unix_connection(str(relay.path))
    assert await asyncio.wait_for(reader.read(), 15) == b""
    writer.close()
    await relay.close()


async def test_the_socket_is_for_its_group_only_and_removed_on_close(tmp_path):
    relay = forward.UnixToTcp(tmp_path / "svc.sock", ["127.0.0.1:1"], gid=os.getgid() if os.geteuid() == 0 else None)
    await relay.start()
    assert stat.S_IMODE(relay.path.stat().st_mode) == 0o660
    await relay.close()
    assert not relay.path.exists()


@pytest.mark.parametrize("target", ["", "host", "host:", ":80", "host:http", "host:70000"])
def test_targets_must_be_host_and_port(target):
    with pytest.raises(ValueError):
        forward.parse_target(target)


def test_v6_targets_lose_their_brackets():
    assert forward.parse_target("[::1]:4222") == ("::1", 4222)
