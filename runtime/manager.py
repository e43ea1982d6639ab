"""The instance manager: starts and stops a version's instances, as App Engine's automatic scaling.

``python -m runtime.manager [OPTIONS] -- RUNTIME_ARGS...`` runs instances of
one app version (each ``python -m runtime RUNTIME_ARGS --instance-id ...``)
and keeps their number where the load wants it:

- never fewer than ``min_instances`` (app.yaml ``automatic_scaling``; App Engine's default is 0) and, unless
  ``--scale-to-zero``, never fewer than one — an instance that exits (crashed, or stuck past a deadline) is
  replaced;
- more while instances are busy: each heartbeat reports the requests an
  instance holds; when they average above ``max_concurrent_requests`` ×
  ``target_throughput_utilization`` a new instance starts, up to ``max_instances``;
- fewer when instances stay idle longer than ``idle_seconds``.

With ``--scale-to-zero`` (what ``runtime.host`` runs a version without resident instances with), the manager starts
one instance at once (it was started because a request wants one), lets idle instances go down to
``min_instances``, and, once none is left, exits with status 0: the version runs nothing until a request asks
for it again (:mod:`runtime.host`). ``kiln dev`` keeps one instance ready.

Instances share the version's NATS queue group, so a new instance takes work
as soon as it subscribes and a stopping one drains its requests first; a
killed instance costs only the requests it held, and those get a 500 at once,
as on App Engine: each instance tells the manager which requests it holds
(:mod:`runtime.inflight`), and when one ends with requests unanswered, whatever
ended it, the manager answers each with a 500 on its own NATS connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence

from nats.aio.client import Client

from kiln_platform import appyaml, auth, bus, config, forward, handover, interpreters, metrics, natsauth, tracing
from kiln_platform import log as kiln_log
from kiln.errors import ConfigError
from kiln.pb.runtime.v1 import events_pb2, http_pb2
from kiln_platform.config import HostPort
from kiln_platform.supervisor import Child, Confinement, StartError, Supervisor
from runtime import cgroups, inflight, isolation, libraries, memory, runtimeenv
from runtime.config import RuntimeConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT = 10
DEFAULT_TARGET_UTILIZATION = 0.6


@dataclasses.dataclass
class Scaling:
    """The bounds and targets of automatic scaling."""

    min_instances: int = 0  # App Engine's default: no instance is kept without traffic
    max_instances: int = 20
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT
    target_utilization: float = DEFAULT_TARGET_UTILIZATION
    idle_seconds: float = 900.0
    min_pending_latency: float = 0.0  # seconds a request must wait before load may add an instance
    max_pending_latency: float | None = None  # past this wait, add an instance whatever the utilization

    @classmethod
    def from_app(cls, config: appyaml.AppConfig, **overrides: float | int | None) -> Scaling:
        auto = config.automatic_scaling
        out = cls()
        if auto is not None:
            out.min_instances = auto.min_instances or out.min_instances
            out.max_instances = auto.max_instances or out.max_instances
            out.max_concurrent_requests = auto.max_concurrent_requests or out.max_concurrent_requests
            out.target_utilization = auto.target_throughput_utilization or out.target_utilization
            out.min_pending_latency = auto.min_pending_latency_seconds or 0.0
            out.max_pending_latency = auto.max_pending_latency_seconds
        if config.manual_scaling is not None:  # a fixed number of resident instances
            out.min_instances = out.max_instances = config.manual_scaling.instances
        elif config.basic_scaling is not None:
            # App Engine starts basic instances on the first request and stops them after idle_timeout.
            out.max_instances = config.basic_scaling.max_instances
            out.idle_seconds = float(config.basic_scaling.idle_timeout_seconds)
        if not config.threadsafe:
            out.max_concurrent_requests = 1
        for name, value in overrides.items():
            if value is not None:
                setattr(out, name, type(getattr(out, name))(value))
        out.max_instances = max(out.max_instances, out.min_instances)
        return out

    def wanted(self, active_requests: int, current: int, pending_seconds: float) -> int:
        """How many instances the load asks for.

        ``active_requests`` are those the instances hold (running or queued);
        ``pending_seconds`` is how long the longest-queued request has waited.
        As App Engine's ``min_pending_latency``, load adds no instance until a
        request has waited that long; as its ``max_pending_latency``, a longer
        wait adds one even when utilization would not.
        """
        per_instance = max(self.max_concurrent_requests * self.target_utilization, 1e-9)
        need = math.ceil(active_requests / per_instance)
        if need > current and pending_seconds < self.min_pending_latency:
            need = current
        if self.max_pending_latency is not None and pending_seconds > self.max_pending_latency:
            need = max(need, current + 1)
        return min(self.max_instances, max(self.min_instances, need))


@dataclasses.dataclass
class _Instance:
    child: Child
    instance_id: str
    started: float
    ready_file: pathlib.Path
    tracker: inflight.Tracker
    home: pathlib.Path | None = None
    group: cgroups.InstanceGroup | None = None
    ready: bool = False
    active: int = 0
    pending_seconds: float = 0.0
    busy_at: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass(frozen=True)
class Launch:
    """How instances of the version are started: the runtime's arguments, its environment and OS confinement."""

    runtime_args: Sequence[str]
    env: Mapping[str, str]
    confinement: Confinement
    app_root: pathlib.Path | None = None  # with user isolation: the app's directory under the isolation root
    uid: int | None = None
    staged: pathlib.Path | None = None  # with user isolation: the private copy of the version's files
    # With a private network: the Unix sockets instances reach NATS and the services through, and their directory.
    forwards: Sequence[forward.UnixToTcp] = ()
    socket_dir: pathlib.Path | None = None
    # Where the kernel can hold instances to a memory limit: the manager's cgroup, and the limit (bytes).
    cgroup: cgroups.Parent | None = None
    memory_cap: int = 0
    python: pathlib.Path = pathlib.Path(sys.executable)  # runs ``-m runtime``: the Python app.yaml's runtime names


# An instance that exits before it serves is restarted after a delay that doubles, up to this.
MAX_RESTART_DELAY = 30.0
# Initial instances failing this many times in a row before serving: the version cannot start.
START_ATTEMPTS = 3
# How long an ended instance's last processes may take to go (killed) before its requests are answered anyway.
EXIT_WAIT_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Orphans:
    """Requests an instance held when it ended: each reply subject gets ``response``."""

    instance_id: str
    subjects: Sequence[str]
    response: http_pb2.HttpResponse


class Manager:
    """Runs the instances of one version (see module docstring)."""

    def __init__(self, supervisor: Supervisor, launch: Launch, scaling: Scaling, *,
                 scale_to_zero: bool = False, grant_file: pathlib.Path | None = None) -> None:
        self._sup = supervisor
        # With runtime.host: the file where the host says how many instances this host has room for (a number);
        # the manager writes how many it wants beside it (``wanted``), and the host grants more when it can or asks
        # another host to run the version too (see runtime.host).
        self.grant_file = grant_file
        self._said_wanted = ""
        self._launch = launch
        self.scaling = scaling
        self.scale_to_zero = scale_to_zero
        self.instances: dict[str, _Instance] = {}
        self.stopping: dict[str, _Instance] = {}  # sent SIGTERM (scaled down), not yet gone
        self.orphans: list[Orphans] = []  # requests of ended instances, for run() to answer
        self._failures = 0  # consecutive exits before serving
        self._next_start = 0.0
        self.ever_ready = False
        self.on_change: Callable[[], None] = lambda: None
        self._leftover: list[cgroups.InstanceGroup] = []  # groups whose last processes were still exiting

    def start_instance(self) -> _Instance:
        instance_id = uuid.uuid4().hex
        env = dict(self._launch.env)
        home = None
        confinement = self._launch.confinement
        if self._launch.app_root is not None and self._launch.uid is not None:
            home = isolation.instance_dir(self._launch.app_root, instance_id, self._launch.uid)
            env.update(HOME=str(home), TMPDIR=str(home))
            ready = home / "ready.addr"
        else:
            ready = self._sup.run_dir / f"instance-{instance_id}.addr"
        if confinement.private_tmp_mb is not None:
            env.update(TMPDIR="/tmp")  # its own tmpfs, bounded, gone with the instance
        group = None
        if self._launch.cgroup is not None:
            group = self._launch.cgroup.create(f"instance-{instance_id}", self._launch.memory_cap)
            confinement = dataclasses.replace(confinement, cgroups=(group.path,))
        tracker = inflight.Tracker()
        try:
            child = self._sup.spawn(f"instance-{instance_id[:8]}", [
                str(self._launch.python), "-m", "runtime", *self._launch.runtime_args, "--instance-id", instance_id,
                "--ready-file", str(ready), "--inflight-fd", str(tracker.write_fd)],
                env=env, ready_file=ready, confinement=confinement, cwd=home, pass_fds=(tracker.write_fd,))
        finally:
            tracker.spawned()
        inst = self.instances[instance_id] = _Instance(child, instance_id, time.monotonic(), ready, tracker, home,
                                                       group)
        log.info("starting instance %s (pid %d; %d running)", instance_id, child.proc.pid, len(self.instances))
        self.on_change()
        return inst

    def stop_instance(self, instance_id: str) -> None:
        found = self.instances.pop(instance_id, None)
        if found is not None:
            self.stopping[instance_id] = found  # until it is gone: it may still answer what it holds
            if found.child.proc.poll() is None:
                log.info("stopping idle instance %s", instance_id)
                found.child.proc.send_signal(signal.SIGTERM)
        self.on_change()

    @property
    def running(self) -> list[_Instance]:
        """Every instance whose process may still run (serving, starting or stopping)."""
        return [*self.instances.values(), *self.stopping.values()]

    def memory_bytes(self) -> int:
        """The memory every running instance uses now (runtime.memory; called from the metrics thread)."""
        total = 0
        for inst in list(self.running):
            used = inst.group.current_bytes() if inst.group is not None else None
            total += used if used is not None else memory.resident_bytes(inst.child.proc.pid)
        return total

    def on_heartbeat(self, beat: events_pb2.InstanceHeartbeat) -> None:
        found = self.instances.get(beat.instance_id)
        if found is None:
            return
        found.active = beat.active_requests
        found.pending_seconds = beat.pending_latency_ms / 1000
        if beat.active_requests:
            found.busy_at = time.monotonic()

    @property
    def starting(self) -> bool:
        return any(not i.ready for i in self.instances.values())

    @property
    def floor(self) -> int:
        """The fewest instances to keep: ``min_instances``; at least one without ``--scale-to-zero``, and at least one
        until the first has served (a manager is started because a request wants an instance)."""
        if not self.scale_to_zero or not self.ever_ready:
            return max(1, self.scaling.min_instances)
        return self.scaling.min_instances

    @property
    def scaled_to_zero(self) -> bool:
        """With ``--scale-to-zero``: every instance has gone idle and stopped; the manager's work is done."""
        return self.scale_to_zero and self.ever_ready and self.floor == 0 and not self.instances and not self.stopping

    def tick(self) -> None:
        """One scaling decision.

        Raises:
            StartError: the first instances keep exiting before they serve.
        """
        now = time.monotonic()
        for inst in self.running:
            # Read in batches, not as each line arrives: waking for every request cost the manager 50 µs of CPU per
            # request; the pipe holds a quarter second of lines many times over.
            inst.tracker.feed()
        for instance_id, inst in list(self.stopping.items()):
            if inst.child.proc.poll() is not None:
                del self.stopping[instance_id]
                self._sup.children.remove(inst.child)
                log.info("stopped instance %s %s", instance_id, self._ended(inst))
                if inst.home is not None:
                    isolation.remove_instance_dir(inst.home)
                self._release(inst)
                self.on_change()
        for instance_id, inst in list(self.instances.items()):
            if not inst.ready and inst.ready_file.exists():
                inst.ready = self.ever_ready = True
                inst.busy_at = now  # idle from when it could first serve, not from when it was started
                self._failures = 0
                self.on_change()
            if inst.child.proc.poll() is None:
                continue
            status = inst.child.proc.returncode
            self.instances.pop(instance_id)
            self._sup.children.remove(inst.child)
            self._ended(inst)
            if inst.home is not None:
                isolation.remove_instance_dir(inst.home)
            self._release(inst)
            if inst.ready:
                log.warning("instance %s exited with status %s; replacing it", instance_id, status)
            else:
                self._failures += 1
                delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (self._failures - 1))
                self._next_start = now + delay
                log.error("instance %s exited with status %s before serving (retrying in %.1f s):\n%s",
                          instance_id, status, delay, inst.child.log_tail())
                if not self.ever_ready and self._failures >= START_ATTEMPTS:
                    raise StartError(f"the version's instances exit before serving (status {status}):\n"
                                     f"{inst.child.log_tail()}")
            self.on_change()
        self._leftover = [g for g in self._leftover if not g.remove()]
        if now < self._next_start:
            return
        current = len(self.instances)
        active = sum(i.active for i in self.instances.values())
        pending = max((i.pending_seconds for i in self.instances.values()), default=0.0)
        grant = self.grant()
        if grant is not None and grant[1] is not None:  # of a resident version's min_instances, those kept here
            self.scaling.min_instances = grant[1]
        floor = self.floor
        wanted = max(floor, self.scaling.wanted(active, current, pending))
        self._say_wanted(wanted, current)
        if grant is not None:  # the rest runs on other hosts
            floor, wanted = min(floor, grant[0]), min(wanted, grant[0])
        if current < floor or (wanted > current and not self.starting):
            self.start_instance()
        elif current > floor:
            idle = [i for i in self.instances.values()
                    if i.ready and i.active == 0 and now - i.busy_at > self.scaling.idle_seconds]
            if idle and current > wanted:
                self.stop_instance(min(idle, key=lambda i: i.busy_at).instance_id)

    def grant(self) -> tuple[int, int | None] | None:
        """What the host's grant file says: how many instances it has room for here and, for a version with resident
        instances, how many of them this manager keeps (None: no host counts them, as under kiln dev)."""
        if self.grant_file is None:
            return None
        try:
            numbers = [int(n) for n in self.grant_file.read_text().split()]
            return max(1, numbers[0]), (max(0, numbers[1]) if len(numbers) > 1 else None)
        except (OSError, ValueError, IndexError):
            return 1, None  # the host writes it before starting the manager; one instance is what it counted

    def _say_wanted(self, wanted: int, current: int) -> None:
        """Tell the host how many instances the load wants and how many run (when that changed)."""
        if self.grant_file is None:
            return
        said = f"{wanted} {current}\n"
        if said != self._said_wanted:
            tmp = self.grant_file.with_name("wanted.tmp")
            tmp.write_text(said)
            os.replace(tmp, self.grant_file.with_name("wanted"))
            self._said_wanted = said

    def _ended(self, inst: _Instance) -> str:
        """Queue a 500 for each request an instance that is gone still held; how it ended ("exited with status 0")."""
        status = inst.child.proc.returncode
        kills = 0 if inst.group is None else inst.group.oom_kills()
        if kills:
            reason = f"was killed by the kernel for passing its memory limit of {self._launch.memory_cap >> 20} MB"
            log.critical("instance %s %s (%d process(es) killed)", inst.instance_id, reason, kills)
        else:
            reason = exit_reason(status, namespaced=self._launch.confinement.pid_namespace)
        if inst.group is not None:
            # Its wrapper may have died first (the runtime then dies a moment later, with its PID namespace): only
            # once no process of it is left has it written its last line, and has NATS seen its connection close,
            # so that a client who retries on the 500 is not routed to it.
            inst.group.kill()
            gone = time.monotonic() + EXIT_WAIT_SECONDS
            while inst.group.processes() and time.monotonic() < gone:
                time.sleep(0.005)
        held = inst.tracker.close()
        if inst.tracker.refused:
            log.warning("instance %s wrote %d line(s) into its request pipe that were not its requests' reply "
                        "subjects (ignored)", inst.instance_id, inst.tracker.refused)
        if held:
            log.error("instance %s %s while holding %d request(s): answering each with a 500", inst.instance_id,
                      reason, len(held))
            self.orphans.append(Orphans(inst.instance_id, held, inflight.exited_response(
                inst.instance_id, out_of_memory=kills > 0, reason=reason)))
        return reason

    def take_orphans(self) -> list[Orphans]:
        found, self.orphans = self.orphans, []
        return found

    def _release(self, inst: _Instance) -> None:
        """Record what the instance's memory came to and delete its cgroup (killing anything left in it)."""
        group = inst.group
        if group is None:
            return
        peak = group.peak_bytes()
        log.info("instance %s used at most %s MB of memory (limit %d MB)", inst.instance_id,
                 "?" if peak is None else peak >> 20, self._launch.memory_cap >> 20)
        if not group.remove():
            self._leftover.append(group)

    async def open_network(self) -> None:
        """Start forwarding the instances' Unix sockets (with a private network)."""
        for relay in self._launch.forwards:
            await relay.start()

    async def settle_network(self) -> None:
        """Let the forwarders pass on the end of ended instances' connections (see :meth:`UnixToTcp.settle`)."""
        for relay in self._launch.forwards:
            await relay.settle(EXIT_WAIT_SECONDS)

    async def close_network(self) -> None:
        for relay in self._launch.forwards:
            await relay.close()
        if self._launch.socket_dir is not None:
            shutil.rmtree(self._launch.socket_dir, ignore_errors=True)

    def shutdown(self) -> None:
        """Stop every instance (SIGTERM, so each finishes its requests) and remove the staged files."""
        self._sup.stop_all()
        for inst in self.running:
            self._ended(inst)
            self._release(inst)
        self.instances.clear()
        self.stopping.clear()
        deadline = time.monotonic() + 10
        while self._leftover and time.monotonic() < deadline:  # a killed process takes a moment to leave
            self._leftover = [g for g in self._leftover if not g.remove()]
            time.sleep(0.05)
        if self._launch.cgroup is not None:
            self._launch.cgroup.remove()
        if self._launch.staged is not None:
            shutil.rmtree(self._launch.staged, ignore_errors=True)

    @property
    def run_dir(self) -> pathlib.Path:
        return self._sup.run_dir

    def write_state(self, path: pathlib.Path) -> None:
        """Record the running instances (id, pid, ready) for operators and tests."""
        state = [{"instance_id": i.instance_id, "pid": i.child.proc.pid, "ready": i.ready,
                  "cgroup": None if i.group is None else str(i.group.path)} for i in self.instances.values()]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)


async def run(manager: Manager, nats_url: str, app_id: str, version_id: str, ready_file: pathlib.Path | None, *,
              metrics_listen: config.ListenAddress | None = None) -> int:
    nc = await bus.connect(nats_url, name=f"manager-{app_id}-{version_id}")
    measured = (metrics.ManagerMetrics(app_id, version_id, memory=manager.memory_bytes)
                if metrics_listen is not None else None)
    wake = asyncio.Event()
    metrics_server = metrics.serve(metrics_listen)

    async def on_beat(msg: object) -> None:
        try:
            beat = events_pb2.InstanceHeartbeat.FromString(msg.data)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a malformed heartbeat is ignored
            log.warning("ignoring a malformed heartbeat")
            return
        manager.on_heartbeat(beat)
        if measured is not None and beat.instance_id in manager.instances:
            measured.heartbeat(beat.instance_id, beat.requests_served)

    await nc.subscribe(bus.heartbeat_subject(app_id, version_id), cb=on_beat)

    async def on_stop(msg: object) -> None:
        # The control plane's StopInstance (deploy/control/instances.py): only the manager running it answers.
        instance_id = msg.data.decode(errors="replace")  # type: ignore[attr-defined]
        if instance_id in manager.instances:
            log.info("stopping instance %s: an administrator asked for it", instance_id)
            manager.stop_instance(instance_id)
            wake.set()  # scaling starts another at once if the version needs one
            await msg.respond(b"")  # type: ignore[attr-defined]

    await nc.subscribe(bus.manager_stop_subject(app_id, version_id), cb=on_stop)
    await bus.BodyStore(nc, app_id).ensure()  # the app's instances may use its bucket, not create it
    await manager.open_network()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    state_file = manager.run_dir / "instances.json"
    watched: dict[int, int] = {}  # pid -> pidfd, so an exit wakes the loop at once

    def changed() -> None:
        manager.write_state(state_file)
        running = manager.running
        if measured is not None:
            serving = sum(i.ready for i in manager.instances.values())
            measured.instances(len(manager.instances) - serving, serving, len(manager.stopping))
            measured.forget({i.instance_id for i in running})
        for inst in running:
            pid = inst.child.proc.pid
            if pid not in watched:
                with contextlib.suppress(OSError):
                    fd = watched[pid] = os.pidfd_open(pid)
                    loop.add_reader(fd, wake.set)
        for pid in [p for p in watched if all(i.child.proc.pid != p for i in running)]:
            loop.remove_reader(watched[pid])
            os.close(watched.pop(pid))

    manager.on_change = changed
    status = 0
    try:
        while not stop.is_set():
            try:
                manager.tick()
            except StartError as exc:
                log.error("%s", exc)
                status = 1
                break
            finally:
                await answer(nc, manager)
            if ready_file is not None and manager.ever_ready and not ready_file.exists():
                ready_file.write_text("managing\n")
            if manager.scaled_to_zero:
                log.info("every instance went idle and stopped: scaled to zero")
                break
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop.wait(), wake.wait()), timeout=0.1 if manager.starting else 0.25)
    finally:
        log.info("stopping %d instances", len(manager.instances))
        await loop.run_in_executor(None, manager.shutdown)
        await answer(nc, manager)
        changed()
        await manager.close_network()
        await bus.shutdown(nc)
        if metrics_server is not None:
            metrics_server.close()
    return status


async def answer(nc: Client, manager: Manager) -> None:
    """Answer each request of the ended instances with its 500, on the manager's connection.

    First NATS must have seen each ended instance's connection close (with a private network, through the
    manager's own forwarders), or a client retrying on the 500 could be routed to the dead instance again.
    The reply subjects are the router's inboxes (``_INBOX.>``), which the platform's NATS user, the manager's, may
    publish to; an app's own user could not (it may answer only requests delivered to it).
    """
    orphans = manager.take_orphans()
    if not orphans:
        return
    await manager.settle_network()
    try:
        for found in orphans:
            payload = found.response.SerializeToString()
            for subject in found.subjects:
                await nc.publish(subject, payload)
        await nc.flush(timeout=5)
    except Exception as exc:  # noqa: BLE001 - the router's timeout still answers them
        log.warning("could not answer the requests of ended instances: %s", exc)


def exit_reason(status: int | None, *, namespaced: bool) -> str:
    """How an instance's process ended, from its wrapper's exit status (128 + N when the command died of signal N
    inside a PID namespace, the signal itself otherwise)."""
    if status is None:
        return "ended"
    number = -status if status < 0 else status - 128 if namespaced and status > 128 else 0
    if number:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(number).name}"
        return f"was killed by signal {number}"
    return f"exited with status {status}"


async def _first(*waits: Coroutine[object, object, object]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def instance_env(base: Mapping[str, str], app_token: str) -> dict[str, str]:
    """The environment of an instance: the manager's, less every secret, plus the app's token."""
    env = {k: v for k, v in base.items()
           if not (k.startswith("KILN_") and ("SECRET" in k or k.endswith("_NATS_URL")))}
    env["KILN_RUNTIME_APP_TOKEN"] = app_token
    return env


def parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """``python -m runtime.manager``'s command line (its errors are one-line :class:`ConfigError`)."""
    parser = config.Parser(prog="python -m runtime.manager", description=__doc__.split("\n\n")[0],
                           epilog="The service secret comes from KILN_MANAGER_SERVICE_SECRET (in the environment, "
                                  "or handed over through the pipe KILN_SECRETS_FD names); instances get only their "
                                  "app's token.")
    parser.add_argument("--app-dir", required=True, type=pathlib.Path, help="the version's directory (app.yaml)")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--version-id", required=True)
    parser.add_argument("--nats-url", default=environ.get("KILN_MANAGER_NATS_URL", ""),
                        help="the platform's NATS URL (default: KILN_MANAGER_NATS_URL, where credentials are kept "
                             "off the command line)")
    parser.add_argument("--run-dir", required=True, type=pathlib.Path, help="where instance logs and files go")
    parser.add_argument("--min-instances", type=int)
    parser.add_argument("--max-instances", type=int)
    parser.add_argument("--max-concurrent-requests", type=int)
    parser.add_argument("--idle-seconds", type=float)
    parser.add_argument("--scale-to-zero", action="store_true",
                        help="start one instance now, let idle ones go down to min_instances, and exit once none is "
                             "left (runtime.host starts the manager again when a request wants the version)")
    parser.add_argument("--ready-file", type=pathlib.Path, help="written once the first instances serve")
    parser.add_argument("--metrics-listen", type=lambda text: config.ListenAddress.parse(text, "metrics_listen"),
                        default=environ.get("KILN_MANAGER_METRICS_LISTEN") or None,
                        help=f"{config.METRICS_LISTEN_HELP} (default: KILN_MANAGER_METRICS_LISTEN)")
    parser.add_argument("--grant-file", type=pathlib.Path,
                        help="(runtime.host) holds how many instances this host has room for; the manager writes "
                             "how many it wants to 'wanted' beside it")
    parser.add_argument("--isolation", choices=("auto", "user", "none"), default="auto",
                        help="user: each app's instances run as the app's own Unix user on a private copy of its "
                             "files (needs root); none: as the manager's user; auto: user when running as root "
                             "and the platform is readable by app users (default: %(default)s)")
    parser.add_argument("--network-isolation", choices=("auto", "on", "off"), default="auto",
                        help="on: each instance runs in a network namespace of its own and reaches only NATS and "
                             "the services, through Unix sockets the manager forwards (needs --isolation user); "
                             "auto: on with user isolation where the kernel allows it (default: %(default)s)")
    parser.add_argument("--isolation-root", type=pathlib.Path, default=isolation.DEFAULT_ROOT,
                        help="where app users and staged files live (default: %(default)s)")
    parser.add_argument("--first-app-uid", type=int, default=isolation.DEFAULT_FIRST_UID,
                        help="app users are numbered from here (default: %(default)s)")
    parser.add_argument("--stage-exclude", type=pathlib.Path, action="append", default=[],
                        help="a directory inside the app directory not to copy (e.g. kiln dev's data)")
    parser.add_argument("--memory-mb", type=int, help="instance memory (default: app.yaml's instance_class)")
    parser.add_argument("--cache-dir", type=pathlib.Path, default=pathlib.Path.home() / ".cache" / "kiln",
                        help="where platform libraries and requirements.txt environments are installed "
                             "(default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("runtime.manager: usage: python -m runtime.manager [OPTIONS] -- RUNTIME_ARGS...", file=sys.stderr)
        return 2
    split = argv.index("--")
    environ = handover.receive(os.environ)  # the secrets kiln dev handed over through a pipe, never the environment
    try:
        args = parser(environ).parse_args(argv[:split])
        if not args.nats_url:
            raise ConfigError("nats_url: required (set KILN_MANAGER_NATS_URL or --nats-url)")
    except ConfigError as exc:
        print(f"runtime.manager: {exc}", file=sys.stderr)
        return 2
    kiln_log.setup(component="manager")
    log.info("app %s: managing version %s", args.app_id, args.version_id)
    os.umask(0o077)  # staged files, logs and sockets get their modes explicitly; anything else is the platform's
    args.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    args.cache_dir.chmod(0o700)  # libraries and requirements installed for apps
    try:
        manager = build(args, argv[split + 1:], environ)
    except (ConfigError, OSError) as exc:
        log.error("%s", exc)
        return 2
    return asyncio.run(run(manager, args.nats_url, args.app_id, args.version_id, args.ready_file,
                           metrics_listen=args.metrics_listen))


OPEN_FILES = 4096
APP_PROCESSES = 2048  # threads count too; shared by all of one app's instances on a host


def build(args: argparse.Namespace, extra_runtime_args: Sequence[str], environ: Mapping[str, str]) -> Manager:
    """The manager for a version: its scaling, and how its instances are launched and confined.

    Raises:
        ConfigError: app.yaml, the secret or the isolation settings are not usable.
    """
    secret = environ.get("KILN_MANAGER_SERVICE_SECRET", "")
    if not secret:
        raise ConfigError("KILN_MANAGER_SERVICE_SECRET: required (the manager mints the app's token from it)")
    config = appyaml.load(args.app_dir / "app.yaml")
    interpreter = interpreters.find(config, filename=str(args.app_dir / "app.yaml"),
                                    search=interpreters.Search.from_env(environ))
    scaling = Scaling.from_app(config, min_instances=args.min_instances, max_instances=args.max_instances,
                               max_concurrent_requests=args.max_concurrent_requests, idle_seconds=args.idle_seconds)
    memory_mb = args.memory_mb or isolation.instance_memory_mb(config)
    mode = args.isolation
    if mode == "auto":
        blocked = isolation.platform_blocked() if os.geteuid() == 0 else "not running as root"
        mode = "none" if blocked else "user"
        if blocked:
            log.warning("instances run as the manager's user, without per-app users: %s", blocked)
    hard_mb = isolation.hard_memory_mb(memory_mb)
    rlimits = {"nofile": OPEN_FILES, "core": 0, "as": (hard_mb + isolation.ADDRESS_SPACE_HEADROOM_MB) << 20}
    app_dir, app_root, uid = args.app_dir.resolve(), None, None
    environment = libraries.prepare(app_dir, config, args.cache_dir, python=interpreter)
    python = runtimeenv.python_for(interpreter, args.cache_dir)
    if mode == "user":
        if os.geteuid() != 0:
            raise ConfigError("--isolation user: the manager must run as root to start instances as app users")
        blocked = isolation.platform_blocked()
        if blocked:
            raise ConfigError(f"--isolation user: app users could not run kiln's Python: {blocked}. Install kiln and "
                              "Python where other users may read them, or use --isolation none")
        isolation.prepare_root(args.isolation_root)
        if not interpreter.own:  # the app's user runs kiln's runtime on that Python: both must be readable by it
            blocked = isolation.interpreter_blocked(interpreter.executable)
            if blocked:
                raise ConfigError(f"--isolation user: app users could not run {interpreter.executable}: {blocked}. "
                                  "Run python -m runtime.isolation prepare, or use --isolation none")
            python = runtimeenv.publish(python.parent.parent, args.isolation_root / "runtimes") / "bin" / "python"
        uid = isolation.app_user(args.isolation_root, args.app_id, args.first_app_uid)
        app_root = isolation.app_root(args.isolation_root, args.app_id, uid)
        staged = app_root / f"{args.version_id}-{os.getpid()}"
        isolation.stage(app_dir, staged / "app", config, uid, exclude=[args.run_dir, *args.stage_exclude])
        # The app's user reads its libraries and requirements from its own copy, not from the platform's cache.
        environment = libraries.Environment(
            tuple(isolation.copy_for(d, staged / "libraries" / d.name, uid) for d in environment.library_dirs),
            environment.requirements_dir and isolation.copy_for(environment.requirements_dir,
                                                                staged / "requirements", uid))
        isolation.share(staged, uid)
        app_dir = staged / "app"
        rlimits["nproc"] = APP_PROCESSES
    # kiln's own files (the run directory; kiln dev's data directory, which may lie inside the app's) are not
    # the app's to read.
    private = os.pathsep.join(str(d.resolve()) for d in [args.run_dir, *args.stage_exclude])
    runtime_args = ["--app-dir", str(app_dir), "--app-id", args.app_id, "--version-id", args.version_id,
                    "--memory-limit-mb", str(memory_mb), "--private-dirs", private, *environment.runtime_args(),
                    *extra_runtime_args]
    forwards: list[forward.UnixToTcp] = []
    sockets = None
    if _private_network(args.network_isolation, mode, args.nats_url):
        assert uid is not None  # user isolation
        sockets = isolation.socket_dir(uid)
        overrides, forwards = forwarded(sockets, uid, args.nats_url, service_addresses(runtime_args, environ),
                                        otlp_endpoint(runtime_args, environ))
        runtime_args += overrides  # the last occurrence of a flag wins
    env = instance_env(environ, auth.mint_app_token(secret, args.app_id))
    env["MALLOC_ARENA_MAX"] = str(isolation.MALLOC_ARENAS)  # keeps the address-space headroom true
    # The instance connects as the app's own NATS user when the platform has one per app, never as the platform.
    nats_secret = environ.get("KILN_MANAGER_NATS_APP_SECRET", "")
    env["KILN_RUNTIME_NATS_URL"] = natsauth.with_credentials(
        args.nats_url, natsauth.app_user(args.app_id) if nats_secret else None,
        natsauth.app_password(nats_secret, args.app_id) if nats_secret else None)
    namespaces = _process_namespaces()
    # What instances read and write on the host, kiln's own installation included; under a private /tmp it must
    # stay visible (tests, kiln dev, or kiln itself installed under /tmp).
    keep = [*isolation.platform_paths(), app_dir, args.run_dir.resolve(), *environment.library_dirs,
            *([environment.requirements_dir] if environment.requirements_dir else []),
            *([sockets] if sockets else []), *([app_root] if app_root else []),
            *([] if interpreter.own else [python.parent.parent, *isolation.interpreter_paths(interpreter.executable)])]
    memory = _memory_cgroup(f"{cgroups.PREFIX}{args.app_id}-{args.version_id}-{os.getpid()}")
    launch = Launch(runtime_args=runtime_args, env=env,
                    confinement=Confinement(uid=uid, gid=uid, rlimits=rlimits, private_network=sockets is not None,
                                            private_tmp_mb=memory_mb if namespaces else None,
                                            pid_namespace=namespaces, keep=keep if namespaces else ()),
                    app_root=app_root, uid=uid, staged=app_dir.parent if mode == "user" else None,
                    forwards=forwards, socket_dir=sockets, cgroup=memory,
                    memory_cap=int(memory_mb * isolation.KERNEL_MEMORY_FACTOR) << 20, python=python)
    return Manager(Supervisor(args.run_dir), launch, scaling, scale_to_zero=args.scale_to_zero,
                   grant_file=args.grant_file)


# RuntimeConfig's ``<name>_addr`` settings ("modules": the control plane, for App Engine's Modules API; unset under
# kiln dev, where the instance answers from its own version).
SERVICES = ("datastore", "memcache", "urlfetch", "mail", "images", "identity", "taskqueue", "blobstore", "modules")


def _process_namespaces() -> bool:
    """Whether instances get a PID namespace and a private /tmp (root, and a kernel that allows them)."""
    blocked = isolation.namespaces_blocked()
    if blocked:
        log.warning("processes an instance starts may outlive it, and it writes to the host's /tmp, /var/tmp and "
                    "/dev/shm without bound: %s", blocked)
    return blocked is None


def _memory_cgroup(name: str) -> cgroups.Parent | None:
    """The cgroup under which the kernel holds each instance to its memory limit, or None (with a warning)."""
    found, why = cgroups.find(name)
    if found is None:
        log.warning("instance memory is bounded only by an address-space limit and the runtime's watchdog: %s", why)
    return found


def _private_network(setting: str, mode: str, nats_url: str) -> bool:
    """Whether instances get a network of their own (``--network-isolation``).

    Raises:
        ConfigError: ``on`` where it cannot be.
    """
    if setting == "off":
        return False
    blocked = "needs --isolation user (the app's own Unix user)" if mode != "user" else (
        isolation.network_blocked() or _unforwardable_nats(nats_url))
    if blocked and setting == "on":
        raise ConfigError(f"--network-isolation on: {blocked}")
    if blocked and mode == "user":
        log.warning("instances share the host's network: %s", blocked)
    return not blocked


def _unforwardable_nats(url: str) -> str | None:
    for scheme in (server.scheme for server in bus.servers(url)):
        if scheme != "nats":
            return (f"NATS over {scheme}:// is not forwarded (the client would check the server's certificate "
                    "against the loopback address it dials)")
    return None


def service_addresses(runtime_args: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The services' addresses the runtime would use: its flags, else ``KILN_RUNTIME_<NAME>_ADDR``, else its
    defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    for name in SERVICES:
        parser.add_argument(f"--{name}-addr", dest=name)
    given, _ = parser.parse_known_args(list(runtime_args))
    defaults = {f.name: f.default for f in dataclasses.fields(RuntimeConfig)}
    return {name: getattr(given, name) or environ.get(f"KILN_RUNTIME_{name.upper()}_ADDR")
            or str(defaults[f"{name}_addr"]) for name in SERVICES}


def otlp_endpoint(runtime_args: Sequence[str], environ: Mapping[str, str]) -> str:
    """The OTLP collector the runtime would export traces to: its flag, else ``KILN_RUNTIME_OTLP_ENDPOINT``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--otlp-endpoint", dest="otlp")
    given, _ = parser.parse_known_args(list(runtime_args))
    return str(given.otlp or environ.get("KILN_RUNTIME_OTLP_ENDPOINT", ""))


def forwarded(directory: pathlib.Path, gid: int, nats_url: str, services: Mapping[str, str],
              otlp: str = "") -> tuple[list[str], list[forward.UnixToTcp]]:
    """The runtime flags that point an instance at Unix sockets in ``directory``, and the forwarders behind them
    (NATS, the services, and the OTLP collector ``otlp`` when the instance traces).

    Memcache shards keep their names (``NAME=unix:PATH``): the client's hash ring is over the names, so an
    instance picks the same shard for a key as every other client.

    Raises:
        ConfigError: an address that is not host:port.
    """
    flags: list[str] = []
    relays: list[forward.UnixToTcp] = []

    def relay(name: str, targets: list[str]) -> str:
        try:
            relays.append(forward.UnixToTcp(directory / f"{name}.sock", targets, gid))
        except ValueError as exc:
            raise ConfigError(f"cannot forward {name} to instances without a network: {exc}") from None
        return str(relays[-1].path)

    servers = []
    for parts in bus.servers(nats_url):
        servers.append(str(HostPort(parts.hostname or "", parts.port or 4222)))
    flags += ["--nats-socket", relay("nats", servers)]
    for name, address in services.items():
        if not address:
            continue  # not given to the instance (modules under kiln dev)
        if name == "memcache":
            shards = [a.strip() for a in address.split(",") if a.strip()]
            value = ",".join(f"{shard}=unix:{relay(f'memcache-{i}', [shard])}" for i, shard in enumerate(shards))
        else:
            value = f"unix:{relay(name, [address])}"
        flags += [f"--{name}-addr", value]
    if otlp:
        try:
            collector = tracing.collector_address(otlp)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        flags += ["--otlp-socket", relay("otlp", [collector])]
    return flags, relays


if __name__ == "__main__":
    raise SystemExit(main())
