"""Memory control groups for instances: the kernel holds each instance to its hard memory limit.

The manager makes one cgroup per instance under a cgroup of its own, itself
under the cgroup the manager runs in (nesting, never taking over the
machine's hierarchy), writes the limit there and has the instance's wrapper
(``kiln_platform/diewithparent.py --cgroup``) join it before anything of the app runs.
Everything the instance starts stays in it: the app user cannot write any
cgroup's ``cgroup.procs``, so it cannot move out.

Two layouts exist: cgroup v2 (one hierarchy; ``memory.max``, ``memory.peak``,
``memory.events``, ``cgroup.kill``) and cgroup v1 (a ``memory`` hierarchy of
its own; ``memory.limit_in_bytes``, ``memory.max_usage_in_bytes``,
``memory.oom_control``). Under v2 the memory controller must be enabled for
the manager's cgroup's children, which the kernel refuses while that cgroup
holds processes of its own unless it was delegated (systemd's
``Delegate=yes``); :func:`find` then says why and the manager falls back to
an address-space limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal

ROOT = pathlib.Path("/proc/self")
PREFIX = "kiln-manager-"


@dataclasses.dataclass(frozen=True)
class InstanceGroup:
    """One instance's cgroup."""

    path: pathlib.Path
    v2: bool

    def peak_bytes(self) -> int | None:
        """The most memory the instance's processes used at once (None where the kernel does not say)."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            return int((self.path / name).read_text().split()[0])
        return None

    def current_bytes(self) -> int | None:
        """The memory its processes use now (None where the kernel does not say)."""
        name = "memory.current" if self.v2 else "memory.usage_in_bytes"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.path / name).read_text().split()[0])
        return None

    def oom_kills(self) -> int:
        """How many of its processes the kernel killed for passing the limit."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def processes(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        return []

    def kill(self) -> None:
        """SIGKILL every process still in the group."""
        if self.v2 and (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.path / "cgroup.kill").write_text("1")
                return
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Kill what is left and delete the group; False while processes are still exiting (try again)."""
        self.kill()
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


@dataclasses.dataclass(frozen=True)
class Parent:
    """The manager's own cgroup, under which its instances' groups are made."""

    path: pathlib.Path
    v2: bool

    def create(self, name: str, limit_bytes: int) -> InstanceGroup:
        """A new group for one instance, held to ``limit_bytes`` of memory (and no swap)."""
        path = self.path / name
        path.mkdir(mode=0o755)
        group = InstanceGroup(path, self.v2)
        try:
            if self.v2:
                (path / "memory.max").write_text(str(limit_bytes))
                with contextlib.suppress(FileNotFoundError):
                    (path / "memory.swap.max").write_text("0")
            else:
                (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):  # memory+swap (where swap is accounted); not below the limit
                    (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        except OSError:
            group.remove()
            raise
        return group

    def remove(self) -> None:
        for child in self.path.iterdir():
            if child.is_dir():
                InstanceGroup(child, self.v2).remove()
        with contextlib.suppress(OSError):
            self.path.rmdir()


def find(name: str, proc: pathlib.Path = ROOT) -> tuple[Parent | None, str]:
    """Make the manager's cgroup (``name`` under its current one) where memory can be limited: (parent, "") or
    (None, why not)."""
    mounts = _mounts(proc / "mountinfo")
    memberships = _memberships(proc / "cgroup")
    v1 = next((m for m in mounts if m[1] == "cgroup" and "memory" in m[2].split(",")), None)
    v2 = next((m for m in mounts if m[1] == "cgroup2"), None)
    if v1 is not None and "memory" in memberships:  # the memory controller lives in a v1 hierarchy of its own
        own = _join(v1[0], memberships["memory"])
        return _make(own, name, v2=False)
    if v2 is not None and "" in memberships:
        own = _join(v2[0], memberships[""])
        controllers = _read(own / "cgroup.controllers").split()
        if "memory" not in controllers:
            return None, f"cgroup v2 at {own}: the memory controller is not available to this cgroup"
        if "memory" not in _read(own / "cgroup.subtree_control").split():
            try:
                (own / "cgroup.subtree_control").write_text("+memory")
            except OSError as exc:
                return None, (f"cgroup v2: cannot enable the memory controller under {own} ({exc.strerror}); run "
                              "kiln in a cgroup delegated to it (systemd: Delegate=yes)")
        return _make(own, name, v2=True)
    return None, "no memory cgroup controller is mounted"


def _make(own: pathlib.Path, name: str, *, v2: bool) -> tuple[Parent | None, str]:
    _remove_stale(own, v2)
    path = own / name
    try:
        path.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        return None, f"cannot create the cgroup {path}: {exc.strerror}"
    if v2 and "memory" not in _read(path / "cgroup.subtree_control").split():
        try:
            (path / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None, f"cgroup v2: cannot enable the memory controller under {path} ({exc.strerror})"
    return Parent(path, v2), ""


def _remove_stale(own: pathlib.Path, v2: bool) -> None:
    """Delete the empty groups of managers that died without removing them (killed with SIGKILL)."""
    with contextlib.suppress(OSError):
        for path in own.glob(f"{PREFIX}*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pathlib.Path(f"/proc/{pid}").exists():
                Parent(path, v2).remove()


def _mounts(mountinfo: pathlib.Path) -> list[tuple[pathlib.Path, str, str]]:
    """(mount point, file system type, super options) of each mount whose root is the file system's root."""
    found = []
    for line in _read(mountinfo).splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if fields[3] == "/":
            found.append((pathlib.Path(fields[4]), fields[dash + 1], fields[dash + 3]))
    return found


def _memberships(cgroup: pathlib.Path) -> dict[str, str]:
    """Controller -> this process's cgroup path ("" is the v2 hierarchy)."""
    found: dict[str, str] = {}
    for line in _read(cgroup).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _join(mount: pathlib.Path, path: str) -> pathlib.Path:
    return mount / path.lstrip("/")


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
