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
  part of the platform (an extension module shipped inside the app);
- importing what only kiln's own environment has (see :class:`_ImportGuard`).

The runtime's own threads (the event loop, NATS, gRPC) are not affected. An
in-process Python sandbox is not a security boundary on its own: it makes App
Engine's rules visible and precise to app developers; isolation between apps
and from kiln comes from each instance being its own OS process (with
resource limits where the deployment sets them).
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import os
import pathlib
import site
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from types import FrameType, ModuleType
from typing import Any

from kiln import runtime as kiln_runtime

__all__ = ["SandboxError", "SandboxImportError", "install"]

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


class SandboxImportError(ImportError):
    """App code imported native code the sandbox refuses: an ``ImportError``, so pure-Python fallbacks still work."""


def _in_app() -> bool:
    return kiln_runtime.in_app_code()


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


class _ImportGuard(importlib.abc.MetaPathFinder):
    """What app code may import: the standard library, kiln's app API, its own code and the libraries it selected.

    Refused, in app code, with a clear error:

    - C extension modules outside the platform (the interpreter and the
      ``libraries:`` it selected): :class:`SandboxImportError`;
    - top-level modules that only kiln's own environment has (its gRPC, NATS,
      HTTP and YAML packages, its services): ``ModuleNotFoundError``, as on App
      Engine, where they did not exist. Both are ``ImportError``s, so ``try:
      import x / except ImportError`` fallbacks keep working.

    The first is checked where modules are found (this meta path finder); the
    second also where imports run (:meth:`import_` and :meth:`import_module`,
    installed as ``builtins.__import__`` and ``importlib.import_module``), because kiln has already imported many of those
    modules, and a cached module is never looked for again.
    """

    def __init__(self, app_dirs: Sequence[pathlib.Path], library_dirs: Sequence[pathlib.Path]) -> None:
        prefixes = {pathlib.Path(p).resolve() for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
        self._native_ok = _dirs([*prefixes, *library_dirs])
        self._app_code = _dirs([*app_dirs, *library_dirs])
        paths = sysconfig.get_paths()
        self._stdlib = _dirs([pathlib.Path(paths["stdlib"]), pathlib.Path(paths["platstdlib"])])
        self._site = _dirs([pathlib.Path(p) for p in site.getsitepackages()])
        self._verdicts: dict[str, bool] = {}  # top-level module name -> may app code import it
        self._import = builtins.__import__
        self._import_module = importlib.import_module

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not _in_app():
            return None
        spec = self._find(fullname, path, target)
        if spec is None:
            return None
        origin = os.path.realpath(spec.origin) if spec.origin else ""
        if isinstance(spec.loader, importlib.machinery.ExtensionFileLoader) and not _under(origin, self._native_ok):
            raise SandboxImportError(f"kiln sandbox: apps cannot load the C extension {fullname!r} ({origin}); only "
                                     "the platform's libraries may use native code (select one under libraries: in "
                                     "app.yaml)")
        if "." not in fullname:
            self._check(fullname)
        return None  # allowed: let the normal finders load it

    def import_(self, name: str, globals: Mapping[str, object] | None = None,
                locals: Mapping[str, object] | None = None, fromlist: Sequence[str] | None = (),
                level: int = 0) -> ModuleType:
        """``builtins.__import__``: refuses kiln's own packages to app code, cached or not."""
        if level == 0 and _in_app():
            self._check(name.partition(".")[0])
        return self._import(name, globals, locals, fromlist, level)

    def import_module(self, name: str, package: str | None = None) -> ModuleType:
        """``importlib.import_module``, with the same rule as :meth:`import_`."""
        if not name.startswith(".") and _in_app():
            self._check(name.partition(".")[0])
        return self._import_module(name, package)

    def _check(self, top: str) -> None:
        allowed = self._verdicts.get(top)
        if allowed is None:
            allowed = self._verdicts[top] = self._allowed(top)
        if not allowed and _imported_by_app(self._app_code):
            raise ModuleNotFoundError(f"No module named {top!r} (kiln: it is not part of the runtime apps see; select "
                                      "it under libraries: in app.yaml, list it in requirements.txt or vendor it in "
                                      "the app directory)", name=top)

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
        return not places or any(_under(p, self._app_code) or (_under(p, self._stdlib) and not _under(p, self._site))
                                 for p in places)

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
        for name in provided - APP_PACKAGES - set(sys.builtin_module_names):
            module = sys.modules.get(name)
            where = os.path.realpath(getattr(module, "__file__", None) or "") if module is not None else ""
            if where and _under(where, self._site):
                for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                    del sys.modules[loaded]


def _module_name(entry: pathlib.Path) -> str:
    if entry.is_dir():
        return entry.name if entry.name.isidentifier() else ""
    stem = entry.name.split(".")[0]
    return stem if entry.suffix in (".py", ".so", ".pyc") and stem.isidentifier() else ""


# Top-level packages of kiln's environment that app code may import: the App Engine API.
APP_PACKAGES = frozenset({"kiln"})
_IMPORT_MACHINERY = ("<frozen importlib", os.path.dirname(importlib.__file__) + "/", __file__)


def _dirs(paths: Sequence[pathlib.Path]) -> tuple[str, ...]:
    return tuple(sorted({str(p.resolve()).rstrip("/") + "/" for p in paths}))


def _under(path: str, dirs: tuple[str, ...]) -> bool:
    return path.startswith(dirs)


def _imported_by_app(app_code: tuple[str, ...]) -> bool:
    """True if the import being served was asked for by the app's code (not kiln's, not the standard library's)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_IMPORT_MACHINERY):
        frame = frame.f_back
    return frame is not None and _under(os.path.realpath(frame.f_code.co_filename), app_code)


_installed = False


def install(app_dirs: Sequence[pathlib.Path], library_dirs: Sequence[pathlib.Path] = ()) -> None:
    """Install the audit hook and the import guard (once; audit hooks cannot be removed).

    ``app_dirs`` hold the app's own code (its directory, its requirements.txt
    packages); ``library_dirs`` the platform libraries it selected.
    """
    global _installed
    if _installed:
        return
    _installed = True
    sys.dont_write_bytecode = True  # the app directory is read-only to apps, and to their imports
    guard = _ImportGuard(app_dirs, library_dirs)
    guard.release_shadowed([*app_dirs, *library_dirs])
    sys.meta_path.insert(0, guard)
    builtins.__import__ = guard.import_
    importlib.import_module = guard.import_module
    sys.addaudithook(_hook)
