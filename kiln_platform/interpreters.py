"""Which Python a version runs on: the one its ``runtime:`` names, found on this host.

``python311`` runs on Python 3.11, ``python312`` on 3.12, ``python313`` on 3.13, as on App Engine; ``python27``
apps run on kiln's own Python 3 (the interpreter running this code). An interpreter is found, in order:

- kiln's own, when it is the version asked for;
- ``pythonX.Y`` in the directories of ``KILN_PYTHON_PATH`` (default: ``PATH``);
- the newest ``X.Y.*`` installed by pyenv under ``KILN_PYENV_ROOT`` (default: ``PYENV_ROOT``, else ``~/.pyenv``).

A candidate counts only if it runs and reports the version asked for (pyenv's shims are on ``PATH`` too, and fail
for a version that is not the shell's). ``kiln dev`` and the instance manager look the same way, so a version
``kiln dev`` accepts is one its instances start on; a missing interpreter is refused naming it and how to install it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Mapping

from kiln_platform import appyaml

PROBE_TIMEOUT_SECONDS = 30
# The Python 3 versions App Engine's runtimes name that kiln looks for (python311 … python314).
PYTHON3_VERSIONS = tuple((3, minor) for minor in range(11, 15))
_PATCH = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """A Python found on this host; ``own`` when it is kiln's."""

    version: tuple[int, int]
    executable: pathlib.Path
    own: bool = False

    @property
    def name(self) -> str:
        """``python3.12``."""
        return f"python{self.version[0]}.{self.version[1]}"


@dataclasses.dataclass(frozen=True)
class Search:
    """Where interpreters are looked for: directories (os.pathsep-separated) and a pyenv root."""

    path: str
    pyenv_root: pathlib.Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Search:
        """``KILN_PYTHON_PATH`` (default ``PATH``) and ``KILN_PYENV_ROOT`` (default ``PYENV_ROOT``, ``~/.pyenv``)."""
        env = os.environ if environ is None else environ
        path = env.get("KILN_PYTHON_PATH", env.get("PATH", os.defpath))
        root = env.get("KILN_PYENV_ROOT") or env.get("PYENV_ROOT") or str(pathlib.Path.home() / ".pyenv")
        return cls(path, pathlib.Path(root))


def own() -> Interpreter:
    """kiln's own Python."""
    return Interpreter((sys.version_info[0], sys.version_info[1]), pathlib.Path(sys.executable), own=True)


def find(config: appyaml.AppConfig, *, filename: str = "app.yaml", search: Search | None = None) -> Interpreter:
    """The Python ``config.runtime`` runs on.

    Raises:
        appyaml.AppYamlError: no interpreter of that version on this host (naming it, where kiln looked, and how to
            install it), at app.yaml's ``runtime`` line.
    """
    wanted = config.python_version
    if wanted is None or wanted == own().version:
        return own()
    search = search or Search.from_env()
    found = lookup(wanted, search)
    if found is not None:
        return found
    version = f"{wanted[0]}.{wanted[1]}"
    raise appyaml.AppYamlError(
        filename, config.runtime_line, "runtime",
        f"{config.runtime} runs on Python {version}, and this host has none: kiln looked for python{version} on the "
        f"search path (KILN_PYTHON_PATH, default PATH) and under {search.pyenv_root / 'versions'}/{version}.*. "
        f"Install it (pyenv install {version}, or your system's python{version} package) and start again")


def lookup(version: tuple[int, int], search: Search) -> Interpreter | None:
    """An interpreter of ``version`` on ``search``'s path or under its pyenv root, or None."""
    name = f"python{version[0]}.{version[1]}"
    candidates = [pathlib.Path(d) / name for d in search.path.split(os.pathsep) if d]
    versions = search.pyenv_root / "versions"
    installed = []
    if versions.is_dir():
        for entry in versions.iterdir():
            parsed = _PATCH.match(entry.name)
            if parsed and (int(parsed[1]), int(parsed[2])) == version:
                installed.append((int(parsed[3]), entry / "bin" / name))
    candidates += [path for _, path in sorted(installed, reverse=True)]
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and _reports(candidate, version):
            return Interpreter(version, candidate)
    return None


def _reports(executable: pathlib.Path, version: tuple[int, int]) -> bool:
    try:
        done = subprocess.run([str(executable), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == f"{version[0]}.{version[1]}"
