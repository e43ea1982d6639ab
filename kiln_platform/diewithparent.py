"""Run a command that dies with the process that started it.

``diewithparent.py PARENT_PID [--uid N --gid N] [--rlimit NAME=SOFT] [--no-new-privs] [--private-network]
[--cgroup DIR] [--private-tmp MB [--keep PATH]...] [--pid-namespace] -- CMD [ARGS...]``

Run as a script (by path) by :mod:`kiln_platform.supervisor`, never imported.

Sets the umask to 077 (what kiln's processes write is theirs alone; an app's
shared files get their modes explicitly), applies the optional process
settings (joining control groups, a network namespace of its own with only a
loopback interface, a mount namespace whose ``/tmp``, ``/var/tmp`` and
``/dev/shm`` are one private tmpfs of ``--private-tmp`` MiB (where each
``--keep`` path, such as the app's files or its sockets, still shows the
host's), resource limits,
then dropping to ``--gid``/``--uid`` with no supplementary groups, then
``PR_SET_NO_NEW_PRIVS``), sets ``PR_SET_PDEATHSIG`` (SIGTERM; after the uid
change, which would clear it) and execs the command, which keeps all of them.
Descriptors the supervisor passed (``pass_fds``, such as an instance's pipe to
its manager, :mod:`runtime.inflight`) reach the command at the same numbers.

With ``--pid-namespace`` the command runs in a PID namespace of its own: this
process stays (outside, forwarding signals, exiting with the command's status)
and forks the namespace's init, which stays root, mounts the namespace's
``/proc``, forks the command, reaps orphans and exits when the command does.
When the init ends, or this process dies (the init gets SIGKILL), the kernel
kills every process left in the namespace: whatever the command started,
double-forked daemons included, cannot outlive it. The supervisor starts
children through this small script rather than with ``subprocess``'s
``preexec_fn``: running Python code in a child forked from a process that uses
gRPC can abort in gRPC's fork handlers (seen in CI: "epoll_wait error: Bad
file descriptor", SIGABRT before exec).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import pathlib
import resource
import select
import signal
import socket
import struct
import sys

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNET = 0x40000000
_CLONE_NEWNS = 0x00020000
_CLONE_NEWPID = 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# Once the parent is gone, the command gets this long to stop after SIGTERM before the namespace is killed.
ORPHAN_GRACE_SECONDS = 30
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_RLIMITS = {"as": resource.RLIMIT_AS, "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC,
            "core": resource.RLIMIT_CORE, "fsize": resource.RLIMIT_FSIZE, "stack": resource.RLIMIT_STACK}


def _rlimit(text: str) -> tuple[int, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in _RLIMITS or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER with NAME one of {', '.join(_RLIMITS)}, got {text!r}")
    return _RLIMITS[name], int(value)


def _private_network(libc: ctypes.CDLL) -> str | None:
    """Move into a new network namespace and bring its loopback interface up; an error message, or None."""
    if libc.unshare(_CLONE_NEWNET) != 0:
        return f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | _IFF_UP))
    return None


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    if libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), ctypes.c_ulong(flags),
                  data and data.encode()) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}: {os.strerror(ctypes.get_errno())}")


_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _private_mounts(libc: ctypes.CDLL, tmp_mb: int | None, pid_namespace: bool, keep: list[str]) -> str | None:
    """A mount namespace of its own (so the namespace's /proc can be mounted) with ``tmp_mb`` MiB of tmpfs seen
    at /tmp, /var/tmp and /dev/shm, where the paths in ``keep`` still show the host's; an error message, or None."""
    flags = _CLONE_NEWNS | (_CLONE_NEWPID if pid_namespace else 0)
    if libc.unshare(flags) != 0:
        return f"unshare(CLONE_NEWNS{'|CLONE_NEWPID' if pid_namespace else ''}) failed: " \
               f"{os.strerror(ctypes.get_errno())}"
    try:
        _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing mounted here reaches the host
        if tmp_mb is None:
            return None
        # What the command needs from the host's temporary directories (its files, sockets): held open across
        # the new mounts, then bound back at the same paths.
        held = {}
        for path in {os.path.realpath(p) for p in keep}:
            if any(path == d or path.startswith(d + "/") for d in _TMP_DIRS) and os.path.exists(path):
                held[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
        _mount(libc, "kiln-tmp", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={tmp_mb}m,mode=1777")
        for other in _TMP_DIRS[1:]:
            if os.path.isdir(other):
                _mount(libc, "/tmp", other, None, _MS_BIND)
        for path, fd in sorted(held.items()):
            _make_mount_point(path, is_dir=os.path.isdir(f"/proc/self/fd/{fd}"))
            _mount(libc, f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            os.close(fd)
    except OSError as exc:
        return str(exc)
    return None


def _make_mount_point(path: str, *, is_dir: bool) -> None:
    """Create ``path`` in the new tmpfs, its missing parents root's and searchable (not listable) by all."""
    parent = os.path.dirname(path)
    if not os.path.exists(parent):
        _make_mount_point(parent, is_dir=True)
    if os.path.exists(path):
        return
    if is_dir:
        os.mkdir(path, 0o711)
        os.chmod(path, 0o711)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _confine_and_exec(args: argparse.Namespace, command: list[str], libc: ctypes.CDLL) -> int:
    for which, soft in args.rlimit:
        _, hard = resource.getrlimit(which)
        # Both limits: a process cannot raise a hard limit again once lowered.
        limit = soft if hard == resource.RLIM_INFINITY else min(soft, hard)
        resource.setrlimit(which, (limit, limit))
    if args.gid is not None:
        os.setgroups([])
        os.setresgid(args.gid, args.gid, args.gid)
    if args.uid is not None:
        os.setresuid(args.uid, args.uid, args.uid)
    if args.no_new_privs and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        print(f"diewithparent.py: PR_SET_NO_NEW_PRIVS failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 126
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != args.parent_pid:
        return 1  # the parent died before the signal was armed
    os.execvp(command[0], command)
    return 127  # not reached: execvp raises on failure


def _status(wait_status: int) -> int:
    return 128 + os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)


def _forward_signals(pid: int) -> None:
    def forward(signum: int, _: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    for signum in _FORWARDED:
        signal.signal(signum, forward)


def _namespace_init(args: argparse.Namespace, command: list[str], libc: ctypes.CDLL, alive: int) -> int:
    """PID 1 of the namespace: mount its /proc, run the command, reap orphans, exit with the command's status."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the outer process died: so does the whole namespace
    if select.select([alive], [], [], 0)[0]:
        return 1  # it died before the signal was armed (its end of the pipe is closed)
    try:
        _mount(libc, "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    except OSError as exc:
        print(f"diewithparent.py: {exc}", file=sys.stderr)
        return 126
    args.parent_pid = os.getpid()  # the command's parent is this init
    child = os.fork()
    if child == 0:
        os.close(alive)
        try:
            os._exit(_confine_and_exec(args, command, libc))
        except BaseException as exc:  # noqa: BLE001 - never return into the init's code
            print(f"diewithparent.py: {command[0]}: {exc}", file=sys.stderr)
            os._exit(127)
    _forward_signals(child)
    while True:
        pid, wait_status = os.wait()
        if pid == child:
            return _status(wait_status)


def _run_in_pid_namespace(args: argparse.Namespace, command: list[str], libc: ctypes.CDLL) -> int:
    """Fork the namespace's init (the first child after ``unshare(CLONE_NEWPID)``); wait for it, passing signals on."""
    alive, keep = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(keep)
        try:
            os._exit(_namespace_init(args, command, libc, alive))
        except BaseException as exc:  # noqa: BLE001 - never return into the outer process's code
            print(f"diewithparent.py: {exc}", file=sys.stderr)
            os._exit(126)
    os.close(alive)
    parent = args.parent_pid

    def forward(signum: int, _: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signum)
        if os.getppid() != parent:  # the parent died (PR_SET_PDEATHSIG): nobody will kill a command that hangs
            signal.signal(signal.SIGALRM, lambda *_: os.kill(init, signal.SIGKILL))
            signal.alarm(ORPHAN_GRACE_SECONDS)
    for signum in _FORWARDED:
        signal.signal(signum, forward)
    while True:
        try:
            _, wait_status = os.waitpid(init, 0)
        except ChildProcessError:
            return 1
        return _status(wait_status)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="diewithparent.py")
    parser.add_argument("parent_pid", type=int)
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--rlimit", type=_rlimit, action="append", default=[])
    parser.add_argument("--no-new-privs", action="store_true")
    parser.add_argument("--private-network", action="store_true")
    parser.add_argument("--cgroup", type=pathlib.Path, action="append", default=[])
    parser.add_argument("--private-tmp", type=int, metavar="MB")
    parser.add_argument("--pid-namespace", action="store_true")
    parser.add_argument("--keep", action="append", default=[])
    args = parser.parse_args(argv[1:split])
    command = argv[split + 1:]
    if not command:
        parser.error("no command given after --")
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the supervisor holds stop signals while it starts us
    os.umask(0o077)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != args.parent_pid:
        return 1  # the parent died before the signal was armed
    for group in args.cgroup:  # before anything else runs: all it starts stays in the group
        (group / "cgroup.procs").write_text(str(os.getpid()))
    if args.private_network:
        failed = _private_network(libc)
        if failed:
            print(f"diewithparent.py: {failed}", file=sys.stderr)
            return 126
    if args.private_tmp is not None or args.pid_namespace:
        failed = _private_mounts(libc, args.private_tmp, args.pid_namespace, args.keep)
        if failed:
            print(f"diewithparent.py: {failed}", file=sys.stderr)
            return 126
    if args.pid_namespace:
        return _run_in_pid_namespace(args, command, libc)
    return _confine_and_exec(args, command, libc)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
