"""``router --workers N``: N processes serve one port, a killed one is replaced, SIGTERM stops them all."""

from __future__ import annotations

import http.client
import os
import pathlib
import signal
import time

import pytest

from kiln_platform.supervisor import Supervisor, python_module
from router.app import HEALTH_PATH, WORKER_HEADER

pytestmark = pytest.mark.nats

WORKERS = 2


def _children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``."""
    out = set()
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                out.add(int(entry.name))
    return out


def _worker_answering(address: str) -> str:
    """The number of the worker that answers the health path on a new connection."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", HEALTH_PATH, headers={"Host": "localhost"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        return resp.getheader(WORKER_HEADER, "")
    finally:
        conn.close()


def _wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def _all_workers_answer(address: str) -> bool:
    """Whether every worker answers within a deadline (new connections spread over them by the kernel)."""
    seen: set[str] = set()
    return bool(_wait_for("every worker answers", lambda: seen.add(_worker_answering(address))
                          or seen == {str(n) for n in range(1, WORKERS + 1)}))


@pytest.fixture()
def router(tmp_path, nats_url):
    sup = Supervisor(tmp_path / "run")
    ready = tmp_path / "router.addr"
    child = sup.start("router", python_module("router", "--listen", "127.0.0.1:0", "--workers", str(WORKERS),
                                              "--ready-file", str(ready)),
                      env={**os.environ, "KILN_ROUTER_NATS_URL": nats_url}, secrets={
                          "KILN_ROUTER_SESSION_SECRET": "s" * 32}, ready_file=ready)
    yield child
    sup.stop_all()


def test_every_worker_serves_the_one_port(router):
    assert len(_children(router.proc.pid)) == WORKERS
    assert _all_workers_answer(router.address)


def test_a_killed_worker_is_replaced(router):
    before = _children(router.proc.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> set[int] | None:
        now = _children(router.proc.pid)
        return now if len(now) == WORKERS and victim not in now else None

    after = _wait_for("a new worker replaces the killed one", replaced)
    assert len(after - before) == 1
    assert _all_workers_answer(router.address)


def test_sigterm_stops_every_worker(router):
    workers = _children(router.proc.pid)
    router.proc.send_signal(signal.SIGTERM)
    assert router.proc.wait(timeout=40) == 0
    assert not any(pathlib.Path(f"/proc/{pid}").exists() for pid in workers)  # stopped, and reaped by the router


def test_a_worker_that_cannot_start_stops_the_router(tmp_path, nats_url):
    sup = Supervisor(tmp_path / "run")
    ready = tmp_path / "router.addr"
    # The settings pass the parent's checks; each worker fails opening the GeoIP database.
    child = sup.spawn("router", python_module("router", "--listen", "127.0.0.1:0", "--workers", str(WORKERS),
                                              "--ready-file", str(ready), "--geoip-db", str(tmp_path / "none.mmdb")),
                      env=dict(os.environ), secrets={"KILN_ROUTER_SESSION_SECRET": "s" * 32,
                                                     "KILN_ROUTER_NATS_URL": nats_url})
    try:
        assert child.proc.wait(timeout=60) == 1
        assert not ready.exists()
    finally:
        sup.stop_all()
