"""Run a command that dies with the process that started it.

``diewithparent.py PARENT_PID [--uid N --gid N] [--rlimit NAME=SOFT] [--no-new-privs] [--private-network]
-- CMD [ARGS...]``

Run as a script (by path) by :mod:`kiln_platform.supervisor`, never imported.

Applies the optional process settings (a network namespace of its own with
only a loopback interface, resource limits, then dropping to
``--gid``/``--uid`` with no supplementary groups, then ``PR_SET_NO_NEW_PRIVS``),
sets ``PR_SET_PDEATHSIG`` (SIGTERM; after the uid change, which would clear
it) and execs the command, which keeps all of them. The supervisor starts
children through this small script rather than with ``subprocess``'s
``preexec_fn``: running Python code in a child forked from a process that uses
gRPC can abort in gRPC's fork handlers (seen in CI: "epoll_wait error: Bad
file descriptor", SIGABRT before exec).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import resource
import signal
import socket
import struct
import sys

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNET = 0x40000000
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
    args = parser.parse_args(argv[1:split])
    command = argv[split + 1:]
    if not command:
        parser.error("no command given after --")
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if args.private_network:
        failed = _private_network(libc)
        if failed:
            print(f"diewithparent.py: {failed}", file=sys.stderr)
            return 126
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


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
