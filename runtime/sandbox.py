"""The Python layer of the app sandbox: App Engine's restrictions, enforced on app code.

While a thread runs app code (a request, its threads, and the app's imports
during a request), an audit hook refuses what App Engine's Python runtime did
not allow, raising :class:`SandboxError` (a ``PermissionError``, so code that
handles ``IOError``/``OSError`` keeps working) naming the rule:

- writing to the file system (opening for writing, creating, removing,
  renaming, changing permissions); reading the app's own files is allowed;
- starting processes (``subprocess``, ``os.system``, ``exec*``, ``fork``,
  ``posix_spawn``) and signalling them (``os.kill``);
- opening sockets (outbound HTTP goes through the URL fetch service);
- loading native code with ``ctypes``, and importing C extensions that are not
  part of the platform (an extension module shipped inside the app).

The runtime's own threads (the event loop, NATS, gRPC) are not affected. An
in-process Python sandbox is not a security boundary on its own: it makes App
Engine's rules visible and precise to app developers; isolation between apps
and from kiln comes from each instance being its own OS process (with
resource limits where the deployment sets them).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import pathlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from kiln import runtime as kiln_runtime

__all__ = ["SandboxError", "install"]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_FILE_CHANGES = {
    "os.remove": "remove files", "os.rename": "rename files", "os.rmdir": "remove directories",
    "os.mkdir": "create directories", "os.chmod": "change file permissions", "os.chown": "change file owners",
    "os.link": "create links", "os.symlink": "create links", "os.truncate": "truncate files",
    "os.utime": "change file times", "shutil.rmtree": "remove directories", "shutil.copyfile": "copy files",
    "shutil.move": "move files",
}
_PROCESSES = {
    "subprocess.Popen": "start processes", "os.system": "start processes", "os.exec": "start processes",
    "os.posix_spawn": "start processes", "os.spawn": "start processes", "os.fork": "fork",
    "os.forkpty": "fork", "pty.spawn": "start processes", "os.kill": "signal processes",
    "os.killpg": "signal processes", "signal.pthread_kill": "signal threads",
}
_NATIVE = {"ctypes.dlopen": "load native libraries with ctypes", "ctypes.dlsym": "load native code with ctypes"}


class SandboxError(PermissionError):
    """App code tried something App Engine's sandbox does not allow."""


def _in_app() -> bool:
    return kiln_runtime.request_environ() is not None


def _refuse(what: str, detail: str = "") -> None:
    raise SandboxError(f"kiln sandbox: apps cannot {what}" + (f" ({detail})" if detail else ""))


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _in_app():
        return
    if event == "open":
        path, mode, flags = (list(args) + [None, None, None])[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and path not in ("/dev/null",):
            _refuse("write to the file system", f"open {path!r} for writing")
    elif event in _FILE_CHANGES:
        _refuse(_FILE_CHANGES[event], f"{event} {args[0]!r}" if args else event)
    elif event in _PROCESSES or event.startswith("os.exec") or event.startswith("os.spawn"):
        _refuse(_PROCESSES.get(event, "start processes"), event)
    elif event == "socket.__new__":
        _refuse("open sockets", "use kiln.api.urlfetch for outbound HTTP")
    elif event in _NATIVE:
        _refuse(_NATIVE[event], str(args[0]) if args else "")


class _ExtensionGuard(importlib.abc.MetaPathFinder):
    """Refuses, in app code, C extension modules that are not part of the platform."""

    def __init__(self, platform_dirs: Sequence[pathlib.Path]) -> None:
        self._platform = [str(d) for d in platform_dirs]

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not _in_app():
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return None
        origin = os.path.realpath(spec.origin or "")
        if not any(origin.startswith(d) for d in self._platform):
            raise SandboxError(f"kiln sandbox: apps cannot load the C extension {fullname!r} ({origin}); only the "
                               "platform's libraries may use native code")
        return None  # a platform extension: let the normal finders load it


_installed = False


def install() -> None:
    """Install the audit hook and the extension guard (once; audit hooks cannot be removed)."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.dont_write_bytecode = True  # the app directory is read-only to apps, and to their imports
    platform = {pathlib.Path(p).resolve() for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    sys.meta_path.insert(0, _ExtensionGuard(sorted(platform)))
    sys.addaudithook(_hook)
