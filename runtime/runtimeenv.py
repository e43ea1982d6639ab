"""kiln's runtime on another Python: a virtual environment per interpreter holding what ``python -m runtime`` needs.

An instance of a ``python312`` version runs kiln's runtime on Python 3.12, so the runtime's own dependencies
(gRPC, protobuf, the NATS client, libseccomp's binding…) must be installed for that Python. They are installed once
per host and interpreter into a virtual environment under the manager's cache directory, pinned to exactly the
versions kiln itself runs with (read from kiln's installed metadata, which ``pyproject.toml`` pins), wheels only,
into a temporary directory renamed into place (:func:`runtime.libraries.install_atomically`). kiln's own source is
put on the environment's path by a ``.pth`` file, as its own editable install does. The environment is platform
code (the sandbox refuses it to apps, as it refuses kiln's own environment); apps get their packages from
``requirements.txt`` and ``libraries:`` (:mod:`runtime.libraries`), installed with the same interpreter.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kiln.errors import ConfigError
from kiln_platform import interpreters
from runtime import libraries

# What ``python -m runtime`` imports beyond the standard library (their own dependencies follow from metadata).
RUNTIME_DISTRIBUTIONS = ("grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "nats-py", "PyYAML",
                         "uvloop", "pyseccomp", "idna", "packaging", "gunicorn", "waitress",
                         # kiln_platform.grpcserver's metrics (the instance's health server imports them)
                         "prometheus-client",
                         # an instance's traces (kiln_platform.tracing, imported only when otlp_endpoint is set)
                         "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")
SOURCE_ROOT = pathlib.Path(__file__).resolve().parent.parent  # holds kiln/, kiln_platform/, runtime/
VENV_TIMEOUT_SECONDS = 120


def pins() -> tuple[str, ...]:
    """``name==version`` of every distribution the runtime needs, at the versions kiln runs with, sorted."""
    found: dict[str, str] = {}
    todo = list(RUNTIME_DISTRIBUTIONS)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(f"kiln's environment lacks {name}, which its runtime needs; reinstall kiln "
                              "(bash deploy/install.sh)") from None
        found[name] = dist.version
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return tuple(sorted(f"{name}=={version}" for name, version in found.items()))


def python_for(interpreter: interpreters.Interpreter, cache_dir: pathlib.Path) -> pathlib.Path:
    """The ``python`` that runs kiln's runtime on ``interpreter``: kiln's own, or a virtual environment of it holding
    the runtime's dependencies (installed on first use).

    Raises:
        ConfigError: the environment could not be made or its packages installed (pip's last line says why).
    """
    if interpreter.own:
        return pathlib.Path(sys.executable)
    return environment(interpreter, cache_dir) / "bin" / "python"


def environment(interpreter: interpreters.Interpreter, cache_dir: pathlib.Path) -> pathlib.Path:
    """The virtual environment of kiln's runtime for ``interpreter`` (see :func:`python_for`)."""
    wanted = pins()
    text = "\n".join([*wanted, str(interpreter.executable), str(SOURCE_ROOT)])
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    target = cache_dir / "runtimes" / f"{interpreter.name}-{key}"

    def fill(tmp: pathlib.Path) -> None:
        what = f"kiln's runtime for {interpreter.name} ({interpreter.executable})"
        try:
            done = subprocess.run([str(interpreter.executable), "-m", "venv", "--without-pip", str(tmp)],
                                  capture_output=True, text=True, timeout=VENV_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{what}: python -m venv did not finish within {VENV_TIMEOUT_SECONDS} s") from None
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ConfigError(f"{what}: could not make a virtual environment: {detail}")
        site = site_packages(tmp, interpreter)
        libraries.pip_install(str(interpreter.executable), site, wanted, deps=False, what=what)
        (site / "kiln-source.pth").write_text(f"{SOURCE_ROOT}\n")

    return libraries.install_atomically(target, fill)


def site_packages(venv: pathlib.Path, interpreter: interpreters.Interpreter) -> pathlib.Path:
    """The site-packages directory of a virtual environment of ``interpreter``."""
    return venv / "lib" / interpreter.name / "site-packages"


def publish(venv: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
    """A copy of ``venv`` under ``root`` that every user may read (not write), made once: with user isolation the
    app's user runs kiln's runtime from it, as it runs kiln's own installation, which is readable by all too. It
    holds no secret: only kiln's code and its public dependencies."""
    target = root / venv.name
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    tmp = root / f".publishing-{venv.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(venv, tmp, symlinks=True)
        for here, dirs, files in os.walk(tmp):
            for name in dirs:
                os.chmod(os.path.join(here, name), 0o755)
            for name in files:
                path = os.path.join(here, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not another manager's copy, made meanwhile
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
