"""The instance manager: starts and stops a version's instances, as App Engine's automatic scaling.

``python -m runtime.manager [OPTIONS] -- RUNTIME_ARGS...`` runs instances of
one app version (each ``python -m runtime RUNTIME_ARGS --instance-id ...``)
and keeps their number where the load wants it:

- never fewer than ``min_instances`` (app.yaml ``automatic_scaling``, default 1) —
  an instance that exits (crashed, or stuck past a deadline) is replaced;
- more while instances are busy: each heartbeat reports the requests an
  instance holds; when they average above ``max_concurrent_requests`` ×
  ``target_throughput_utilization`` a new instance starts, up to ``max_instances``;
- fewer when instances stay idle longer than ``idle_seconds``.

Instances share the version's NATS queue group, so a new instance takes work
as soon as it subscribes and a stopping one drains its requests first; a
killed instance costs only the requests it held.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import pathlib
import signal
import sys
import time
import uuid
from collections.abc import Sequence

from kiln.supervisor import Child, Supervisor, python_module
from kiln import appyaml, bus
from kiln import log as kiln_log
from kiln.pb.runtime.v1 import events_pb2

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT = 10
DEFAULT_TARGET_UTILIZATION = 0.6


@dataclasses.dataclass
class Scaling:
    """The bounds and targets of automatic scaling."""

    min_instances: int = 1
    max_instances: int = 20
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT
    target_utilization: float = DEFAULT_TARGET_UTILIZATION
    idle_seconds: float = 900.0

    @classmethod
    def from_app(cls, config: appyaml.AppConfig, **overrides: float | int | None) -> Scaling:
        auto = config.automatic_scaling
        out = cls()
        if auto is not None:
            out.min_instances = auto.min_instances or out.min_instances
            out.max_instances = auto.max_instances or out.max_instances
            out.max_concurrent_requests = auto.max_concurrent_requests or out.max_concurrent_requests
            out.target_utilization = auto.target_throughput_utilization or out.target_utilization
        if not config.threadsafe:
            out.max_concurrent_requests = 1
        for name, value in overrides.items():
            if value is not None:
                setattr(out, name, type(getattr(out, name))(value))
        out.max_instances = max(out.max_instances, out.min_instances)
        return out

    def wanted(self, active_requests: int) -> int:
        """How many instances the load asks for."""
        per_instance = max(self.max_concurrent_requests * self.target_utilization, 1e-9)
        need = math.ceil(active_requests / per_instance)
        return min(self.max_instances, max(self.min_instances, need))


@dataclasses.dataclass
class _Instance:
    child: Child
    instance_id: str
    started: float
    active: int = 0
    busy_at: float = dataclasses.field(default_factory=time.monotonic)


class Manager:
    """Runs the instances of one version (see module docstring)."""

    def __init__(self, supervisor: Supervisor, runtime_args: Sequence[str], scaling: Scaling) -> None:
        self._sup = supervisor
        self._args = list(runtime_args)
        self.scaling = scaling
        self.instances: dict[str, _Instance] = {}
        self._starting: set[str] = set()

    def start_instance(self) -> None:
        instance_id = uuid.uuid4().hex
        ready = self._sup.run_dir / f"instance-{instance_id}.addr"
        child = self._sup.spawn(f"instance-{instance_id[:8]}", python_module(
            "runtime", *self._args, "--instance-id", instance_id, "--ready-file", str(ready)), ready_file=ready)
        self.instances[instance_id] = _Instance(child, instance_id, time.monotonic())
        self._starting.add(instance_id)
        log.info("starting instance %s (%d running)", instance_id, len(self.instances))

    def stop_instance(self, instance_id: str) -> None:
        found = self.instances.pop(instance_id, None)
        if found is not None and found.child.proc.poll() is None:
            log.info("stopping idle instance %s", instance_id)
            found.child.proc.send_signal(signal.SIGTERM)

    def on_heartbeat(self, beat: events_pb2.InstanceHeartbeat) -> None:
        found = self.instances.get(beat.instance_id)
        if found is None:
            return
        self._starting.discard(beat.instance_id)
        found.active = beat.active_requests
        if beat.active_requests:
            found.busy_at = time.monotonic()

    def tick(self) -> None:
        """One scaling decision."""
        for instance_id, inst in list(self.instances.items()):
            if inst.child.proc.poll() is not None:
                log.warning("instance %s exited with status %s; replacing it", instance_id, inst.child.proc.returncode)
                self.instances.pop(instance_id)
                self._starting.discard(instance_id)
                self._sup.children.remove(inst.child)
        current = len(self.instances)
        active = sum(i.active for i in self.instances.values())
        wanted = self.scaling.wanted(active)
        if wanted > current and not self._starting:
            self.start_instance()
        elif current < self.scaling.min_instances:
            self.start_instance()
        elif current > self.scaling.min_instances:
            now = time.monotonic()
            idle = [i for i in self.instances.values()
                    if i.active == 0 and now - i.busy_at > self.scaling.idle_seconds and i.instance_id not in
                    self._starting]
            if idle and current > wanted:
                self.stop_instance(min(idle, key=lambda i: i.busy_at).instance_id)


async def run(manager: Manager, nats_url: str, app_id: str, version_id: str, ready_file: pathlib.Path | None) -> int:
    nc = await bus.connect(nats_url, name=f"manager-{app_id}-{version_id}")

    async def on_beat(msg: object) -> None:
        try:
            manager.on_heartbeat(events_pb2.InstanceHeartbeat.FromString(msg.data))  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a malformed heartbeat is ignored
            log.warning("ignoring a malformed heartbeat")

    await nc.subscribe(bus.heartbeat_subject(app_id, version_id), cb=on_beat)
    for _ in range(manager.scaling.min_instances):
        manager.start_instance()
    if ready_file is not None:
        ready_file.write_text("managing\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        manager.tick()
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.25)
        except TimeoutError:
            pass
    log.info("stopping %d instances", len(manager.instances))
    await loop.run_in_executor(None, manager._sup.stop_all)
    await nc.drain()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m runtime.manager [OPTIONS] -- RUNTIME_ARGS...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m runtime.manager", description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-dir", required=True, type=pathlib.Path, help="the version's directory (app.yaml)")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--version-id", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--run-dir", required=True, type=pathlib.Path, help="where instance logs and files go")
    parser.add_argument("--min-instances", type=int)
    parser.add_argument("--max-instances", type=int)
    parser.add_argument("--max-concurrent-requests", type=int)
    parser.add_argument("--idle-seconds", type=float)
    parser.add_argument("--ready-file", type=pathlib.Path)
    args = parser.parse_args(argv[:split])
    kiln_log.setup(component="manager")
    config = appyaml.load(args.app_dir / "app.yaml")
    scaling = Scaling.from_app(config, min_instances=args.min_instances, max_instances=args.max_instances,
                               max_concurrent_requests=args.max_concurrent_requests, idle_seconds=args.idle_seconds)
    runtime_args = ["--app-dir", str(args.app_dir), "--app-id", args.app_id, "--version-id", args.version_id,
                    "--nats-url", args.nats_url, *argv[split + 1:]]
    manager = Manager(Supervisor(args.run_dir), runtime_args, scaling)
    return asyncio.run(run(manager, args.nats_url, args.app_id, args.version_id, args.ready_file))


if __name__ == "__main__":
    raise SystemExit(main())
