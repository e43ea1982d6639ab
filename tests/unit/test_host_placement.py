"""runtime.host's placement rules without NATS: what a manager may run here, and which demands for more it takes."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from kiln_platform.supervisor import Child, Supervisor
from runtime.host import Host, Plan, Running
from runtime.manager import Manager, Scaling

F1_MB = 384


@pytest.fixture
def child() -> Iterator[Child]:
    """A process standing in for a running manager (balance only asks whether it runs)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield Child("manager", proc, pathlib.Path("/dev/null"))
    finally:
        proc.kill()
        proc.wait()


def host(tmp_path: pathlib.Path, capacity_mb: int) -> Host:
    source: Any = None  # balance never asks the control plane
    return Host(source, tmp_path, [], [], control_plane="", capacity_mb=capacity_mb, name="host-a")


def running(tmp_path: pathlib.Path, child: Child, *, granted: int, wanted: str) -> Running:
    run = tmp_path / "app" / "v1.1"
    run.mkdir(parents=True)
    (run / "wanted").write_text(wanted)
    return Running(1, child, F1_MB, run=run, granted=granted)


async def test_a_manager_wanting_more_instances_is_granted_only_what_the_host_has_room_for(tmp_path, child):
    found = host(tmp_path, capacity_mb=2 * F1_MB + 100)
    found.running[("app", "v1")] = version = running(tmp_path, child, granted=1, wanted="5 1\n")
    await found.balance()
    assert version.granted == 2 and (version.run / "grant").read_text() == "2\n"
    assert found.used_mb == 2 * F1_MB and not found.has_room(F1_MB)


async def test_a_manager_wanting_fewer_instances_gives_back_the_room_of_those_no_longer_running(tmp_path, child):
    found = host(tmp_path, capacity_mb=10 * F1_MB)
    found.running[("app", "v1")] = version = running(tmp_path, child, granted=4, wanted="1 2\n")
    await found.balance()
    assert version.granted == 2 and found.used_mb == 2 * F1_MB  # two still run until idle


async def test_a_host_does_not_take_its_own_demand_for_more_room(tmp_path):
    assert await host(tmp_path, capacity_mb=10 * F1_MB).on_demand("app", "v1", more_for="host-a") is False


def test_a_manager_reads_what_its_host_granted(tmp_path):
    launch: Any = None  # grant() launches nothing
    grant = tmp_path / "grant"
    manager = Manager(Supervisor(tmp_path), launch, Scaling(), grant_file=grant)
    assert manager.grant() == (1, None)  # before the host wrote it: the one instance it counted
    grant.write_text("3\n")
    assert manager.grant() == (3, None)
    grant.write_text("2 2\n")  # a resident version: two kept here
    assert manager.grant() == (2, 2)
    assert Manager(Supervisor(tmp_path), launch, Scaling()).grant() is None  # kiln dev: no host counts


def test_plans_write_the_grant_a_manager_reads():
    assert Plan(2).grant_text() == "2\n" and Plan(3, 1).grant_text() == "3 1\n"


async def test_a_manager_keeping_resident_instances_keeps_their_room_when_its_load_wants_fewer(tmp_path, child):
    found = host(tmp_path, capacity_mb=10 * F1_MB)
    found.running[("app", "v1")] = version = running(tmp_path, child, granted=3, wanted="1 1\n")
    version.floor = 2
    await found.balance()
    assert version.granted == 2 and (version.run / "grant").read_text() == "2 2\n"
