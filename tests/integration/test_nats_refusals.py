"""A connection whose NATS credentials are refused (the auth callout down) says so plainly, once in a while rather
than at every attempt, backs off, never logs the password, and gets in as soon as the credentials are accepted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kiln_platform import bus
from kiln_platform.supervisor import free_port, nats_server_binary

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

PASSWORD = "pw-8c1e5a"


def _server(supervisor, tmp_path, port: int, password: str, name: str):
    conf = tmp_path / f"{name}.conf"
    conf.write_text(f'authorization {{ users = [ {{user: appuser, password: "{password}"}} ] }}\n')
    return supervisor.spawn(name, [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-c", str(conf)])


async def _until(predicate, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.05)


def test_refused_credentials_are_reported_plainly_backed_off_and_recovered(supervisor, tmp_path, caplog):
    port = free_port()
    refusing = _server(supervisor, tmp_path, port, "another-password", "nats-refusing")
    caplog.set_level(logging.INFO, logger="kiln_platform.bus")

    def said(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    def attempts() -> int:
        return refusing.log_path.read_text().count("authentication error")

    async def scenario() -> None:
        connecting = asyncio.create_task(bus.connect(f"nats://appuser:{PASSWORD}@127.0.0.1:{port}", name="t"))
        await _until(lambda: attempts() >= 3, 30)
        assert not connecting.done()
        # Three attempts, one plain line naming the user and what to check.
        lines = said("refuses the credentials")
        assert len(lines) == 1 and "user appuser" in lines[0] and "natscallout" in lines[0]
        refusing.proc.terminate()
        await asyncio.to_thread(refusing.proc.wait, 30)
        _server(supervisor, tmp_path, port, PASSWORD, "nats-accepting")
        nc = await asyncio.wait_for(connecting, 30)
        assert nc.is_connected
        assert said("accepted user appuser after")
        await nc.close()

    asyncio.run(scenario())
    assert PASSWORD not in caplog.text
