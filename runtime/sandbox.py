"""The Python layer of the app sandbox: App Engine's restrictions, enforced on app code.

On a thread that runs app code, an audit hook and guards around the few
functions that raise no audit event refuse what App Engine's Python runtime
did not allow, raising :class:`SandboxError` (a ``PermissionError``, so code
that handles ``IOError``/``OSError`` keeps working) naming the rule:

- writing to the file system: opening for writing (``open``, ``os.open``,
  ``io.FileIO``, ``pathlib``, ``shutil``, ``tempfile``…), creating, removing,
  renaming, linking, changing permissions, and making FIFOs and device nodes
  (``os.mkfifo``, ``os.mknod``); opening SQLite databases (``sqlite3.connect``,
  ``:memory:`` included: App Engine had no ``sqlite3``, and SQL's ``ATTACH``
  creates files no audit event reports) and POSIX shared memory and
  semaphores (``multiprocessing.shared_memory``, ``_multiprocessing.SemLock``);
- reading what is not the app's: other processes (``/proc/PID/…`` of any
  process but its own: their environment, command line, memory) and kiln's
  private directories (``private_dirs``: the instance manager's run
  directory, ``kiln dev``'s data directory); the app's own files, the Python
  library and ``/proc/self`` stay readable;
- starting processes (``subprocess``, ``os.system``, ``exec*``, ``fork``,
  ``posix_spawn``, ``pty``, ``multiprocessing``, ``_posixsubprocess.fork_exec``)
  and signalling them (``os.kill``, ``os.killpg``, ``signal.pthread_kill``,
  ``os.pidfd_open``, ``signal.pidfd_send_signal``);
- starting threads other than with ``threading.Thread`` (so also
  ``concurrent.futures``): ``_thread.start_new_thread`` and its aliases are
  refused, because such a thread would escape its request (App Engine joins a
  request's threads before answering it);
- opening sockets (outbound HTTP goes through the URL fetch service);
- native code: ``ctypes`` loading libraries, looking up symbols and addressing
  raw memory (``from_address``, ``string_at``, ``addressof``, ``memmove``,
  ``memset``, ``cast``), and C extensions that are not part of the platform
  (an extension module shipped inside the app), however they are loaded;
- importing what only kiln's own environment has (see :class:`_ImportGuard`),
  also from code compiled from strings (``exec("import grpc")``), through
  ``importlib`` (``import_module``, ``__import__``, ``_bootstrap._gcd_import``),
  ``runpy`` and ``pkgutil``, and loading that code from its files under a name
  of the app's own (``importlib.util.spec_from_file_location``, ``imp``);
- reaching into the interpreter: ``gc.get_objects``/``get_referrers``/
  ``get_referents``, ``sys._current_frames``, trace and profile functions
  (``sys.settrace``, ``threading.settrace``…) and audit hooks of its own.

Which threads run app code is decided by the hook alone, from state only it
holds: the runtime's request threads (named :data:`APP_THREADS`), every
thread an app thread starts, any thread that entered a request
(:data:`APP_THREAD_EVENT`), and for one call any thread with a frame of the
app's code on its stack (a signal handler, ``__del__``, a logging handler or
an ``atexit`` function the app defined, run on one of kiln's threads). Once a
thread has run app code it stays an app thread; clearing or replacing the
per-request environment (``os.environ``, ``kiln.runtime``'s thread-local
state) changes nothing here.

What this layer cannot close (an in-process sandbox is not a security
boundary; the OS layer in ``runtime.isolation`` does: per-app Unix users
(``--isolation user``), a network namespace (``--network-isolation``) and,
in every mode, a seccomp filter that answers EPERM to starting, replacing
or signalling processes, ``mknod``, ``ptrace``, ``process_vm_readv``,
namespaces, mounts and the kernel's own interfaces, whoever calls them):

- Python objects are introspectable and mostly mutable. The originals the
  guards wrap sit in their closures (``f.__closure__``, whose cells can even
  be rewritten), the import guard is an object in ``sys.meta_path`` whose
  class, like every module global of kiln's code, can be rebound (only
  replacing a function's ``__code__`` or defaults raises an audit event, and
  that is refused), and a ``ctypes`` function pointer or pointer object kiln
  already made can be pointed at any address, and one made from an address
  (``ctypes.CFUNCTYPE(...)(address)``, with libc's from ``/proc/self/maps``
  and its ELF file) raises no audit event: with any of them app code can
  undo every rule here. Only the OS layer bounds a process whose own code
  rewrites it: without a network namespace such code reaches any address,
  and without a per-app user any file of kiln's user (all of them, if kiln
  runs as root); the seccomp filter refuses it ``fork``, ``execve``,
  ``mknod``, ``kill`` of another process, pidfds, ``ptrace`` and
  ``process_vm_readv`` in every mode (tests/integration/
  test_sandbox_bypasses.py calls the guards' originals and libc by address).
- Modules kiln has loaded are objects the app can reach (``sys.modules``,
  attributes of ``kiln``'s API modules): the import rule governs import
  statements, not the objects. ``sys.modules["grpc"]`` gives gRPC, whose
  C core opens sockets no audit event reports; only a network namespace stops
  it reaching addresses other than kiln's services.
- Callbacks that are built-in functions or kiln's own (``atexit.register(
  os.system, cmd)``, ``weakref.finalize(obj, os.system, cmd)`` collected on
  kiln's thread, a module attribute of the standard library replaced by a
  built-in, functions the app compiled from a string) run on kiln's threads
  with no frame of the app's files on the stack: indistinguishable from
  kiln's own calls. The seccomp filter refuses them what it refuses the app
  (``os.system`` starts nothing); what it allows (files, sockets) they may do.
- Reading is refused by path as the ``open`` event names it; what names a
  file without opening it (``os.stat``, ``os.listdir``) is not refused.
- ``kiln.api`` calls gRPC and NATS for the app; what an app can do with its
  own token and NATS user is bounded by those services, not by this layer.

With ``--isolation none`` (``kiln dev``'s default) the instance runs as
kiln's own Unix user; ``kiln dev`` therefore keeps every secret out of the
instance's reach: none is in any process's environment or command line or in
any file (they travel through pipes, :mod:`kiln_platform.handover`; the sign-in key
is made anew at each start instead of being kept in the data directory), and
the processes holding them are non-dumpable, so the same user cannot read
their memory through ``/proc`` (root can: run ``kiln dev`` as an ordinary
user, or use per-app users). The instance itself holds only its app's token
and its app's NATS user, and inherits no descriptor but its standard ones.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import pathlib
import site
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType, FunctionType, ModuleType
from typing import Any

__all__ = ["APP_THREADS", "APP_THREAD_EVENT", "SandboxError", "SandboxImportError", "install"]

# Raised (``sys.audit``) by the runtime on a thread that is about to run app code; the hook remembers the thread.
APP_THREAD_EVENT = "kiln.sandbox.app_thread"
# Name prefix of the runtime's request threads: every thread with it runs app code.
APP_THREADS = "kiln-app"
_CALL = "kiln.sandbox.call"  # a guarded function is called: (name, detail)
_START = "kiln.sandbox.start_thread"  # a thread is about to start: (function, verdict list)
_BOOT = "kiln.sandbox.boot_thread"  # first thing on a new thread: (token,)
_QUERY = "kiln.sandbox.in_app"  # does the calling thread run app code: (verdict list,)
_OPEN_AT = "kiln.sandbox.open_at"  # os.open relative to a directory descriptor: (resolved path, flags)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_FILE_CHANGES = {
    "os.remove": "remove files", "os.rename": "rename files", "os.rmdir": "remove directories",
    "os.mkdir": "create directories", "os.chmod": "change file permissions", "os.chown": "change file owners",
    "os.link": "create links", "os.symlink": "create links", "os.truncate": "truncate files",
    "os.utime": "change file times", "shutil.rmtree": "remove directories", "shutil.copyfile": "copy files",
    "shutil.move": "move files", "sqlite3.connect": "open SQLite databases (App Engine had no sqlite3; use the "
                                                    "datastore)",
}
_PROCESSES = {
    "subprocess.Popen": "start processes", "os.system": "start processes", "os.exec": "start processes",
    "os.posix_spawn": "start processes", "os.spawn": "start processes", "os.fork": "fork",
    "os.forkpty": "fork", "pty.spawn": "start processes", "os.kill": "signal processes",
    "os.killpg": "signal processes", "signal.pthread_kill": "signal threads",
}
# ctypes events that touch no native code or raw memory; every other ``ctypes.*`` event is refused.
_CTYPES_HARMLESS = frozenset({"ctypes.create_string_buffer", "ctypes.create_unicode_buffer", "ctypes.get_errno",
                              "ctypes.set_errno", "ctypes.cdata/buffer"})
_INTERPRETER = {
    "gc.get_objects": "walk the interpreter's objects", "gc.get_referrers": "walk the interpreter's objects",
    "gc.get_referents": "walk the interpreter's objects", "sys._current_frames": "read other threads' frames",
    "sys.settrace": "set trace functions", "sys.setprofile": "set profile functions",
    # Refusing this one makes Python leave the hook out silently (it drops the error): the app's hook never runs.
    "sys.addaudithook": "add audit hooks",
}
# Functions that raise no audit event of their own: module -> attribute -> the rule refusing them in app code.
_GUARDED: dict[str, dict[str, str]] = {
    "posix": {"mkfifo": "make FIFOs", "mknod": "make device nodes", "pidfd_open": "signal processes"},
    "os": {"mkfifo": "make FIFOs", "mknod": "make device nodes", "pidfd_open": "signal processes"},
    "signal": {"pidfd_send_signal": "signal processes"},
    "_signal": {"pidfd_send_signal": "signal processes"},
    "_posixsubprocess": {"fork_exec": "start processes"},
    "subprocess": {"_fork_exec": "start processes"},
    "_posixshmem": {"shm_open": "create shared memory", "shm_unlink": "remove shared memory"},
    "_multiprocessing": {"SemLock": "create POSIX semaphores", "sem_unlink": "remove POSIX semaphores"},
    "ctypes": {"memmove": "address raw memory with ctypes", "memset": "address raw memory with ctypes",
               "cast": "address raw memory with ctypes"},
    "threading": {"settrace": "set trace functions", "setprofile": "set profile functions"},
}
_FUNCTION_PARTS = frozenset({"__code__", "__defaults__", "__kwdefaults__"})
_UNCHECKED = frozenset({"sys._getframe", "object.__getattr__"})
# The events the hook acts on: those a rule of _check names (exactly, or by one of _RULED_PREFIXES) and the hook's own.
# Every other event returns at once, before any thread or frame work: the hook runs for every audited event of every
# process thread (one datastore call through ndb raises about 45, most of them _UNCHECKED ones, and kiln's own
# threads raise theirs), and telling whether a thread not known to run app code has app code on its stack walks it.
_RULED = frozenset({"open", _OPEN_AT, *_FILE_CHANGES, *_PROCESSES, "socket.__new__", *_INTERPRETER, _CALL,
                    "object.__setattr__", "compile", "code.__new__", "marshal.loads",
                    APP_THREAD_EVENT, _BOOT, _QUERY, _START})
_RULED_PREFIXES = ("os.exec", "os.spawn", "ctypes.")
_IMP = ("create_builtin", "create_dynamic", "exec_builtin", "exec_dynamic")


class SandboxError(PermissionError):
    """App code tried something App Engine's sandbox does not allow."""


class SandboxImportError(ImportError):
    """App code imported native code the sandbox refuses: an ``ImportError``, so pure-Python fallbacks still work."""


def _refuse(what: str, detail: str = "") -> None:
    raise SandboxError(f"kiln sandbox: apps cannot {what}" + (f" ({detail})" if detail else ""))


def _in_app(audit: Callable[..., None] = sys.audit) -> bool:
    """Whether the calling thread runs app code (asked of the hook, which alone holds the answer).

    ``sys.audit`` is bound when kiln loads, so an app replacing it does not answer for the hook.
    """
    verdict: list[bool] = []
    audit(_QUERY, verdict)
    return bool(verdict)


class _Places:
    """The directories the rules are about (resolved, each ending in ``/``)."""

    def __init__(self, app_dirs: Sequence[pathlib.Path], library_dirs: Sequence[pathlib.Path],
                 private_dirs: Sequence[pathlib.Path]) -> None:
        prefixes = {pathlib.Path(p).resolve() for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
        self.native_ok = _dirs([*prefixes, *library_dirs])
        self.app_code = _dirs([*app_dirs, *library_dirs])
        self.libraries = _dirs(list(library_dirs))
        paths = sysconfig.get_paths()
        self.stdlib = _dirs([pathlib.Path(paths["stdlib"]), pathlib.Path(paths["platstdlib"])])
        self.site = _dirs([pathlib.Path(p) for p in site.getsitepackages()])
        kiln_dir = pathlib.Path(__file__).resolve().parent.parent / "kiln"
        self.app_api = _dirs([kiln_dir])  # the package apps import (APP_PACKAGES)
        # kiln's own code and its environment's packages: the code apps may not import or load.
        self.platform = _dirs([kiln_dir.parent, *map(pathlib.Path, site.getsitepackages())])
        self.private = _dirs(list(private_dirs))
        self.pid_dir = f"/proc/{os.getpid()}/"
        # Files of kiln's environment that a selected library also ships at the very same version (Google's SDK
        # pins protobuf to kiln's): the loaded package is kiln's copy, so its modules not loaded yet come from
        # kiln's files (Sandbox.release_shadowed fills this in).
        self.shared: frozenset[str] = frozenset()

    def private_code(self, path: str) -> bool:
        """Whether ``path`` is a file of kiln's code that apps may not load as their own."""
        return (_under(path, self.platform) and not _under(path, self.app_code) and not _under(path, self.app_api)
                and path not in self.shared and os.path.isfile(path))

    def importer_is_library(self, frame: FrameType | None) -> bool:
        """Whether the code asking for an import is one of the platform libraries the app selected."""
        while frame is not None and frame.f_code.co_filename.startswith(_IMPORT_MACHINERY):
            frame = frame.f_back
        return frame is not None and _under(os.path.realpath(frame.f_code.co_filename), self.libraries)

    def importer_is_app(self, frame: FrameType | None) -> bool:
        """Whether the code asking for an import or a load (the first frame outside the import machinery) is the
        app's: anything but kiln's own code, so also the standard library acting for it and code from strings."""
        while frame is not None and frame.f_code.co_filename.startswith(_IMPORT_MACHINERY):
            frame = frame.f_back
        if frame is None:
            return False
        path = os.path.realpath(frame.f_code.co_filename)
        if _under(path, self.app_code):
            return True
        return not (_under(path, self.platform) and os.path.isfile(path))


class _ImportGuard(importlib.abc.MetaPathFinder):
    """What app code may import: the standard library, kiln's app API, its own code and the libraries it selected.

    Refused, in app code, with a clear error:

    - C extension modules outside the platform (the interpreter and the
      ``libraries:`` it selected): :class:`SandboxImportError`;
    - top-level modules that only kiln's own environment has (its gRPC, NATS,
      HTTP and YAML packages, its services): ``ModuleNotFoundError``, as on App
      Engine, where they did not exist. Both are ``ImportError``s, so ``try:
      import x / except ImportError`` fallbacks keep working.

    The first is checked where modules are found (this meta path finder) and
    where extension modules are created (``_imp.create_dynamic``); the second
    also where imports run (:meth:`import_` and :meth:`import_module`,
    installed as ``builtins.__import__``, ``importlib.import_module`` and
    ``importlib._bootstrap._gcd_import``), because kiln has already imported
    many of those modules, and a cached module is never looked for again.
    """

    def __init__(self, places: _Places) -> None:
        self._places = places
        self._verdicts: dict[str, bool] = {}  # top-level module name -> may app code import it
        self._library_only: set[str] = set()  # kiln's transports a selected library uses (release_shadowed)
        self._import = builtins.__import__
        self._import_module = importlib.import_module
        self._gcd_import = importlib._bootstrap._gcd_import  # type: ignore[attr-defined]

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not _in_app():
            return None
        spec = self._find(fullname, path, target)
        if spec is None:
            return None
        if isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            self.check_native(fullname, spec.origin)
        if "." not in fullname:
            self._check(fullname)
        return None  # allowed: let the normal finders load it

    def check_native(self, name: str, origin: str | None) -> None:
        where = os.path.realpath(origin) if origin else ""
        if not _under(where, self._places.native_ok):
            raise SandboxImportError(f"kiln sandbox: apps cannot load the C extension {name!r} ({where}); only "
                                     "the platform's libraries may use native code (select one under libraries: in "
                                     "app.yaml)")

    def import_(self, name: str, globals: Mapping[str, object] | None = None,
                locals: Mapping[str, object] | None = None, fromlist: Sequence[str] | None = (),
                level: int = 0) -> ModuleType:
        """``builtins.__import__``: refuses kiln's own packages to app code, cached or not."""
        if level == 0 and self._may_refuse(top := name.partition(".")[0]) and _in_app():
            self._check(top)
        return self._import(name, globals, locals, fromlist, level)

    def import_module(self, name: str, package: str | None = None) -> ModuleType:
        """``importlib.import_module``, with the same rule as :meth:`import_`."""
        if not name.startswith(".") and self._may_refuse(top := name.partition(".")[0]) and _in_app():
            self._check(top)
        return self._import_module(name, package)

    def gcd_import(self, name: str, package: str | None = None, level: int = 0) -> ModuleType:
        """``importlib._bootstrap._gcd_import``, with the same rule as :meth:`import_`."""
        if level == 0 and self._may_refuse(top := name.partition(".")[0]) and _in_app():
            self._check(top)
        module: ModuleType = self._gcd_import(name, package, level)
        return module

    def _may_refuse(self, top: str) -> bool:
        """Whether :meth:`_check` could refuse ``top``: not once it found app code may import it. Most imports at run
        time (function-level ones in the SDK's code, several per API call) are of such modules, and need not ask the
        hook whether the thread runs app code."""
        return self._verdicts.get(top) is not True

    def _check(self, top: str) -> None:
        allowed = self._verdicts.get(top)
        if allowed is None:
            allowed = self._verdicts[top] = self._allowed(top)
        if not allowed and top in self._library_only and self._places.importer_is_library(_caller(2)):
            return
        if not allowed and self._places.importer_is_app(_caller(2)):
            hint = _TRANSPORT_HINT if top in _TRANSPORTS else ("select it under libraries: in app.yaml, list it in "
                                                               "requirements.txt or vendor it in the app directory")
            raise ModuleNotFoundError(f"No module named {top!r} (kiln: it is not part of the runtime apps see; {hint})",
                                      name=top)

    def _allowed(self, top: str) -> bool:
        if top in APP_PACKAGES or top in sys.builtin_module_names:
            return True
        module = sys.modules.get(top)
        if module is not None:
            places = [getattr(module, "__file__", None) or "", *getattr(module, "__path__", [])]
        else:
            spec = self._find(top, None, None)
            if spec is None:
                return True  # nothing to import: the import fails on its own
            places = [spec.origin or "", *(spec.submodule_search_locations or [])]
        places = [os.path.realpath(p) for p in places if p and os.path.isabs(p)]
        p = self._places
        return not places or any(_under(x, p.app_code) or (_under(x, p.stdlib) and not _under(x, p.site))
                                 for x in places)

    def _find(self, fullname: str, path: Sequence[str] | None,
              target: ModuleType | None) -> importlib.machinery.ModuleSpec | None:
        """The spec the finders after this one would give (path entries, and e.g. an editable install's finder)."""
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def release_shadowed(self, dirs: Sequence[pathlib.Path]) -> None:
        """Forget platform modules the app brings its own copy of, so its imports load the app's copy.

        kiln's code that already holds the platform's module keeps it.
        """
        provided = {_module_name(entry) for d in dirs if d.is_dir() for entry in d.iterdir()} - {""}
        versions = _distribution_versions(dirs)
        self._places.shared = _shared_files([pathlib.Path(d) for d in self._places.libraries])
        site_versions: dict[str, str] | None = None
        for name in provided - APP_PACKAGES - set(sys.builtin_module_names):
            module = sys.modules.get(name)
            where = os.path.realpath(getattr(module, "__file__", None) or "") if module is not None else ""
            if where and _under(where, self._places.site):
                if site_versions is None:  # read once: scanning the environment's metadata is slow
                    site_versions = _distribution_versions([pathlib.Path(p) for p in site.getsitepackages()])
                if name in versions and versions[name] == site_versions.get(name):
                    # The very version kiln loaded (Google's SDK pins grpcio, protobuf… to kiln's): the app uses the
                    # loaded copy, as its own. A second copy of a C extension such as gRPC's core would split its
                    # classes in two (an error raised by one copy is not the other's ``RpcError``).
                    if name in _TRANSPORTS:
                        self._library_only.add(name)  # a library's code may use it; the app's own code may not
                    else:
                        self._verdicts[name] = True
                    continue
                if name in _TRANSPORTS:
                    # Another version of kiln's transport (an app's requirements bring gRPC for a Google Cloud
                    # client): kiln's stays loaded, since its own code imports parts of itself lazily, and the
                    # app's code still may not import it.
                    continue
                for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                    del sys.modules[loaded]


def _shared_files(library_dirs: Sequence[pathlib.Path]) -> frozenset[str]:
    """The files of kiln's environment whose distribution a selected library ships at the very same version
    (kiln's transports excepted: their code stays the library's alone)."""
    site_dists = {name: (version, dist) for name, version, dist in
                  _distributions([pathlib.Path(p) for p in site.getsitepackages()])}
    out: set[str] = set()
    for name, version, _ in _distributions(library_dirs):
        mine = site_dists.get(name)
        if mine is None or mine[0] != version:
            continue
        files = [f for f in mine[1].files or () if str(f).endswith((".py", ".pyc", ".so"))]
        if {str(f).split("/")[0].removesuffix(".py") for f in files} & _TRANSPORTS:
            continue
        out.update(os.path.realpath(str(mine[1].locate_file(f))) for f in files)
    return frozenset(out)


def _distributions(dirs: Sequence[pathlib.Path]) -> list[tuple[str, str, importlib.metadata.Distribution]]:
    """(normalised name, version, distribution) of each distribution installed in ``dirs``; the metadata is read
    once each per process (parsing it is most of the cost of an instance's start when a library brings many)."""
    return _distributions_in(tuple(str(d) for d in dirs if d.is_dir()))


@functools.lru_cache(maxsize=8)
def _distributions_in(dirs: tuple[str, ...]) -> list[tuple[str, str, importlib.metadata.Distribution]]:
    out = []
    for dist in importlib.metadata.distributions(path=list(dirs)):
        meta = dist.metadata
        out.append((str(meta["Name"]).lower().replace("_", "-"), str(meta["Version"]), dist))
    return out


def _distribution_versions(dirs: Sequence[pathlib.Path]) -> dict[str, str]:
    """Top-level module name -> the version of the distribution installed in ``dirs`` that provides it."""
    out: dict[str, str] = {}
    for _, version, dist in _distributions(dirs):
        names = (dist.read_text("top_level.txt") or "").split()
        if not names:
            names = [str(f).split("/")[0].removesuffix(".py") for f in dist.files or () if "/" in str(f)
                     and not str(f).split("/")[0].endswith((".dist-info", ".libs", ".data"))]
        for name in names:
            out.setdefault(name, version)
    return out


def _module_name(entry: pathlib.Path) -> str:
    if entry.is_dir():
        return entry.name if entry.name.isidentifier() else ""
    stem = entry.name.split(".")[0]
    return stem if entry.suffix in (".py", ".so", ".pyc") and stem.isidentifier() else ""


# kiln's own transports: when a selected library brings the very version kiln loaded (Google's SDK brings grpcio),
# the library's code uses kiln's copy, and the app's own code still may not import it.
_TRANSPORTS = frozenset({"grpc"})
_TRANSPORT_HINT = ("app code may not use gRPC itself, even when requirements.txt brings it: its C core opens sockets "
                   "the sandbox cannot see. Call kiln's services through Google's SDK or kiln.api; Google Cloud client "
                   "libraries use their HTTP/JSON transport (the runtime sets GOOGLE_CLOUD_DISABLE_GRPC)")

# Top-level packages of kiln's environment that app code may import: the App Engine API.
APP_PACKAGES = frozenset({"kiln"})
_IMPORT_MACHINERY = ("<frozen importlib", os.path.dirname(importlib.__file__) + "/", __file__)


def _dirs(paths: Sequence[pathlib.Path]) -> tuple[str, ...]:
    return tuple(sorted({str(pathlib.Path(p).resolve()).rstrip("/") + "/" for p in paths}))


def _under(path: str, dirs: tuple[str, ...]) -> bool:
    return path.startswith(dirs) or path + "/" in dirs


def _opened_path(path: object) -> str | None:
    """The resolved file an ``open`` event is about (``None`` for a descriptor)."""
    if isinstance(path, int):
        return None
    try:
        text = os.fsdecode(path)  # type: ignore[arg-type]  # str, bytes or os.PathLike, as open() takes
    except TypeError:
        return None
    return os.path.realpath(text)


def _check_open(args: tuple[Any, ...], places: _Places) -> None:
    path, mode, flags = (list(args) + [None, None, None])[:3]
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & _WRITE_FLAGS)
    if writing and path not in ("/dev/null",):
        _refuse("write to the file system", f"open {path!r} for writing")
    where = _opened_path(path)
    if where is None:
        return
    if where.startswith("/proc/") and where.split("/")[2].isdigit() and not where.startswith(places.pid_dir) \
            and where + "/" != places.pid_dir:
        _refuse("read other processes", f"open {path!r}")
    if _under(where, places.private):
        _refuse("read kiln's private files", f"open {path!r}")


def _loaded_from(frame: FrameType | None) -> str:
    """The file the import machinery is loading code from, seen from a ``marshal.loads`` event's frames."""
    while frame is not None:
        if frame.f_code.co_name == "get_code" and frame.f_code.co_filename.startswith("<frozen importlib"):
            found = frame.f_locals.get("source_path") or frame.f_locals.get("bytecode_path") or ""
            return os.path.realpath(found) if isinstance(found, str) and found else ""
        frame = frame.f_back
    return ""


def _ruled(event: str) -> bool:
    """Whether the hook acts on ``event``: a rule of :func:`_check` names it, or it is one of the hook's own."""
    return event in _RULED or event.startswith(_RULED_PREFIXES)


def _check(event: str, args: tuple[Any, ...], places: _Places) -> None:
    """Refuse ``event`` (raised on a thread running app code) if the sandbox forbids it; only :func:`_ruled`
    events reach it."""
    if event == "open":
        _check_open(args, places)
    elif event == _OPEN_AT:
        _check_open((args[0], None, args[1]), places)
    elif event in _FILE_CHANGES:
        _refuse(_FILE_CHANGES[event], f"{event} {args[0]!r}" if args else event)
    elif event in _PROCESSES or event.startswith("os.exec") or event.startswith("os.spawn"):
        _refuse(_PROCESSES.get(event, "start processes"), event)
    elif event == "socket.__new__":
        _refuse("open sockets", "use kiln.api.urlfetch for outbound HTTP")
    elif event.startswith("ctypes.") and event not in _CTYPES_HARMLESS:
        _refuse("use native code or raw memory with ctypes", f"{event} {args[0]!r}" if args else event)
    elif event in _INTERPRETER:
        _refuse(_INTERPRETER[event], event)
    elif event == _CALL:
        _refuse(args[0], args[1])
    elif event == "object.__setattr__" and isinstance(args[0], FunctionType) and args[1] in _FUNCTION_PARTS:
        where = args[0].__code__.co_filename
        if os.path.isabs(where) and not _under(os.path.realpath(where), places.app_code):
            _refuse("change kiln's functions", f"{args[0].__qualname__}.{args[1]}")
    elif event in ("compile", "code.__new__") and len(args) > 1 and isinstance(args[1], (str, bytes)) \
            and os.path.isabs(os.fsdecode(args[1])):  # code from strings is named "<string>" and the like
        _check_load(os.path.realpath(os.fsdecode(args[1])), places)
    elif event == "marshal.loads":
        _check_load(_loaded_from(_caller(3)), places)


def _check_load(path: str, places: _Places) -> None:
    if path and places.private_code(path) and places.importer_is_app(_caller(4)):
        _refuse("load kiln's own code as their own", path)


def _caller(depth: int) -> FrameType | None:
    """The frame ``depth`` calls up from the one calling this (``None`` past the bottom of the stack)."""
    try:
        return sys._getframe(depth)
    except ValueError:
        return None


def _app_frame_on_stack(app_code: tuple[str, ...]) -> bool:
    frame = _caller(2)
    depth = 0
    while frame is not None and depth < 500:
        if frame.f_code.co_filename.startswith(app_code):
            return True
        frame, depth = frame.f_back, depth + 1
    return False


def _make_hook(places: _Places) -> Callable[[str, tuple[Any, ...]], None]:
    """The audit hook, which alone knows which threads run app code.

    Its state is two frozensets in its own closure, rebound only here: nothing
    else holds the cells, and nothing app code can call removes a thread.
    """
    app_threads: frozenset[int] = frozenset()  # idents of threads running app code
    pending_app: frozenset[object] = frozenset()  # tokens of threads started, not yet running: app code
    pending_platform: frozenset[object] = frozenset()  # the same, kiln's own threads
    get_ident = threading.get_ident

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal app_threads, pending_app, pending_platform
        if event in _UNCHECKED or not _ruled(event):  # never refused (the hook's own frame walks raise the former)
            return
        if event == _BOOT:  # a thread kiln's guard started: decided when it was started
            token = args[0]
            if token in pending_app:
                pending_app = pending_app - {token}
                app_threads = app_threads | {get_ident()}
            elif token in pending_platform:
                pending_platform = pending_platform - {token}
                app_threads = app_threads - {get_ident()}  # a reused ident of a finished app thread
            return
        if event == APP_THREAD_EVENT:
            app_threads = app_threads | {get_ident()}
            return
        in_app = get_ident() in app_threads or _app_frame_on_stack(places.app_code)
        if event == _QUERY:
            if in_app:
                args[0].append(True)
        elif event == _START:
            function, verdict = args
            thread = getattr(function, "__self__", None)
            if in_app and not (isinstance(thread, threading.Thread) and getattr(thread, "_kiln_start", False)):
                _refuse("start threads except with threading.Thread",
                        "a thread must belong to the request that starts it")
            token = object()
            if in_app or (isinstance(thread, threading.Thread) and thread.name.startswith(APP_THREADS)):
                pending_app = pending_app | {token}
            else:
                pending_platform = pending_platform | {token}
            verdict.append(token)
        elif in_app:
            _check(event, args, places)

    return hook


def _guard(original: Callable[..., Any], what: str, name: str) -> Callable[..., Any]:
    audit = sys.audit
    if isinstance(original, type):  # a class (SemLock): a subclass whose construction is refused, attributes kept
        base: type[Any] = original

        def __new__(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
            audit(_CALL, what, name)
            return base.__new__(cls, *args, **kwargs)

        return type(base.__name__, (base,), {"__new__": __new__, "__module__": base.__module__,
                                             "__doc__": base.__doc__})

    def guarded(*args: Any, **kwargs: Any) -> Any:
        audit(_CALL, what, name)
        return original(*args, **kwargs)

    guarded.__name__ = guarded.__qualname__ = getattr(original, "__name__", name.rpartition(".")[2])
    guarded.__doc__ = getattr(original, "__doc__", None)
    return guarded


def _guard_thread_start(original: Callable[..., Any]) -> Callable[..., Any]:
    audit = sys.audit

    def start_new_thread(function: Callable[..., Any], args: tuple[Any, ...] = (),
                         kwargs: dict[str, Any] | None = None) -> Any:
        verdict: list[object] = []
        audit(_START, function, verdict)
        token, call_kwargs = verdict[0], kwargs or {}

        def boot() -> None:
            audit(_BOOT, token)
            function(*args, **call_kwargs)

        return original(boot, ())

    start_new_thread.__doc__ = original.__doc__
    return start_new_thread


def _guard_open_at(original: Callable[..., int]) -> Callable[..., int]:
    """``os.open``: a path relative to ``dir_fd`` is checked as the file it names (the ``open`` event has no
    ``dir_fd``, so ``os.open("1/environ", dir_fd=<fd of /proc>)`` would otherwise pass as a relative path)."""
    audit = sys.audit

    def open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:  # noqa: A001
        if dir_fd is not None:
            name = os.fsdecode(path)
            if not os.path.isabs(name):
                audit(_OPEN_AT, os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name), flags)
        return original(path, flags, mode, dir_fd=dir_fd)

    open.__doc__ = original.__doc__
    return open


def _guard_imp(guard: _ImportGuard) -> None:
    """Creating or re-running built-in and extension modules: the native rule, and no fresh copy of a guarded one."""
    import _imp
    guarded_modules = frozenset(_GUARDED) | {"_thread", "builtins", "sys", "_imp"}

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def imp_call(target: Any) -> Any:
            if _in_app():
                spec_name = getattr(target, "name", None) or getattr(target, "__name__", "")
                if spec_name in guarded_modules or spec_name in sys.modules and name.startswith("create"):
                    _refuse("re-create the platform's modules", f"_imp.{name}({spec_name!r})")
                if name == "create_dynamic":
                    guard.check_native(str(spec_name), getattr(target, "origin", None))
            return original(target)

        return imp_call

    for name in _IMP:
        original = getattr(_imp, name, None)
        if original is not None:
            setattr(_imp, name, wrap(name, original))


def _guard_functions() -> None:
    """Put the guards in place of the originals: in their modules, and wherever a loaded module copied one
    (``subprocess._fork_exec`` is ``_posixsubprocess.fork_exec``, ``threading._start_new_thread`` is
    ``_thread.start_new_thread``)."""
    import _thread
    guards: dict[int, tuple[object, object]] = {}  # id(original) -> (original, guard)
    for module_name, functions in _GUARDED.items():
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
        for attr, what in functions.items():
            original = getattr(module, attr, None)
            if original is not None and id(original) not in guards:
                guards[id(original)] = (original, _guard(original, what, f"{module_name}.{attr}"))
    for original in (_thread.start_new_thread, _thread.start_new):
        guards[id(original)] = (original, _guard_thread_start(original))
    guards[id(os.open)] = (os.open, _guard_open_at(os.open))
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or module is sys.modules[__name__]:
            continue
        for attr, value in list(namespace.items()):
            found = guards.get(id(value))
            if found is not None and found[0] is value:
                namespace[attr] = found[1]


_installed = False


def install(app_dirs: Sequence[pathlib.Path], library_dirs: Sequence[pathlib.Path] = (),
            private_dirs: Sequence[pathlib.Path] = ()) -> None:
    """Install the audit hook, the guards and the import guard (once; audit hooks cannot be removed).

    ``app_dirs`` hold the app's own code (its directory, its requirements.txt
    packages); ``library_dirs`` the platform libraries it selected;
    ``private_dirs`` what app code may not read (kiln's run and data
    directories, which may lie inside the app's directory).
    """
    global _installed
    if _installed:
        return
    _installed = True
    sys.dont_write_bytecode = True  # the app directory is read-only to apps, and to their imports
    # tempfile finds its directory by writing a probe file, which the sandbox refuses: found once here, app code's
    # tempfile calls get the sandbox's own error instead of "no usable temporary directory".
    tempfile.tempdir = tempfile.gettempdir()
    places = _Places(app_dirs, library_dirs, private_dirs)
    guard = _ImportGuard(places)
    guard.release_shadowed([*app_dirs, *library_dirs])
    _guard_functions()
    _guard_imp(guard)
    sys.meta_path.insert(0, guard)
    builtins.__import__ = guard.import_
    importlib.import_module = guard.import_module
    importlib._bootstrap._gcd_import = guard.gcd_import  # type: ignore[attr-defined]
    sys.addaudithook(_make_hook(places))
