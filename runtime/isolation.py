"""The OS layer of the app sandbox: what confines an instance whatever its code does, mode by mode.

The Python layer (:mod:`runtime.sandbox`) refuses what App Engine refused (writing files, sockets, subprocesses,
most of ``os``) but runs in the app's own process: code that gets past it (ctypes, a missed path) is stopped
only by what is below. Each layer, what it protects, and what it does not:

- **Every instance, every mode.** Its own process, started through ``kiln_platform/diewithparent.py`` with umask 077,
  resource limits (open files, no core dumps, address space = the hard memory limit + 512 MB measured
  headroom, with ``MALLOC_ARENA_MAX=2``) and ``PR_SET_NO_NEW_PRIVS``. It never holds the service secret, only
  its own app's token, so it cannot act as another app towards kiln's services. Memory: past its instance
  class's memory after a request it is replaced (soft limit); past 1.25 times that, the runtime's watchdog
  stops it at once and answers each request it holds with a 500 (hard limit, polled every 0.1 s); one
  allocation the address-space limit refuses is a ``MemoryError`` — the request gets a 500 and the instance
  is replaced. *Not protected:* with isolation ``none`` the instance runs as kiln's own user, so code past the
  Python layer can read kiln's files (data directory, logs, keys); signalling kiln's processes is closed by
  the seccomp filter below.

- **Every instance, every mode: a seccomp filter** (:func:`confine_syscalls`, libseccomp through ``pyseccomp``),
  installed on every thread of the instance once kiln's own threads run and its modules are loaded, before the
  app's module is imported, and kept for the process's life. It answers EPERM (an error the app sees, not a kill)
  to what no App Engine app could do, whatever code makes the call (kiln's too; kiln needs none of it by then):
  creating processes (``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD`` or with a namespace flag; ``clone3``
  answers ENOSYS so glibc makes threads with ``clone``), ``execve``/``execveat``, ``mknod``/``mknodat``, signals
  to any process but the instance's own (``kill``, ``tgkill``, ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo`` by their
  target; ``tkill`` and pidfds always), ``ptrace``, ``process_vm_readv``/``writev``, namespaces and mounts
  (``unshare``, ``setns``, ``mount`` and the new mount API, ``umount2``, ``pivot_root``, ``chroot``), the
  kernel's own interfaces (``bpf``, ``perf_event_open``, keyrings, ``userfaultfd``, modules, ``kexec``,
  ``reboot``, swap, ``acct``, ``quotactl``, ``open_by_handle_at``, I/O ports), changing the ``personality``,
  new ``io_uring`` rings, and every system call of another ABI (``int 0x80``, x32). What gets past the Python
  layer (the originals in its guards' closures, libc called by address through ctypes, built-in callbacks run on
  kiln's threads or at exit) therefore still cannot start, replace or signal a process. The request timer needs
  none of it (``PyThreadState_SetAsyncExc``, no signal). An instance where the filter cannot be installed (no
  libseccomp, a kernel without seccomp) refuses to start, unless ``--allow-missing-syscall-filter`` (never in
  production) lets it start with a critical log line. *Not protected:* what the filter allows — files, sockets
  and memory within the process are the user, namespace and limits' business (below); the event loop's own
  ``io_uring`` ring (uvloop's libuv makes it before the filter) runs what is submitted to it unfiltered, but
  io_uring has no operation for any refused call.

- **As root, every mode: process and memory containment.** Each instance runs in a PID namespace of its own
  (the wrapper's init is its PID 1): when the instance stops, is killed, or its manager dies (even by
  SIGKILL, through ``PR_SET_PDEATHSIG``), the kernel kills every process in it — double-forked ``setsid``
  daemons included. Its ``/proc`` shows only its own processes. It runs in a mount namespace where ``/tmp``,
  ``/var/tmp`` and ``/dev/shm`` are one private tmpfs of its instance class's memory (App Engine's second
  generation: ``/tmp`` is memory, counted against the instance), gone with the instance; host paths under
  them that the instance needs (its files, sockets) are bound back. Where a memory cgroup can be made under
  the manager's own (cgroup v1 ``memory``, or v2 with the memory controller delegated), each instance's
  processes are held by the kernel to 1.5 times its memory (:mod:`runtime.cgroups`), tmpfs pages included;
  the kernel kills past that, and the manager logs each instance's peak. Without a memory cgroup (a warning
  says so) memory is bounded by the address-space limit and the watchdog only, and the tmpfs may add up to
  its size. Without root (a warning says so) there are no namespaces: processes an instance starts may
  outlive it and it shares the host's temporary directories. *Not protected:* an instance's requests in
  flight when the kernel kills it fail with the router's timeout (a 500, late), not at once; the disk
  under the instance's own directory (its HOME under user isolation) is writable by the app's user.

- **With user isolation** (``runtime.manager --isolation user``, the default when the manager runs as root),
  each app gets its own Unix user and group (numbered from ``--first-app-uid``, recorded in
  ``app-users.json`` under the isolation root so a number is never reused for another app) and a limit on
  its processes. Its instances run as that user, on a copy of the version's files (``skip_files`` honoured,
  as a deploy does) and of its libraries, owned by root, readable by the app's group only (0750/0640) and
  writable by nobody but root. Another app's files, its processes' memory (``/proc/PID/mem``) and
  environment (``/proc/PID/environ``) and kiln's own data (0700/0600: every kiln process and child runs
  with umask 077, data, run and cache directories are made 0700) are then closed to it by the kernel.
  *Not protected:* what the app's user may read on the host beyond kiln (world-readable system files).

- **With a private network** (``runtime.manager --network-isolation``, on by default with user isolation
  where the kernel allows network namespaces), each instance runs in a network namespace of its own with
  only a loopback interface. What it needs — NATS, as its app's own NATS user (:mod:`kiln_platform.natsauth`), and
  the services it calls — it reaches through Unix sockets its manager forwards (:mod:`kiln_platform.forward`), in a
  directory only the app's group may enter. Code that got past the Python layer cannot open a connection to
  anything else: not Cassandra, not another app's or kiln's ports, not the internet (outbound HTTP goes
  through the URL fetch service). *Not protected:* what the forwarded services and NATS themselves allow
  the app's token and NATS user to do (their own checks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pathlib
import platform
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable

from kiln_platform import appyaml, interpreters
from kiln.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ROOT = pathlib.Path("/var/lib/kiln")
DEFAULT_FIRST_UID = 200_000
MAX_APPS = 100_000

# App Engine's instance classes (second generation): memory in MiB.
INSTANCE_MEMORY_MB = {"F1": 384, "F2": 768, "F4": 1536, "F4_1G": 3072,
                      "B1": 384, "B2": 768, "B4": 1536, "B4_1G": 3072, "B8": 3072}


# Past its memory times this the runtime stops an instance at once (App Engine's hard limit; runtime.app's watchdog).
HARD_MEMORY_FACTOR = 1.25
# What the kernel holds an instance's processes to (cgroup memory limit): above the watchdog's hard limit, so that
# growth the watchdog sees in time gets App Engine's answer (a 500 for each request held) rather than a kill.
KERNEL_MEMORY_FACTOR = 1.5
# Address space allowed beyond the hard limit (RLIMIT_AS), so that one allocation far beyond the limit fails at once
# (a MemoryError: the request gets a 500 and the instance is replaced). Measured: an instance serving 10 concurrent
# requests (15 threads) with MALLOC_ARENA_MAX=2 maps 252 MB with 61 MB resident (1.1 GB without the arena limit).
ADDRESS_SPACE_HEADROOM_MB = 512
# glibc reserves 64 MB of address space per malloc arena, up to eight per core; two keep the headroom above true.
MALLOC_ARENAS = 2


def instance_memory_mb(config: appyaml.AppConfig) -> int:
    """The memory an instance of this app may use: its ``instance_class`` (F1, or B2 with basic/manual scaling)."""
    default = "B2" if (config.basic_scaling or config.manual_scaling) else "F1"
    return INSTANCE_MEMORY_MB[config.instance_class or default]


def hard_memory_mb(memory_mb: int) -> int:
    """The hard memory limit of an instance of ``memory_mb`` (App Engine's: past it the instance stops at once)."""
    return int(memory_mb * HARD_MEMORY_FACTOR)


def app_user(root: pathlib.Path, app_id: str, first_uid: int = DEFAULT_FIRST_UID) -> int:
    """The uid (and gid) of ``app_id``: allocated once, recorded under ``root``, never given to another app."""
    registry = root / "app-users.json"
    with open(root / "app-users.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        users: dict[str, int] = json.loads(registry.read_text()) if registry.exists() else {}
        if app_id not in users:
            if len(users) >= MAX_APPS:
                raise ConfigError(f"{registry}: no app uids left (at most {MAX_APPS} apps)")
            users[app_id] = max(users.values(), default=first_uid - 1) + 1
            tmp = registry.with_suffix(".tmp")
            tmp.write_text(json.dumps(users, indent=1, sort_keys=True))
            os.chmod(tmp, 0o600)
            os.replace(tmp, registry)
        return users[app_id]


def prepare_root(root: pathlib.Path) -> None:
    """Create the isolation root: traversable by app users, listable by none."""
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, 0, 0)
    os.chmod(root, 0o711)
    blocked = _blocked(root.resolve(), need_read=False)
    if blocked:
        raise ConfigError(f"isolation root {root}: app users cannot reach it ({blocked}); choose another "
                          "--isolation-root")


def _platform_paths() -> list[pathlib.Path]:
    paths = {pathlib.Path(os.path.realpath(sys.executable)), pathlib.Path(sysconfig.get_paths()["stdlib"]),
             pathlib.Path(sysconfig.get_paths()["purelib"]), pathlib.Path(__file__).resolve().parent.parent / "kiln"}
    return sorted(p.resolve() for p in paths)


def platform_paths() -> list[pathlib.Path]:
    """What every instance needs of kiln's own installation: the interpreter as started (a virtual environment's
    ``bin/python`` included), its libraries, and kiln's code. Under a private ``/tmp`` these stay visible, wherever
    kiln is installed (a checkout under ``/tmp`` included)."""
    source_root = pathlib.Path(__file__).resolve().parent.parent
    paths = {*_platform_paths(), pathlib.Path(sys.prefix), pathlib.Path(sys.exec_prefix),
             pathlib.Path(sys.executable).parent, source_root}
    return sorted(paths)


def interpreter_paths(executable: pathlib.Path) -> list[pathlib.Path]:
    """What an instance needs of another Python than kiln's (a runtime's, :mod:`kiln_platform.interpreters`): the
    interpreter and its standard library (``PREFIX/lib/pythonX.Y``)."""
    real = pathlib.Path(os.path.realpath(executable))
    stdlib = sorted(real.parent.parent.glob(f"lib/{real.name.removesuffix('t')}"))
    return [real, *stdlib]


def interpreter_blocked(executable: pathlib.Path) -> str | None:
    """Why app users cannot run ``executable`` (see :func:`interpreter_paths`), or None."""
    for path in interpreter_paths(executable):
        blocked = _blocked(path, need_read=True)
        if blocked:
            return blocked
    return None


def platform_blocked() -> str | None:
    """Why app users cannot run kiln's Python (a directory they cannot enter or a file they cannot read), or None."""
    for path in _platform_paths():
        blocked = _blocked(path, need_read=True)
        if blocked:
            return blocked
    return None


def network_blocked() -> str | None:
    """Why instances cannot get a network namespace of their own here (not root, a kernel without network
    namespaces, a container that forbids them), or None."""
    if os.geteuid() != 0:
        return "not running as root"
    return _probe("--private-network")


def namespaces_blocked() -> str | None:
    """Why instances cannot get a PID namespace and a mount namespace (for a private /tmp) here, or None."""
    if os.geteuid() != 0:
        return "not running as root"
    return _probe("--pid-namespace", "--private-tmp", "1")


def _probe(*options: str) -> str | None:
    wrapper = pathlib.Path(__file__).resolve().parent.parent / "kiln_platform" / "diewithparent.py"
    try:
        done = subprocess.run([sys.executable, str(wrapper), str(os.getpid()), *options, "--", "true"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the namespace probe failed: {exc}"
    return None if done.returncode == 0 else (done.stderr.strip() or f"the probe exited with {done.returncode}")


def socket_dir(gid: int) -> pathlib.Path:
    """A new directory for the Unix sockets an instance's manager forwards, entered only by the app's group.

    Under the system's temporary directory: a Unix socket's path is limited to 107 bytes, which a path under
    the isolation root (with app and version names) could exceed.
    """
    path = pathlib.Path(tempfile.mkdtemp(prefix="kiln-net-"))
    _own(path, gid, 0o750)
    return path


def grant_search(extra: Iterable[pathlib.Path] = ()) -> list[pathlib.Path]:
    """Let other users search (not list) the directories above kiln's Python (and ``extra`` paths); return those
    changed."""
    changed = []
    for path in [*_platform_paths(), *extra]:
        for parent in reversed(path.parents):
            mode = os.stat(parent).st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
                changed.append(parent)
    return changed


def _blocked(path: pathlib.Path, *, need_read: bool) -> str | None:
    for parent in reversed(path.parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return f"{parent} is not searchable by other users"
    mode = os.stat(path).st_mode
    if need_read and not mode & stat.S_IROTH:
        return f"{path} is not readable by other users"
    if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
        return f"{path} is not searchable by other users"
    return None


def stage(app_dir: pathlib.Path, dest: pathlib.Path, config: appyaml.AppConfig, gid: int,
          exclude: Iterable[pathlib.Path] = ()) -> None:
    """Copy the app's files (less ``skip_files`` and ``exclude``) to ``dest``: root's, readable by group ``gid`` only."""
    source = app_dir.resolve()
    excluded = {p.resolve() for p in exclude}
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for here, dirs, files in os.walk(source):
        rel_dir = pathlib.Path(here).relative_to(source)
        dirs[:] = [d for d in dirs if (pathlib.Path(here) / d).resolve() not in excluded
                   and not config.skips((rel_dir / d).as_posix() + "/")]
        (dest / rel_dir).mkdir(exist_ok=True)
        for name in files:
            rel = (rel_dir / name).as_posix()
            src = pathlib.Path(here) / name
            # A link out of the app directory would let root copy a file the app may not read.
            if config.skips(rel) or not src.is_file() or not src.resolve().is_relative_to(source):
                continue
            shutil.copyfile(src, dest / rel)
    share(dest, gid)


def copy_for(source: pathlib.Path, dest: pathlib.Path, gid: int) -> pathlib.Path:
    """Copy a directory the platform prepared (an installed library, requirements) for group ``gid`` to read."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, symlinks=True)
    share(dest, gid)
    return dest


def share(tree: pathlib.Path, gid: int) -> None:
    """Make ``tree`` root's, readable (not writable) by group ``gid``, closed to everyone else."""
    for here, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            _own(pathlib.Path(here) / name, gid, 0o750 if name in dirs else 0o640)
    _own(tree, gid, 0o750)


def instance_dir(app_root: pathlib.Path, instance_id: str, uid: int) -> pathlib.Path:
    """A directory the instance owns (its ready file, HOME and TMPDIR), closed to everyone else."""
    path = app_root / "instances" / instance_id
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    os.chmod(path, 0o700)
    return path


def app_root(root: pathlib.Path, app_id: str, gid: int) -> pathlib.Path:
    """The app's directory under the isolation root, entered only by the app's group."""
    path = root / "apps" / app_id
    path.mkdir(parents=True, exist_ok=True)
    _own(root / "apps", 0, 0o711)
    _own(path, gid, 0o750)
    instances = path / "instances"
    instances.mkdir(exist_ok=True)
    _own(instances, gid, 0o750)
    return path


def remove_instance_dir(path: pathlib.Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)


def _own(path: pathlib.Path, gid: int, mode: int) -> None:
    os.chown(path, 0, gid, follow_symlinks=False)
    if not path.is_symlink():
        os.chmod(path, mode)


# The system calls no instance may make once app code can run (App Engine's sandbox allowed none of them), each
# refused with EPERM: the app gets a PermissionError it can report, not a killed instance. Threads stay possible
# (``clone`` is decided by its flags, below), and so does signalling the instance's own process (``kill`` and its kin).
REFUSED_SYSCALLS = (
    # other processes: none may be created or replaced (execve is also how a file the app wrote would run)
    "fork", "vfork", "execve", "execveat",
    # FIFOs and device nodes
    "mknod", "mknodat",
    # reaching other processes: pidfds, tracing, their memory (tkill names a thread of any process: glibc uses tgkill)
    "tkill", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev",
    "process_madvise",
    # namespaces and mounts (the new mount API too, which would otherwise do what mount does)
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
    # the kernel itself: BPF programs, performance counters, keyrings, page-fault handlers, modules, the machine,
    # files by handle (past directory permissions, with CAP_DAC_READ_SEARCH) and I/O ports
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "quotactl_fd", "open_by_handle_at", "iopl", "ioperm",
    # a ring runs the operations submitted to it without passing this filter. The event loop's own ring (uvloop's
    # libuv batches epoll_ctl through one, made before the filter) keeps io_uring_enter and io_uring_register, which
    # refusing would stop the loop: io_uring has no operation for any system call refused here.
    "io_uring_setup",
)
# Syscalls that signal a process named by their first argument: refused unless it is the instance's own process.
SIGNAL_SYSCALLS = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
_CLONE_THREAD = 0x00010000
# A thread in new namespaces: refused like unshare.
_CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
_PERSONALITY_QUERY = 0xFFFFFFFF  # personality(0xffffffff) reads the persona without changing it


def confine_syscalls(*, allow_missing: bool = False) -> bool:
    """Refuse :data:`REFUSED_SYSCALLS` (and the rest of the instance's filter) to every thread of this process.

    Installed by the runtime once kiln's own threads run and modules are imported, before any app code: a seccomp
    filter (libseccomp, through ``pyseccomp``), synchronised to all threads (gRPC's C threads included), inherited
    by every thread started later, and never removed. It needs no privilege: it sets ``PR_SET_NO_NEW_PRIVS`` (the
    instance's wrapper has already). Beyond the list, ``clone`` is refused unless it makes a thread
    (``CLONE_THREAD``) in no new namespace, ``clone3`` answers ENOSYS (so glibc makes threads with ``clone``, whose
    flags a filter can read), ``kill``, ``tgkill``, ``rt_sigqueueinfo`` and ``rt_tgsigqueueinfo`` are refused for
    any process but this one, ``personality`` may only be read, and system calls of another ABI (32-bit
    ``int 0x80``, x32) are refused.

    Args:
        allow_missing: where the filter cannot be installed (no libseccomp, or a kernel without seccomp), log a
            warning and return False instead of raising. Never in production.

    Returns:
        Whether the filter is installed.

    Raises:
        ConfigError: the filter cannot be installed and ``allow_missing`` is false.
    """
    try:
        _load_filter()
    except (ImportError, OSError, RuntimeError) as exc:  # pyseccomp: RuntimeError when it finds no libseccomp
        why = f"the seccomp filter could not be installed ({exc}); app code past the Python sandbox could start " \
              "processes, signal, trace and mount"
        if not allow_missing:
            raise ConfigError(f"{why}. Install libseccomp (Debian: libseccomp2), or start the instance with "
                              "--allow-missing-syscall-filter (never in production)") from exc
        log.critical("%s: starting anyway, because --allow-missing-syscall-filter is set", why)
        return False
    return True


def _load_filter() -> None:
    import pyseccomp as seccomp

    refuse = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    rules.set_attr(seccomp.Attr.CTL_TSYNC, 1)  # every thread of the process, not only the calling one
    rules.set_attr(seccomp.Attr.CTL_NNP, 1)
    rules.set_attr(seccomp.Attr.ACT_BADARCH, refuse)
    for name in REFUSED_SYSCALLS:
        number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
        if number == -1:  # __NR_SCMP_ERROR: a libseccomp older than the system call
            log.warning("libseccomp does not know the system call %s: it is not refused", name)
            continue
        rules.add_rule(refuse, number)
    flags = 1 if platform.machine().startswith("s390") else 0  # clone's flags argument
    rules.add_rule(refuse, "clone", seccomp.Arg(flags, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
    for namespace in _CLONE_NAMESPACES:
        rules.add_rule(refuse, "clone", seccomp.Arg(flags, seccomp.MASKED_EQ, namespace, namespace))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    own = os.getpid()
    for name in SIGNAL_SYSCALLS:
        rules.add_rule(refuse, name, seccomp.Arg(0, seccomp.NE, own))
    rules.add_rule(refuse, "personality", seccomp.Arg(0, seccomp.NE, _PERSONALITY_QUERY))
    rules.load()


def main(argv: list[str]) -> int:
    """``python -m runtime.isolation check|prepare``: can app users run kiln's Python and the other Pythons of App
    Engine's runtimes found on this host (:mod:`kiln_platform.interpreters`); make it so (root)."""
    if argv not in (["check"], ["prepare"]):
        print("usage: python -m runtime.isolation check|prepare\n  check: say whether instances can run as app "
              "users\n  prepare: grant other users search permission on the directories above kiln's Python",
              file=sys.stderr)
        return 2
    # The Pythons of App Engine's runtimes found here, other than kiln's own (whose paths are checked below).
    runtimes = [found for version in interpreters.PYTHON3_VERSIONS if version != interpreters.own().version
                if (found := interpreters.lookup(version, interpreters.Search.from_env())) is not None]
    if argv == ["prepare"]:
        extra = [p for found in runtimes for p in interpreter_paths(found.executable)]
        for path in grant_search(extra):
            print(f"granted search permission to other users on {path}")
    blocked = platform_blocked()
    for found in runtimes:
        why = interpreter_blocked(found.executable)
        print(f"{found.name} ({found.executable}): {'not usable by app users: ' + why if why else 'usable'}")
    print(f"per-app users: not possible: {blocked}" if blocked else "per-app users: possible")
    return 1 if blocked else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
