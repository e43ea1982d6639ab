"""The runtime host: runs deployed versions on this machine when requests want them, as App Engine scales.

``python -m runtime.host --control-plane HOST:PORT --run-dir DIR [--cache-dir DIR] -- RUNTIME_ARGS...``
runs an instance manager (:mod:`runtime.manager`) for a deployed version only while the version needs one here:

- a version without resident instances (App Engine's default: ``automatic_scaling`` without ``min_instances``,
  and ``basic_scaling``) runs nothing until a request wants it. A request that finds no instance makes the router
  publish a demand for the version on a JetStream work queue (:mod:`router.demand`); each demand goes to one host,
  which takes it only while it has room (``--capacity-mb``, each manager counted at its instance class's memory,
  F1 384 MB and so on), so a host at capacity leaves it to another. The host that takes it starts the version's
  manager with ``--scale-to-zero``: its first instance answers the waiting requests, and when its instances have
  all gone idle (``idle_seconds``, 15 minutes by default) the manager exits and the version runs nothing again;
- a version's instances run on as many hosts as its load needs, not on all: each manager is told, in its run
  directory's ``grant`` file, how many instances this host has room for, and writes how many its load wants beside
  it (``wanted``); every :data:`BALANCE_SECONDS` the host grants what its room allows and, when it has none left,
  publishes a demand for more (:func:`kiln_platform.bus.more_demand_subject`) on the same work queue, which only a
  host that does not run the version yet and has room takes. Both hosts' instances share the version's queue group,
  so traffic spreads over them; each manager exits when its instances go idle;
- a version with resident instances (``min_instances`` ≥ 1, ``manual_scaling``) is placed by capacity: the first
  host with room to claim its key in ``KILN_PLACEMENT`` runs it and keeps as many of its ``min_instances`` as fit
  (``grant`` then says ``GRANTED KEPT``); it asks others for the rest with a demand for more that carries the
  missing count, checked by the taking host against the other hosts' keys (``APP.VERSION.HOST``: the instances each
  keeps). A dead host's keys expire after ``PLACEMENT_TTL_SECONDS``: its versions are placed again at the next
  resync (a host running the version as the extra one takes the version's key over and asks for the rest);
- at start, and every ``--resync-seconds``, it lists apps and versions from the control plane, starts the resident
  versions it does not run yet, moves the versions it runs to their current minor, stops the managers of
  versions that are gone, and forgets managers that exited;
- on ``kiln.deploy.version`` events it acts at once: a new minor of a version it runs (or of a resident one) gets
  its files materialized by content hash (:class:`kiln_platform.deployclient.VersionSource`) and a new manager;
  only once that manager's first instances serve is the old minor's manager stopped (it drains its requests), so a
  redeploy drops no request; a deleted version's manager is stopped;
- each instance gets the control plane's address (``--modules-addr``), where the app's SDK asks which
  services and versions the app has (App Engine's Modules API), with the app's own token, and, with
  ``--apps-domain``, its app's ``DEFAULT_VERSION_HOSTNAME`` (``APP.DOMAIN``);
- with ``--manager-metrics HOST:FIRST-LAST`` each manager serves its Prometheus metrics (instances by state, their
  requests served and memory: :mod:`kiln_platform.metrics`) on HOST at the lowest port of the range no other
  manager of this host uses (:class:`MetricsPorts`), and the host lists the managers' addresses in
  ``RUN_DIR/metrics-targets.json``, in the format of Prometheus' file-based discovery (``file_sd_configs``);
- every ``--heartbeat-seconds`` (and when a control plane starts) it publishes
  what it can run on ``kiln.deploy.host`` (:func:`heartbeat`): the Pythons its
  managers would find (:mod:`kiln_platform.interpreters`, with the environment
  the managers get), so the control plane refuses a version no host can run.

Environment: ``KILN_HOST_CONTROL_TOKEN`` (a platform read token) and, handed
to the managers, ``KILN_MANAGER_SERVICE_SECRET`` and ``KILN_MANAGER_NATS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence

from nats.aio.client import Client

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from kiln_platform import appyaml, bus, config, interpreters
from kiln_platform import log as kiln_log
from kiln_platform.deployclient import VersionSource, follow, parse_event
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import events_pb2
from kiln_platform.supervisor import Child, StartError, Supervisor, python_module
from kiln.errors import ConfigError, KilnError
from runtime import isolation
from runtime.manager import Scaling

log = logging.getLogger(__name__)

CONTROL_TOKEN_ENV = "KILN_HOST_CONTROL_TOKEN"
NATS_URL_ENV = "KILN_MANAGER_NATS_URL"  # the managers' too: runtime.host hands its environment on
START_TIMEOUT = 180.0
STOP_GRACE = 30.0
# A host counts as live at the control plane for this many heartbeat periods after its last one.
HEARTBEAT_TTL_PERIODS = 3
# How often the Pythons on the host are looked for again (a Python installed meanwhile is reported).
INTERPRETERS_REFRESH_SECONDS = 60.0


# The share of the machine's memory instances may take by default (the rest: the host, managers, the system).
DEFAULT_CAPACITY_SHARE = 0.8
MAX_NOTED_VERSIONS = 100_000
# How long a demand this host has no room for waits before the work queue offers it again (to any host).
NO_ROOM_REDELIVERY_SECONDS = 0.5
# How often managers' wishes for more instances are looked at (granted from this host's room, or asked elsewhere).
BALANCE_SECONDS = 0.5


@dataclasses.dataclass
class Running:
    """One version's manager on this host, and the memory counted for it (``granted`` instances of
    ``memory_mb``)."""

    minor: int
    child: Child
    memory_mb: int = 0
    resident: bool = False
    run: pathlib.Path | None = None  # the manager's run directory: its grant file and what it wants
    granted: int = 1
    # Whether this host holds the version's placement key (it took the version's first demand, or placed it as a
    # resident version); every host running the version also holds a key of its own, APP.VERSION.HOST.
    primary: bool = True
    floor: int | None = None  # of a resident version's min_instances, how many are kept here (None: app.yaml's)
    needs_floor: int = 0  # the version's min_instances (across hosts)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a manager starts with: the instances it may run here, and (resident versions) how many it keeps."""

    granted: int = 1
    floor: int | None = None

    def grant_text(self) -> str:
        """The grant file's text (see :meth:`runtime.manager.Manager.grant`)."""
        return f"{self.granted}\n" if self.floor is None else f"{self.granted} {self.floor}\n"


@dataclasses.dataclass(frozen=True)
class Needs:
    """What running a version asks of a host."""

    resident: bool  # min_instances >= 1: runs without requests
    memory_mb: int  # one instance of its class
    instances: int = 1  # how many a manager of it starts with (its min_instances, at least one)

    @classmethod
    def of(cls, version: pb.Version) -> Needs:
        """From the version's app.yaml (an app.yaml that cannot be read here counts as one F1 instance on demand)."""
        try:
            app = appyaml.parse(version.app_yaml)
        except (KilnError, ValueError):
            return cls(False, isolation.INSTANCE_MEMORY_MB["F1"])
        least = Scaling.from_app(app).min_instances
        return cls(least > 0, isolation.instance_memory_mb(app), max(1, least))


@dataclasses.dataclass(frozen=True)
class PortRange:
    """``HOST:FIRST-LAST``: where the managers of a host serve their metrics."""

    host: str
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """Raises ConfigError naming ``--manager-metrics`` when ``text`` is not ``HOST:FIRST-LAST``."""
        host, _, ports = text.rpartition(":")
        first, _, last = ports.partition("-")
        if not host or not first.isdigit() or not last.isdigit() or not 0 < int(first) <= int(last) <= 65535:
            raise ConfigError(f"--manager-metrics: expected HOST:FIRST-LAST (e.g. 127.0.0.1:9300-9399), got {text!r}")
        return cls(host.strip("[]"), int(first), int(last))


class MetricsPorts:
    """The metrics ports of a host's managers: each manager gets the lowest port of the range that no manager still
    running holds and nothing else listens on; ``targets`` is what Prometheus' file-based discovery reads."""

    def __init__(self, ports: PortRange, targets: pathlib.Path, host_name: str) -> None:
        self.ports = ports
        self.targets = targets
        self._host_name = host_name
        self._held: dict[int, Child] = {}  # port -> the manager serving on it

    def take(self) -> str | None:
        """A free ``host:port`` for a manager about to start (None: the range is used up), held by :meth:`hold`."""
        self.forget_exited()
        for port in range(self.ports.first, self.ports.last + 1):
            if port in self._held:
                continue
            with contextlib.suppress(OSError), socket.create_server(
                    (self.ports.host, port), family=socket.AF_INET6 if ":" in self.ports.host else socket.AF_INET):
                return f"[{self.ports.host}]:{port}" if ":" in self.ports.host else f"{self.ports.host}:{port}"
        log.warning("--manager-metrics: every port of %d-%d is in use: a manager starts without metrics",
                    self.ports.first, self.ports.last)
        return None

    def hold(self, address: str, child: Child) -> None:
        """``child`` serves its metrics at ``address`` (from :meth:`take`) until it exits."""
        self._held[int(address.rpartition(":")[2])] = child
        self.write()

    def forget_exited(self) -> None:
        """Free the ports of managers that exited (and list only the others)."""
        gone = [port for port, child in self._held.items() if child.proc.poll() is not None]
        for port in gone:
            del self._held[port]
        if gone:
            self.write()

    def write(self) -> None:
        """``targets``: the address of every manager running, as Prometheus' ``file_sd_configs`` reads it."""
        host = f"[{self.ports.host}]" if ":" in self.ports.host else self.ports.host
        listing = [{"targets": [f"{host}:{port}" for port in sorted(self._held)],
                    "labels": {"kiln_host": self._host_name}}] if self._held else []
        _write_atomically(self.targets, json.dumps(listing, indent=1) + "\n")


def default_capacity_mb() -> int:
    """:data:`DEFAULT_CAPACITY_SHARE` of the machine's memory."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(int(line.split()[1]) / 1024 * DEFAULT_CAPACITY_SHARE)
    raise ConfigError("--capacity-mb: cannot read the machine's memory from /proc/meminfo; give it")


class Host:
    """Keeps a manager per deployed version (see module docstring)."""

    def __init__(self, source: VersionSource, run_dir: pathlib.Path, manager_args: Sequence[str],
                 runtime_args: Sequence[str], *, control_plane: str, apps_domain: str = "",
                 capacity_mb: int = 0, name: str = "", stop_grace: float = STOP_GRACE,
                 manager_metrics: PortRange | None = None) -> None:
        self._source = source
        # Where managers serve their metrics (None: they serve none), listed in RUN_DIR/metrics-targets.json.
        self.metrics = (MetricsPorts(manager_metrics, run_dir / "metrics-targets.json", name)
                        if manager_metrics is not None else None)
        self.stop_grace = stop_grace  # how long a stopped manager may take to drain before it is killed
        self.capacity_mb = capacity_mb
        self.name = name
        self.placement: KeyValue | None = None  # set once connected (bus.PLACEMENT_BUCKET)
        self._control_plane = control_plane  # instances ask it for their app's services and versions
        self._apps_domain = apps_domain
        self._run_dir = run_dir
        self._sup = Supervisor(run_dir)
        self._manager_args = list(manager_args)
        self._runtime_args = list(runtime_args)
        self.running: dict[tuple[str, str], Running] = {}
        self._starting: dict[tuple[str, str], int] = {}  # memory counted for managers not ready yet
        self._starts: set[asyncio.Task[None]] = set()
        self._noted: set[tuple[str, str, int]] = set()  # versions said to wait for a request (_note_idle)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._extra: set[tuple[str, str]] = set()  # versions started here on a demand for more (not primary)
        self._plans: dict[tuple[str, str], Plan] = {}  # how the managers about to start here start
        self._asked_more: dict[tuple[str, str], float] = {}
        self.js: JetStreamContext | None = None  # set once connected: asks other hosts for more room

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    @property
    def used_mb(self) -> int:
        """The memory counted for the managers running and starting here."""
        return sum(r.memory_mb * r.granted for r in self.running.values()) + sum(self._starting.values())

    def has_room(self, memory_mb: int) -> bool:
        return self.used_mb + memory_mb <= self.capacity_mb

    async def reap(self) -> None:
        """Forget the managers that exited: scaled to zero (status 0), or failed (the next request asks again)."""
        if self.metrics is not None:
            self.metrics.forget_exited()
        for key, found in list(self.running.items()):
            status = found.child.proc.poll()
            if status is None or self._lock(key).locked():
                continue
            del self.running[key]
            self._extra.discard(key)
            with contextlib.suppress(ValueError):
                self._sup.children.remove(found.child)
            await self._release(key, found.primary)
            if status == 0:
                log.info("app %s: version %s.%d scaled to zero", *key, found.minor)
            else:
                log.warning("app %s: the manager of version %s.%d exited with status %s:\n%s", *key, found.minor,
                            status, found.child.log_tail())

    def _note_idle(self, app_id: str, version_id: str, minor: int) -> None:
        """Say once per version minor (from its deploy event or, for a host started later, a resync) that it waits
        for a request."""
        if (app_id, version_id, minor) not in self._noted:
            if len(self._noted) >= MAX_NOTED_VERSIONS:
                self._noted.clear()
            self._noted.add((app_id, version_id, minor))
            log.info("app %s: version %s.%d runs nothing until a request wants it", app_id, version_id, minor)

    async def _claim(self, key: tuple[str, str]) -> bool:
        """Take the version's placement key for this host; False when another host holds it (runs or starts it)."""
        if self.placement is None:
            return True
        try:
            await self.placement.create(".".join(key), self.name.encode())
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await self.placement.get(".".join(key))
                return entry.value == self.name.encode()  # ours already (an earlier manager of this host's)
            return False

    def _placement_key(self, key: tuple[str, str], primary: bool) -> str:
        """The version's key (the host that took its first demand), or this host's own key for it (more room)."""
        return ".".join(key) if primary else ".".join((*key, self.name))

    async def _release(self, key: tuple[str, str], primary: bool = True) -> None:
        """Give the version's placement keys up (its manager here is gone): this host's own, and the version's if this
        host holds it."""
        if self.placement is None:
            return
        try:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await self.placement.delete(self._placement_key(key, False))
            if primary:
                entry = await self.placement.get(self._placement_key(key, True))
                if entry.value == self.name.encode():
                    await self.placement.delete(self._placement_key(key, True), last=entry.revision)
        except Exception as exc:  # noqa: BLE001 - it expires after bus.PLACEMENT_TTL_SECONDS anyway
            log.debug("placement of %s/%s not released: %s", *key, exc)

    async def _floors_elsewhere(self, key: tuple[str, str]) -> int:
        """How many of a resident version's instances the other hosts running it keep (their own keys' values)."""
        assert self.placement is not None
        own, total = self._placement_key(key, False), 0
        watcher = await self.placement.watch(".".join((*key, ">")), ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:  # the end of the keys there are now
                    break
                if entry.key != own:
                    with contextlib.suppress(ValueError):
                        total += int(entry.value or b"0")
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
        return total

    async def keep_placements(self) -> None:
        """Refresh the placement keys of the versions running here, until cancelled (a dead host's keys expire: a
        demand for its versions is then taken by a host with room, and its resident versions are placed again)."""
        while True:
            await asyncio.sleep(bus.PLACEMENT_TTL_SECONDS / 3)
            if self.placement is None:
                continue
            for key, found in list(self.running.items()):
                try:
                    await self.placement.put(self._placement_key(key, False), str(found.floor or 0).encode())
                    if found.primary:
                        await self.placement.put(self._placement_key(key, True), self.name.encode())
                except Exception as exc:  # noqa: BLE001 - NATS away: the next round
                    log.warning("placement of %s/%s not refreshed: %s", *key, exc)

    async def balance(self) -> None:
        """Give each manager whose load wants more instances than it was granted the room this host has left (its
        ``grant`` file), take back what a manager no longer uses, and ask another host to run a version too when this
        one has no room for all it wants (:func:`kiln_platform.bus.more_demand_subject`)."""
        for key, found in list(self.running.items()):
            if found.run is None or found.child.proc.poll() is not None:
                continue
            wanted, current = _read_wanted(found.run / "wanted", found.granted)
            granted = found.granted
            if wanted > granted:
                fit = (self.capacity_mb - self.used_mb) // max(found.memory_mb, 1)
                granted += max(0, min(wanted - granted, fit))
            elif wanted < granted:
                # instances still running (idle ones stop after idle_seconds), and those it keeps
                granted = max(wanted, current, found.floor or 0, 1)
            if granted != found.granted:
                log.info("app %s: version %s may run %d instance(s) here (was %d; %d wanted)", *key, granted,
                         found.granted, wanted)
                found.granted = granted
                _write_atomically(found.run / "grant", Plan(granted, found.floor).grant_text())
            missing = found.needs_floor - found.floor if found.primary and found.floor is not None else 0
            if wanted > granted or missing > 0:
                await self._ask_more(key, max(missing, 0), starved=wanted > granted)

    async def _ask_more(self, key: tuple[str, str], resident_missing: int = 0, *, starved: bool = True) -> None:
        """Ask another host with room to run the version too (at most once per dedupe period); with
        ``resident_missing``, for the part of a resident version's ``min_instances`` no host keeps yet (counted
        from the other hosts' keys: none is asked for when they keep them already)."""
        now = time.monotonic()
        if self.js is None or now - self._asked_more.get(key, -bus.DEMAND_DEDUPE_SECONDS) < bus.DEMAND_DEDUPE_SECONDS:
            return
        self._asked_more[key] = now
        if resident_missing:
            resident_missing = max(0, resident_missing - (
                await self._floors_elsewhere(key) if self.placement is not None else 0))
        if resident_missing:
            log.info("app %s: version %s keeps %d of its resident instances on no host yet: asking another host",
                     *key, resident_missing)
        elif starved:
            log.info("app %s: version %s wants more instances than this host has room for: asking another host", *key)
        else:
            return
        try:
            await self.js.publish(bus.more_demand_subject(*key), f"{self.name} {resident_missing}".encode(), timeout=5,
                                  headers={"Nats-Msg-Id": bus.more_demand_message_id(*key, time.time())})
        except Exception as exc:  # noqa: BLE001 - asked again next period while the load lasts
            log.warning("app %s: could not ask another host for version %s: %s", *key, exc)

    async def keep_balance(self) -> None:
        """:meth:`balance` every :data:`BALANCE_SECONDS`, until cancelled."""
        while True:
            await asyncio.sleep(BALANCE_SECONDS)
            try:
                await self.balance()
            except Exception as exc:  # noqa: BLE001 - the next round
                log.warning("runtime host: balancing instances: %s", exc)

    async def reconcile(self) -> None:
        """Run the resident versions, move the running ones to their current minor, stop the deleted ones."""
        await self.reap()
        wanted: dict[tuple[str, str], pb.Version] = {}
        for app in await self._source.apps():
            for version in await self._source.versions(app.app_id):
                wanted[(app.app_id, version.version_id)] = version
        for (app_id, version_id), version in wanted.items():
            if (app_id, version_id) in self.running:
                await self.ensure(app_id, version_id, version.minor)
                await self._promote((app_id, version_id))
            elif Needs.of(version).resident:
                await self.place_resident(version)
            else:
                self._note_idle(app_id, version_id, version.minor)
        for key in [k for k in self.running if k not in wanted]:
            await self.stop(*key)

    async def on_demand(self, app_id: str, version_id: str, *, more_for: str | None = None,
                        resident_missing: int = 0) -> bool:
        """A request wants an instance of the version (or, with ``more_for``, the host of that name has no room for
        all the instances its load wants): start its manager here unless it runs here already. False when this host
        has no room for it, is the host asking for more, or its control plane does not know the version (another
        host may take the demand; a deleted version's demands expire with the stream's age)."""
        key = (app_id, version_id)
        await self.reap()
        if more_for == self.name:
            return False  # for another host
        if key in self.running or self._lock(key).locked():
            return True  # running or starting here: its instances answer the waiting requests, and its manager
            # scales with the share of the load they get here
        manifest = await self._source.version(app_id, version_id)
        if manifest is None:
            return False  # not this control plane's (deleted meanwhile: the demand expires with the stream's age)
        needs = Needs.of(manifest)
        if not self.has_room(needs.memory_mb):
            return False
        if more_for is not None:
            self._extra.add(key)
            if needs.resident:  # of its min_instances, keeps those no other host keeps, as many as fit
                if resident_missing and self.placement is not None:  # another host may have taken an earlier ask
                    resident_missing = min(resident_missing, needs.instances - await self._floors_elsewhere(key))
                    if resident_missing <= 0:
                        return True  # kept elsewhere already
                keep = min(resident_missing, (self.capacity_mb - self.used_mb) // needs.memory_mb)
                self._plans[key] = Plan(max(1, keep), keep)
            if self.placement is not None:
                await self.placement.put(self._placement_key(key, False),
                                         str(self._plans[key].floor or 0 if key in self._plans else 0).encode())
        elif not await self._claim(key):
            return True  # another host runs or starts it (this demand came while it started)
        log.info("app %s: version %s wanted%s: starting its manager here", app_id, version_id,
                 f" (host {more_for} has no room for more instances)" if more_for else "")
        self._start_soon(app_id, version_id, manifest.minor)
        return True

    def _start_soon(self, app_id: str, version_id: str, minor: int) -> None:
        task = asyncio.ensure_future(self._start_safely(app_id, version_id, minor))
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)

    async def place_resident(self, version: pb.Version) -> None:
        """A version with resident instances (``min_instances``) that does not run here: run it here if no host holds
        its placement key and this host has room for one instance, keeping as many of its ``min_instances`` as fit
        (the host that holds the key asks others for the rest, :meth:`balance`). A dead host's keys expire, and the
        next host to look places the version again."""
        key = (version.app_id, version.version_id)
        needs = Needs.of(version)
        fit = (self.capacity_mb - self.used_mb) // needs.memory_mb
        if key in self.running or self._lock(key).locked() or fit < 1 or not await self._claim(key):
            return
        keep = min(needs.instances, fit)
        self._plans[key] = Plan(keep, keep)
        if self.placement is not None:  # what it keeps here counts for the other hosts at once
            await self.placement.put(self._placement_key(key, False), str(keep).encode())
        log.info("app %s: version %s placed here with %d of its %d resident instance(s)", *key, keep,
                 needs.instances)
        self._start_soon(version.app_id, version.version_id, version.minor)

    async def _promote(self, key: tuple[str, str]) -> None:
        """A version this host runs for more room whose placement key expired (its host died): hold the key, so that
        this host asks for the resident instances no host keeps."""
        found = self.running.get(key)
        if found is not None and not found.primary and found.floor is not None and await self._claim(key):
            found.primary = True
            self._extra.discard(key)
            log.info("app %s: version %s: this host now holds its placement (its first host is gone)", *key)

    async def _start_safely(self, app_id: str, version_id: str, minor: int) -> None:
        try:
            await self.ensure(app_id, version_id, minor)
        except Exception as exc:  # noqa: BLE001 - the next waiting request asks again
            log.error("app %s: version %s could not start: %s", app_id, version_id, exc)
        if (app_id, version_id) not in self.running:
            await self._release((app_id, version_id), (app_id, version_id) not in self._extra)
            self._extra.discard((app_id, version_id))

    async def ensure(self, app_id: str, version_id: str, minor: int) -> None:
        """Run ``minor`` (or newer) of the version; replace an older minor once the new one serves."""
        key = (app_id, version_id)
        async with self._lock(key):
            current = self.running.get(key)
            if current is not None and current.minor >= minor:
                return
            manifest = await self._source.version(app_id, version_id)
            if manifest is None:
                return  # deleted meanwhile
            if current is not None and current.minor >= manifest.minor:
                return
            needs = Needs.of(manifest)
            plan = self._plans.pop(key, None) or (
                Plan(max(1, current.floor or 1), current.floor) if current is not None else
                Plan(needs.instances, needs.instances) if needs.resident else Plan())
            if current is None and not self.has_room(needs.memory_mb * plan.granted):
                log.warning("app %s: no room on this host for version %s (%d of %d MB counted)", app_id, version_id,
                            self.used_mb, self.capacity_mb)
                return
            # Counted from the start, so that demands taken meanwhile see the room it takes.
            self._starting[key] = 0 if current is not None else needs.memory_mb * plan.granted
            try:
                child = await self._start(manifest, plan)
            finally:
                del self._starting[key]
            self.running[key] = Running(manifest.minor, child, needs.memory_mb, needs.resident,
                                        self._version_run_dir(manifest), plan.granted,
                                        primary=key not in self._extra if current is None else current.primary,
                                        floor=plan.floor, needs_floor=needs.instances if needs.resident else 0)
            if current is not None:
                log.info("app %s: version %s.%d replaces .%d", app_id, version_id, manifest.minor, current.minor)
                await _stop_child(current.child)

    async def stop(self, app_id: str, version_id: str) -> None:
        key = (app_id, version_id)
        async with self._lock(key):
            current = self.running.pop(key, None)
            if current is not None:
                log.info("app %s: stopping version %s.%d", app_id, version_id, current.minor)
                await _stop_child(current.child)

    def _version_run_dir(self, manifest: pb.Version) -> pathlib.Path:
        return self._run_dir / manifest.app_id / f"{manifest.version_id}.{manifest.minor}"

    async def _start(self, manifest: pb.Version, plan: Plan) -> Child:
        root = await self._source.materialize(manifest)
        name = f"{manifest.app_id}-{manifest.version_id}.{manifest.minor}"
        run = self._version_run_dir(manifest)
        run.mkdir(parents=True, exist_ok=True)
        ready = run / "manager.ready"
        ready.unlink(missing_ok=True)  # an earlier manager of this minor's, which scaled to zero
        (run / "wanted").unlink(missing_ok=True)
        _write_atomically(run / "grant", plan.grant_text())
        metrics = self.metrics.take() if self.metrics is not None else None
        argv = python_module("runtime.manager", "--app-dir", str(root), "--app-id", manifest.app_id,
                             "--version-id", manifest.version_id, "--run-dir", str(run), "--ready-file", str(ready),
                             "--grant-file", str(run / "grant"), *(["--metrics-listen", metrics] if metrics else []),
                             "--scale-to-zero", *self._manager_args, "--", "--minor-version", str(manifest.minor),
                             "--modules-addr", self._control_plane, *self._default_hostname(manifest.app_id),
                             *self._runtime_args)
        child = self._sup.spawn(name, argv, env=os.environ, ready_file=ready)
        if metrics is not None and self.metrics is not None:
            self.metrics.hold(metrics, child)
        try:
            await asyncio.to_thread(Supervisor.wait_ready, child, ready_file=ready, timeout=START_TIMEOUT)
        except StartError:
            await _stop_child(child)
            raise
        log.info("app %s: version %s.%d serving", manifest.app_id, manifest.version_id, manifest.minor)
        return child

    def _default_hostname(self, app_id: str) -> list[str]:
        """The app's ``DEFAULT_VERSION_HOSTNAME`` (``APP.DOMAIN``) for its instances, when the domain is known."""
        return ["--default-hostname", f"{app_id}.{self._apps_domain}"] if self._apps_domain else []

    async def on_event(self, subject: str, data: bytes) -> None:
        event = parse_event(subject, data)
        if not isinstance(event, events_pb2.VersionEvent):
            return
        if event.kind == events_pb2.VersionEvent.KIND_CREATED:
            await self.reap()
            if (event.app_id, event.version_id) not in self.running:
                manifest = await self._source.version(event.app_id, event.version_id)
                if manifest is None:
                    return  # deleted meanwhile, or another control plane's
                if not Needs.of(manifest).resident:
                    self._note_idle(event.app_id, event.version_id, manifest.minor)
                else:
                    await self.place_resident(manifest)
                return
            await self.ensure(event.app_id, event.version_id, event.minor)
        elif event.kind == events_pb2.VersionEvent.KIND_DELETED:
            await self.stop(event.app_id, event.version_id)

    async def shutdown(self) -> None:
        """Stop every manager, running or still starting, at once: each is sent SIGTERM before any is waited on, and
        each gets the whole grace period (so stopping N managers takes as long as the slowest, not their sum)."""
        children = [r.child for r in self.running.values()]
        children += [c for c in self._sup.children if all(c is not known for known in children)]
        await stop_children(children, self.stop_grace)
        self.running.clear()
        self._sup.children.clear()
        await asyncio.gather(*self._starts, return_exceptions=True)  # their managers are gone: they fail at once


def _read_wanted(path: pathlib.Path, default: int) -> tuple[int, int]:
    """What a manager wrote to its ``wanted`` file: instances its load wants, instances running."""
    try:
        wanted, current = (int(n) for n in path.read_text().split())
        return wanted, current
    except (OSError, ValueError):
        return default, default  # not written yet


def _write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _stop_child(child: Child) -> None:
    await stop_children([child])


# How often stop_children looks whether the children it waits on have exited.
STOP_POLL_SECONDS = 0.05


async def stop_children(children: Sequence[Child], grace: float = STOP_GRACE) -> None:
    """SIGTERM every child first (a manager drains its instances), then wait for all of them together; a child
    still running ``grace`` seconds after its signal gets SIGKILL. Waiting polls from the event loop rather than
    blocking a thread per child: the default executor has only a few threads, which would stop them in batches."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(c.proc.poll() is None for c in children) and time.monotonic() < deadline:
        await asyncio.sleep(STOP_POLL_SECONDS)
    for child in children:
        if child.proc.poll() is None:
            log.warning("%s did not stop within %.0f s; killing it", child.name, grace)
            child.proc.kill()
            await asyncio.to_thread(child.proc.wait)


def python_versions(environ: Mapping[str, str]) -> list[str]:
    """The Pythons an instance manager started with ``environ`` finds on this host, kiln's own first, as "3.12"."""
    own = interpreters.own().version
    found = [own] + [v for v in interpreters.PYTHON3_VERSIONS if v != own and
                     interpreters.lookup(v, interpreters.Search.from_env(environ)) is not None]
    return [f"{major}.{minor}" for major, minor in found]


def heartbeat(name: str, versions: Sequence[str], period: float) -> events_pb2.HostHeartbeat:
    """What this host tells the control plane it can run."""
    own = interpreters.own().version
    beat = events_pb2.HostHeartbeat(host=name, python_versions=list(versions), own_python_version=f"{own[0]}.{own[1]}",
                                    ttl_seconds=period * HEARTBEAT_TTL_PERIODS)
    beat.sent_at.GetCurrentTime()
    return beat


async def take_demands(nc: Client, host: Host) -> None:
    """Take demands for versions from the work queue while this host has room (see the module docstring)."""
    await bus.ensure_demand_stream(nc)
    pulled = await nc.jetstream().pull_subscribe(bus.DEMAND_SUBJECTS, durable=bus.DEMAND_CONSUMER,
                                                 stream=bus.DEMAND_STREAM)
    try:
        await _take_demands(pulled, host)
    finally:
        # A fetch cancelled here leaves the server's answer to it (a timeout status) unread in the subscription's
        # queue, where draining the connection would wait for it for nats-py's whole drain timeout (30 s).
        with contextlib.suppress(Exception):
            await pulled.unsubscribe()


async def _take_demands(pulled: JetStreamContext.PullSubscription, host: Host) -> None:
    smallest = min(isolation.INSTANCE_MEMORY_MB.values())
    while True:
        await host.reap()
        if not host.has_room(smallest):
            await asyncio.sleep(NO_ROOM_REDELIVERY_SECONDS)  # full: leave the queue to hosts with room
            continue
        try:
            msgs = await pulled.fetch(1, timeout=5)
        except (nats.errors.TimeoutError, TimeoutError):
            continue
        except Exception as exc:  # noqa: BLE001 - NATS away: try again shortly
            log.warning("runtime host: reading demands: %s", exc)
            await asyncio.sleep(1)
            continue
        for msg in msgs:
            wanted, more = bus.demand_of(msg.subject), bus.more_demand_of(msg.subject)
            try:
                if more is not None:
                    asker, _, missing = msg.data.decode(errors="replace").partition(" ")
                    taken = await host.on_demand(*more, more_for=asker,
                                                 resident_missing=int(missing) if missing.isdigit() else 0)
                else:
                    taken = wanted is None or await host.on_demand(*wanted)
            except Exception as exc:  # noqa: BLE001 - the control plane away: another host, or later
                log.warning("runtime host: demand for %s: %s", msg.subject, exc)
                taken = False
            if taken:
                await msg.ack()
            else:
                await msg.nak(delay=NO_ROOM_REDELIVERY_SECONDS)


async def report(nc: Client, name: str, period: float) -> None:
    """Publish this host's heartbeat every ``period`` seconds and whenever a control plane asks, until cancelled."""
    asked = asyncio.Event()

    async def on_ask(_msg: object) -> None:
        asked.set()
    sub = await nc.subscribe(bus.DEPLOY_HOST_REPORT_SUBJECT, cb=on_ask)
    # The managers' environment. Looking again runs every Python, which takes seconds on a busy host: it runs
    # beside the heartbeats, which meanwhile report what was found last, so a busy host never looks dead.
    versions = await asyncio.to_thread(python_versions, os.environ)
    looking: asyncio.Task[list[str]] | None = None
    looked = time.monotonic()
    try:
        while True:
            if looking is not None and looking.done():
                versions, looking = looking.result(), None
                looked = time.monotonic()
            if looking is None and time.monotonic() - looked >= INTERPRETERS_REFRESH_SECONDS:
                looking = asyncio.create_task(asyncio.to_thread(python_versions, os.environ))
            try:
                await nc.publish(bus.DEPLOY_HOST_SUBJECT, heartbeat(name, versions, period).SerializeToString())
            except Exception as exc:  # noqa: BLE001 - NATS away: the next period tries again
                log.warning("runtime host heartbeat not sent: %s", exc)
            asked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asked.wait(), period)
    finally:
        if looking is not None:
            looking.cancel()
        await sub.unsubscribe()


async def run(source: VersionSource, run_dir: pathlib.Path, manager_args: Sequence[str],
              runtime_args: Sequence[str], nats_url: str, resync_seconds: float, *, name: str,
              heartbeat_seconds: float, control_plane: str, apps_domain: str = "", capacity_mb: int = 0,
              manager_metrics: PortRange | None = None) -> int:
    host = Host(source, run_dir, manager_args, runtime_args, control_plane=control_plane, apps_domain=apps_domain,
                capacity_mb=capacity_mb, name=name, manager_metrics=manager_metrics)
    nc = await bus.connect(nats_url, name="runtime-host")
    host.placement = await bus.placement_bucket(nc)
    host.js = nc.jetstream()
    events: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def enqueue(subject: str, data: bytes) -> None:
        events.put_nowait((subject, data))  # handled in order by the loop below, never in the NATS callback
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def handle() -> None:
        while True:
            subject, data = await events.get()
            try:
                await host.on_event(subject, data)
            except Exception as exc:  # noqa: BLE001 - the periodic resync retries
                log.warning("acting on a deployment event: %s", exc)

    tasks = [asyncio.ensure_future(follow(nc, enqueue, host.reconcile, resync_seconds, "versions")),
             asyncio.ensure_future(handle()), asyncio.ensure_future(report(nc, name, heartbeat_seconds)),
             asyncio.ensure_future(take_demands(nc, host)), asyncio.ensure_future(host.keep_placements()),
             asyncio.ensure_future(host.keep_balance())]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await host.shutdown()
        await source.close()
        await bus.shutdown(nc)
    return 0


def parser() -> argparse.ArgumentParser:
    """``python -m runtime.host``'s command line (its errors are one-line :class:`ConfigError`)."""
    parser = config.Parser(prog="python -m runtime.host", description=__doc__.split("\n\n")[0],
                           epilog="Arguments after -- go to every runtime instance. In the environment: "
                                  f"{CONTROL_TOKEN_ENV} (a platform read token) and {NATS_URL_ENV} (required).")
    parser.add_argument("--control-plane", required=True, help="the control plane's gRPC address (host:port)")
    parser.add_argument("--run-dir", required=True, type=pathlib.Path, help="where managers and instances log")
    parser.add_argument("--cache-dir", type=pathlib.Path, default=pathlib.Path.home() / ".cache" / "kiln" / "host",
                        help="where deployed versions' files are kept (default: %(default)s)")
    parser.add_argument("--resync-seconds", type=float, default=10.0,
                        help="how often versions are re-read from the control plane (default: %(default)s)")
    parser.add_argument("--name", default=socket.gethostname(),
                        help="this host's name at the control plane, unique in the cluster (default: %(default)s)")
    parser.add_argument("--heartbeat-seconds", type=float, default=5.0,
                        help="how often the host tells the control plane which Pythons it has (default: %(default)s)")
    parser.add_argument("--apps-domain", default="",
                        help="the domain apps are served under (the router's --domain): each app's instances get "
                             "DEFAULT_VERSION_HOSTNAME APP.DOMAIN, which modules.get_hostname() and the SDK's "
                             "app_identity read (default: the runtime's --default-hostname)")
    parser.add_argument("--capacity-mb", type=int, default=0,
                        help="memory this host gives instances: versions are started here only while their "
                             "instance class fits (F1 384 MB, F2 768, F4 1536, F4_1G and B8 3072; B1-B4 as F1-F4) "
                             f"(default: {DEFAULT_CAPACITY_SHARE:.0%} of the machine's memory)")
    parser.add_argument("--manager-metrics", type=PortRange.parse, default=None, metavar="HOST:FIRST-LAST",
                        help="each manager serves its Prometheus metrics on HOST at a free port of FIRST-LAST, "
                             "listed in RUN_DIR/metrics-targets.json (Prometheus file_sd format); no "
                             "authentication: an address only scrapers reach (default: none)")
    parser.add_argument("--manager-arg", action="append", default=[], dest="manager_args",
                        help="an option passed to every runtime.manager (repeat), e.g. --manager-arg=--isolation=none")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    try:
        args = parser().parse_args(argv[:split])
        token, nats_url = (os.environ.get(name, "") for name in (CONTROL_TOKEN_ENV, NATS_URL_ENV))
        for name, value in ((CONTROL_TOKEN_ENV, token), (NATS_URL_ENV, nats_url)):
            if not value:
                raise ConfigError(f"{name}: required in the environment")
    except ConfigError as exc:
        print(f"runtime.host: {exc}", file=sys.stderr)
        return 2
    kiln_log.setup(component="host")
    os.umask(0o077)
    for private in (args.run_dir, args.cache_dir):  # logs; every deployed app's files
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        private.chmod(0o700)

    async def main_async() -> int:
        source = VersionSource(args.control_plane, token, args.cache_dir)  # its channel needs the running loop
        return await run(source, args.run_dir, args.manager_args, argv[split + 1:], nats_url, args.resync_seconds,
                         name=args.name, heartbeat_seconds=args.heartbeat_seconds,
                         control_plane=args.control_plane, apps_domain=args.apps_domain,
                         capacity_mb=args.capacity_mb or default_capacity_mb(),
                         manager_metrics=args.manager_metrics)
    return asyncio.run(main_async())


if __name__ == "__main__":
    raise SystemExit(main())
