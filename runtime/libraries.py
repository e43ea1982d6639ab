"""A version's Python environment: the platform libraries app.yaml selects, and its requirements.txt.

App Engine's Python runtime offered third-party libraries by name and version
(``libraries:`` in app.yaml), the only code besides the standard library whose
C extensions an app could load; anything else the app vendored in its own
directory. kiln keeps that model and adds ``requirements.txt``:

- :data:`CATALOG` lists the libraries kiln provides, each version pinned to
  exact wheels (with its dependencies, so the set is reproducible). They are
  installed once per host into a shared cache, owned by the platform; their
  C extensions may load.
- ``requirements.txt`` is installed at deploy time into that version's own
  directory (keyed by the file's hash), never into the platform's environment.
  Only wheels are used (``--only-binary :all:``), so installing runs none of
  the app's code; only plain requirement lines are accepted (no options, URLs
  or paths). Packages from it are the app's code: their C extensions are
  refused like any other app-shipped native code.

Everything is installed into a temporary directory and renamed into place, so
a failed or concurrent install never leaves a half-filled environment. pip
compiles the modules as it installs them: instances never write bytecode (the
sandbox forbids writes), so without it every cold start would compile the
library from source (Flask: about half a second here).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from kiln_platform import appyaml, interpreters
from kiln.errors import ConfigError

# name -> version -> the exact distributions installed for it (the library and its dependencies).
CATALOG: dict[str, dict[str, tuple[str, ...]]] = {
    "django": {"5.2": ("Django==5.2.8", "asgiref==3.10.0", "sqlparse==0.5.3")},
    "flask": {"3.1": ("Flask==3.1.3", "Werkzeug==3.1.9", "Jinja2==3.1.6", "MarkupSafe==3.0.3",
                      "itsdangerous==2.2.0", "click==8.3.1", "blinker==1.9.0")},
    "jinja2": {"3.1": ("Jinja2==3.1.6", "MarkupSafe==3.0.3")},
    "lxml": {"6.0": ("lxml==6.0.2",)},
    "markupsafe": {"3.0": ("MarkupSafe==3.0.3",)},
    "numpy": {"2.3": ("numpy==2.3.5",)},
    "PIL": {"12.0": ("pillow==12.0.0",), "13.0": ("pillow==13.0.0",)},
    "pytz": {"2026.1": ("pytz==2026.1",)},
    "six": {"1.17": ("six==1.17.0",)},
    "webob": {"1.8": ("WebOb==1.8.9",)},
    "werkzeug": {"3.1": ("Werkzeug==3.1.9", "MarkupSafe==3.0.3")},
    "yaml": {"6.0": ("PyYAML==6.0.3",)},
}

# Google's App Engine SDK (``google.appengine``: ndb, db, deferred, the API clients) by the version an app may
# ask for, pinned with its whole dependency set. The packages kiln's own runtime also loads (grpcio, protobuf,
# cryptography, Pillow…) are pinned to kiln's versions: the instance has loaded those before the app's paths.
GAE_SDK: dict[str, tuple[str, ...]] = {
    # Google's own samples pin 1.1.4 (appengine/standard_python3/bundled-services/mail/flask).
    "1.1.4": (
        "appengine-python-standard==1.1.4",
        "attrs==26.1.0",
        "certifi==2026.10.19.post1",
        "cffi==2.1.1",
        "charset-normalizer==3.5.3",
        "cryptography==50.0.2",
        "frozendict==2.5.1",
        "google-auth==2.63.1",
        "idna==3.21",
        "mock==5.2.0",
        "pillow==13.0.0",
        "protobuf==7.36.2",
        "pyasn1==0.6.5",
        "pyasn1_modules==0.4.2",
        "pycparser==3.12",
        "pytz==2026.6",
        "requests==2.34.2",
        "ruamel.yaml==0.19.1",
        "six==1.17.0",
        "urllib3==1.26.20",
    ),
    "3.1.0": (
        "appengine-python-standard==3.1.0",
        "attrs==26.1.0",
        "certifi==2026.10.19.post1",
        "cffi==2.1.1",
        "charset-normalizer==3.5.3",
        "cryptography==50.0.2",
        "frozendict==2.5.1",
        "google-api-core==2.44.0",
        "google-auth==2.63.1",
        "google-cloud-tasks==2.26.0",
        "googleapis-common-protos==1.76.0",
        "grpc-google-iam-v1==0.14.6",
        "grpcio==1.85.1",
        "grpcio-status==1.85.1",
        "grpcio-tools==1.85.1",
        "idna==3.21",
        "legacy-cgi==2.6.4",
        "mock==5.2.0",
        "opentelemetry-api==1.45.3",
        "pillow==13.0.0",
        "proto-plus==1.29.0",
        "protobuf==7.36.2",
        "pyasn1==0.6.5",
        "pyasn1_modules==0.4.2",
        "pycparser==3.12",
        "pytz==2026.6",
        "requests==2.34.2",
        "rsa==4.9.1",
        "ruamel.yaml==0.19.1",
        "setuptools==84.2.1",
        "six==1.17.0",
        "typing_extensions==4.16.0",
        "urllib3==1.26.20",
    ),
}

INSTALL_TIMEOUT_SECONDS = 600
# The SDK's distribution name, as requirements.txt names it (compared canonicalised: "appengine_python_standard"…).
GAE_SDK_DISTRIBUTION = "appengine-python-standard"
# The version a ``runtime: python27`` app gets: App Engine bundled its SDK with that runtime.
GAE_SDK_BUNDLED = "3.1.0"


@dataclasses.dataclass(frozen=True)
class Environment:
    """Where a version's code beyond its own directory comes from."""

    library_dirs: tuple[pathlib.Path, ...] = ()  # platform libraries: C extensions allowed
    requirements_dir: pathlib.Path | None = None  # the app's requirements.txt: app code

    def runtime_args(self) -> list[str]:
        """Options of ``python -m runtime`` that put this environment on the instance's path."""
        args = []
        if self.library_dirs:
            args += ["--library-path", os.pathsep.join(str(d) for d in self.library_dirs)]
        if self.requirements_dir is not None:
            args += ["--requirements-path", str(self.requirements_dir)]
        return args


def resolve(name: str, version: str) -> tuple[str, ...]:
    """The pinned distributions of a catalogued library.

    Raises:
        ConfigError: kiln does not provide that library or version; the message lists what it does.
    """
    versions = CATALOG.get(name)
    if versions is None:
        raise ConfigError(f"libraries: kiln does not provide {name!r}; it provides {', '.join(sorted(CATALOG, key=str.lower))} "
                          "(vendor other pure-Python packages in the app directory, or list them in requirements.txt)")
    if version == "latest":
        version = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    if version not in versions:
        raise ConfigError(f"libraries: {name} {version!r} is not provided; versions: {', '.join(sorted(versions))}, "
                          "latest")
    return versions[version]


def read_requirements(path: pathlib.Path) -> list[str]:
    """The requirement lines of ``requirements.txt``, validated.

    Raises:
        ConfigError: a line is an option, a URL or path, or not a valid requirement; the message names it.
    """
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        where = f"{path.name}:{number}"
        if line.startswith("-"):
            raise ConfigError(f"{where}: options are not allowed ({line.split()[0]}); list plain requirements "
                              "such as 'requests==2.32.3'")
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise ConfigError(f"{where}: not a valid requirement: {exc}") from None
        if req.url:
            raise ConfigError(f"{where}: URLs and paths are not allowed ({req.url}); name a package on the index")
        out.append(str(req))
    return out


def sdk_requirement(req_file: pathlib.Path, lines: list[str]) -> tuple[str | None, list[str]]:
    """The SDK version ``requirements.txt`` asks for (the newest pinned one its specifier admits), and its other lines.

    Raises:
        ConfigError: the file names the SDK with a specifier no pinned version satisfies (file, line, versions).
    """
    wanted = canonicalize_name(GAE_SDK_DISTRIBUTION)
    for index, line in enumerate(lines):
        req = Requirement(line)
        if canonicalize_name(req.name) != wanted:
            continue
        admitted = [v for v in GAE_SDK if req.specifier.contains(v, prereleases=True)]
        if not admitted:
            number = _line_number(req_file, req.name)
            raise ConfigError(f"{req_file.name}:{number}: kiln does not provide {GAE_SDK_DISTRIBUTION}"
                              f"{req.specifier}; supported versions: {', '.join(GAE_SDK)} (e.g. "
                              f"'{GAE_SDK_DISTRIBUTION}=={max(GAE_SDK, key=_version_key)}')")
        return max(admitted, key=_version_key), lines[:index] + lines[index + 1:]
    return None, lines


def sdk_dir(version: str, cache_dir: pathlib.Path, *,
            python: interpreters.Interpreter | None = None) -> pathlib.Path:
    """Google's App Engine SDK ``version`` with its pinned dependencies, installed once per host (and Python)."""
    return _install(sdk_target(version, cache_dir, python=python), GAE_SDK[version], deps=False,
                    what=f"{GAE_SDK_DISTRIBUTION} {version}", python=python)


def sdk_target(version: str, cache_dir: pathlib.Path, *,
               python: interpreters.Interpreter | None = None) -> pathlib.Path:
    """Where :func:`sdk_dir` installs the SDK ``version`` for ``python`` (kiln's own by default)."""
    key = _cache_key(python or interpreters.own(), GAE_SDK[version])
    return cache_dir / "libraries" / f"{GAE_SDK_DISTRIBUTION}-{key}"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _line_number(req_file: pathlib.Path, name: str) -> int:
    wanted = canonicalize_name(name)
    for number, raw in enumerate(req_file.read_text().splitlines(), 1):
        found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", raw)
        if found and canonicalize_name(found.group(1)) == wanted:
            return number
    return 0


def prepare(app_dir: pathlib.Path, config: appyaml.AppConfig, cache_dir: pathlib.Path, *,
            python: interpreters.Interpreter | None = None) -> Environment:
    """Install what the version needs (once per host for each library and each requirements.txt), with the
    interpreter its instances run on (default: kiln's own), so that wheels and environment markers are that Python's.

    Raises:
        ConfigError: an unknown library, an invalid requirements.txt, or pip could not install it.
    """
    python = python or interpreters.own()
    library_dirs = []
    for lib in config.libraries:
        pins = resolve(lib.name, lib.version)
        key = _cache_key(python, pins)
        library_dirs.append(_install(cache_dir / "libraries" / f"{lib.name}-{key}", pins, deps=False,
                                     what=f"library {lib.name} {lib.version}", python=python))
    requirements_dir = None
    req_file = app_dir / "requirements.txt"
    lines = read_requirements(req_file) if req_file.is_file() else []
    sdk_version, lines = sdk_requirement(req_file, lines)
    if sdk_version is None and config.runtime == "python27":
        sdk_version = GAE_SDK_BUNDLED
    if sdk_version is not None:
        library_dirs.append(sdk_dir(sdk_version, cache_dir, python=python))
    if lines:
        requirements_dir = _install(cache_dir / "requirements" / _cache_key(python, lines), tuple(lines),
                                    deps=True, what="requirements.txt", python=python)
    return Environment(tuple(library_dirs), requirements_dir)


def _cache_key(python: interpreters.Interpreter, requirements: Sequence[str]) -> str:
    """What an installed set depends on: its requirements and the Python (wheels and markers are per version)."""
    text = "\n".join([*requirements, f"python{python.version[0]}.{python.version[1]}",
                      sys.version if python.own else str(python.executable)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _install(target: pathlib.Path, requirements: tuple[str, ...], *, deps: bool, what: str,
             python: interpreters.Interpreter | None = None) -> pathlib.Path:
    executable = str((python or interpreters.own()).executable)
    return install_atomically(target, lambda tmp: pip_install(executable, tmp, requirements, deps=deps, what=what))


def install_atomically(target: pathlib.Path, fill: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """``target``, filled once by ``fill`` (given an empty directory beside it, renamed into place when it returns),
    so a failed or concurrent install never leaves a half-filled directory."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".install.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():  # another manager installed it while this one waited
            return target
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".installing-", dir=target.parent))
        try:
            fill(tmp)
            os.chmod(tmp, 0o700)  # the manager's user reads it; an isolated app gets its own copy
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def pip_install(python: str, target: pathlib.Path, requirements: Sequence[str], *, deps: bool, what: str) -> None:
    """Install wheels (only) of ``requirements`` into ``target`` with the interpreter ``python``'s pip.

    Raises:
        ConfigError: pip failed or did not finish in time; the message names ``what`` and pip's last line.
    """
    cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
           "--root-user-action", "ignore", "--only-binary", ":all:", "--target", str(target),
           *([] if deps else ["--no-deps"]), *requirements]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{what}: pip did not finish within {INSTALL_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"{what}: could not install {' '.join(requirements)}: {detail}")
