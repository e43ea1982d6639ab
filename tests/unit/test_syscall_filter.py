"""The instance's seccomp filter (``runtime.isolation.confine_syscalls``), installed in a child process of its own
(it cannot be removed): what it refuses with EPERM, and what the runtime and Python still need from the kernel."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent

# Runs in the child: installs the filter after starting a thread (as the runtime does, after gRPC's and NATS's), then
# tries each call and prints {name: "ok" or the errno's name}. Raw system calls go through libc's syscall(), numbered
# by libseccomp for this machine.
PROBE = textwrap.dedent(r'''
    import ctypes, errno, json, os, signal, stat, sys, threading
    import pyseccomp
    from runtime import isolation

    libc = ctypes.CDLL(None, use_errno=True)
    results = {}


    def raw(name, *args):
        number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        if libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args]) == -1:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


    def attempt(name, action):
        try:
            action()
            results[name] = "ok"
        except OSError as exc:
            results[name] = errno.errorcode.get(exc.errno, str(exc.errno))


    def fork():
        if os.fork() == 0:
            os._exit(0)


    # A thread started before the filter (as gRPC's C threads and the NATS relay are): the filter covers it too.
    go, done = threading.Event(), threading.Event()
    def earlier():
        go.wait()
        attempt("fork-on-earlier-thread", fork)
        done.set()
    threading.Thread(target=earlier).start()

    results["installed"] = isolation.confine_syscalls()
    results["seccomp-mode"] = open("/proc/self/status").read().split("Seccomp:")[1].split()[0]
    go.set()
    done.wait()
    here = sys.argv[1]
    own, parent = os.getpid(), os.getppid()

    # processes
    attempt("fork", fork)
    attempt("vfork", lambda: raw("vfork"))
    attempt("clone-process", lambda: raw("clone", signal.SIGCHLD, 0, 0, 0, 0))
    attempt("clone3", lambda: raw("clone3", 0, 0))
    attempt("posix-spawn", lambda: os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0))
    attempt("system", lambda: os.system(f"touch {here}/system") and None)
    attempt("execv", lambda: os.execv("/bin/true", ["true"]))
    attempt("execveat", lambda: raw("execveat", -100, 0, 0, 0, 0))
    # threads
    ran = []
    thread = threading.Thread(target=lambda: ran.append(True))
    attempt("thread", lambda: (thread.start(), thread.join()))
    results["thread-ran"] = ran == [True]
    # files that are not files
    attempt("mkfifo", lambda: os.mkfifo(f"{here}/fifo"))
    attempt("mknod-device", lambda: os.mknod(f"{here}/null", stat.S_IFCHR | 0o600, os.makedev(1, 3)))
    attempt("mknodat", lambda: os.mknod("fifo-at", stat.S_IFIFO | 0o600, dir_fd=os.open(here, os.O_RDONLY)))
    # signals
    caught = []
    signal.signal(signal.SIGUSR1, lambda *_: caught.append(True))
    attempt("kill-self", lambda: os.kill(own, 0))
    attempt("raise-signal", lambda: signal.raise_signal(signal.SIGUSR1))
    results["signal-caught"] = caught == [True]
    attempt("pthread-kill-self", lambda: signal.pthread_kill(threading.get_ident(), 0))
    attempt("kill-parent", lambda: os.kill(parent, 0))
    attempt("kill-group", lambda: os.kill(0, 0))
    attempt("kill-everyone", lambda: os.kill(-1, 0))
    attempt("tgkill-parent", lambda: raw("tgkill", parent, parent, 0))
    attempt("tkill-parent", lambda: raw("tkill", parent, 0))
    attempt("sigqueue-parent", lambda: raw("rt_sigqueueinfo", parent, 0, 0))
    attempt("pidfd-open", lambda: os.pidfd_open(parent))
    attempt("pidfd-send-signal", lambda: raw("pidfd_send_signal", 0, 0, 0, 0))
    attempt("pidfd-getfd", lambda: raw("pidfd_getfd", 0, 0, 0))
    # other processes' memory
    attempt("ptrace-traceme", lambda: raw("ptrace", 0, 0, 0, 0))
    attempt("process-vm-readv", lambda: raw("process_vm_readv", parent, 0, 0, 0, 0, 0))
    attempt("process-vm-writev", lambda: raw("process_vm_writev", parent, 0, 0, 0, 0, 0))
    # namespaces and mounts
    attempt("unshare-nothing", lambda: raw("unshare", 0))
    attempt("unshare-user", lambda: raw("unshare", 0x10000000))  # CLONE_NEWUSER
    attempt("setns", lambda: raw("setns", os.open("/proc/self/ns/net", os.O_RDONLY), 0))
    attempt("clone-thread-in-new-namespace", lambda: raw("clone", 0x00010000 | 0x00000800 | 0x00000100 | 0x40000000,
                                                         0, 0, 0, 0))
    attempt("mount", lambda: raw("mount", 0, 0, 0, 0, 0))
    attempt("umount2", lambda: raw("umount2", 0, 0))
    attempt("pivot-root", lambda: raw("pivot_root", 0, 0))
    attempt("chroot", lambda: os.chroot(here))
    attempt("fsopen", lambda: raw("fsopen", 0, 0))
    attempt("open-tree", lambda: raw("open_tree", -100, 0, 0))
    # the kernel
    for name, args in {"bpf": (0, 0, 0), "perf_event_open": (0, 0, -1, -1, 0), "keyctl": (0,),
                       "add_key": (0, 0, 0, 0, 0), "request_key": (0, 0, 0, 0), "userfaultfd": (0,),
                       "init_module": (0, 0, 0), "finit_module": (-1, 0, 0), "delete_module": (0, 0),
                       "kexec_load": (0, 0, 0, 0), "reboot": (0, 0, 0, 0), "swapon": (0, 0), "swapoff": (0,),
                       "acct": (0,), "quotactl": (0, 0, 0, 0), "io_uring_setup": (1, 0),
                       "open_by_handle_at": (-1, 0, 0)}.items():
        attempt(name, lambda: raw(name, *args))
    attempt("personality-read", lambda: raw("personality", 0xFFFFFFFF))
    attempt("personality-change", lambda: raw("personality", 0x0040000))  # ADDR_NO_RANDOMIZE
    results["left"] = sorted(os.listdir(here))
    print(json.dumps(results))
''')


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """What the probe saw, run once: the filter cannot be removed, so each test reads its part."""
    scratch = tmp_path_factory.mktemp("filter")
    done = subprocess.run([sys.executable, "-c", PROBE, str(scratch)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    results: dict[str, object] = json.loads(done.stdout)
    assert results["installed"] is True and results["seccomp-mode"] == "2"  # SECCOMP_MODE_FILTER
    return results


def refused(seen: dict[str, object], names: list[str]) -> None:
    assert {name: seen[name] for name in names} == dict.fromkeys(names, "EPERM")


def test_no_process_can_be_created_in_any_form(seen):
    refused(seen, ["fork", "vfork", "clone-process", "posix-spawn"])
    assert seen["system"] == "ok"  # system() reports the failure as the shell's status 127, and does nothing
    assert seen["left"] == []


def test_clone3_answers_enosys_so_libc_makes_threads_with_clone(seen):
    assert seen["clone3"] == "ENOSYS"


def test_threads_still_start_and_run(seen):
    assert seen["thread"] == "ok" and seen["thread-ran"] is True


def test_threads_started_before_the_filter_are_confined_too(seen):
    refused(seen, ["fork-on-earlier-thread"])


def test_no_program_can_be_executed(seen):
    refused(seen, ["execv", "execveat"])


def test_fifos_and_device_nodes_cannot_be_made(seen):
    refused(seen, ["mkfifo", "mknod-device", "mknodat"])
    assert seen["left"] == []


def test_the_process_may_signal_itself_and_its_threads(seen):
    assert {seen["kill-self"], seen["raise-signal"], seen["pthread-kill-self"]} == {"ok"}
    assert seen["signal-caught"] is True


def test_no_other_process_can_be_signalled(seen):
    refused(seen, ["kill-parent", "kill-group", "kill-everyone", "tgkill-parent", "tkill-parent", "sigqueue-parent",
                   "pidfd-open", "pidfd-send-signal", "pidfd-getfd"])


def test_no_process_can_be_traced_or_its_memory_reached(seen):
    refused(seen, ["ptrace-traceme", "process-vm-readv", "process-vm-writev"])


def test_no_namespace_can_be_entered_or_made_and_nothing_mounted(seen):
    refused(seen, ["unshare-nothing", "unshare-user", "setns", "clone-thread-in-new-namespace", "mount", "umount2",
                   "pivot-root", "chroot", "fsopen", "open-tree"])


def test_the_kernels_own_interfaces_are_refused(seen):
    refused(seen, ["bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "init_module",
                   "finit_module", "delete_module", "kexec_load", "reboot", "swapon", "swapoff", "acct", "quotactl",
                   "io_uring_setup", "open_by_handle_at"])


def test_the_personality_can_be_read_not_changed(seen):
    assert seen["personality-read"] == "ok"
    refused(seen, ["personality-change"])


# Stands for an installation without libseccomp: the binding cannot be loaded.
NO_LIBSECCOMP = "import logging, sys; logging.basicConfig(); sys.modules['pyseccomp'] = None\n"


def test_without_libseccomp_the_instance_refuses_to_start():
    done = subprocess.run([sys.executable, "-c", NO_LIBSECCOMP + "from runtime import isolation\n"
                           "isolation.confine_syscalls()"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "ConfigError: the seccomp filter could not be installed" in done.stderr
    assert "--allow-missing-syscall-filter" in done.stderr


def test_without_libseccomp_a_setting_lets_it_start_with_a_critical_warning():
    done = subprocess.run([sys.executable, "-c", NO_LIBSECCOMP + "from runtime import isolation\n"
                           "print(isolation.confine_syscalls(allow_missing=True))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert "CRITICAL" in done.stderr and "could not be installed" in done.stderr
