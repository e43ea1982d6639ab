"""A version's Python environment: the platform libraries app.yaml selects, and its requirements.txt.

App Engine's Python runtime offered third-party libraries by name and version
(``libraries:`` in app.yaml), the only code besides the standard library whose
C extensions an app could load; anything else the app vendored in its own
directory. kiln keeps that model and adds ``requirements.txt``:

- :data:`CATALOG` lists the libraries kiln provides, each version pinned to
  exact wheels (with its dependencies, so the set is reproducible). They are
  installed once per host into a shared cache, owned by the platform; their
  C extensions may load. App Engine's own names and versions of its libraries
  resolve to these (:data:`APP_ENGINE_VERSIONS`); what Python 3's standard
  library holds needs nothing, and what kiln cannot provide is refused naming
  the alternative. A library PyPI has only as source (webapp2's Python 3
  release) is built into a wheel once per host from its sdist, pinned by hash.
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
    "setuptools": {"84.2": ("setuptools==84.2.1",)},
    "six": {"1.17": ("six==1.17.0",)},
    # webapp2's Python 3 release; PyPI has it only as source (see SOURCE_BUILDS). It imports ``cgi``, which
    # Python 3.13 dropped: legacy-cgi provides it there, as WebOb itself requires.
    "webapp2": {"3.0": ("webapp2==3.0.0b1", "WebOb==1.8.9", "six==1.17.0",
                        'legacy-cgi==2.6.4; python_version >= "3.13"')},
    "webob": {"1.8": ("WebOb==1.8.9", 'legacy-cgi==2.6.4; python_version >= "3.13"')},
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

# App Engine's Python 2.7 runtime offered its libraries under these names and versions. kiln serves each of them
# with the newest Python 3 release it pins of that library (an app listing webob "1.1.1" gets WebOb 1.8): apps
# written for Python 3 syntax already use those releases' APIs, and the old ones have no Python 3 build.
APP_ENGINE_VERSIONS: dict[str, tuple[str, ...]] = {
    "django": ("1.2", "1.3", "1.4", "1.5", "1.9", "1.11"),
    "jinja2": ("2.6",),
    "lxml": ("2.3", "2.3.5", "3.7.3"),
    "markupsafe": ("0.15", "0.23"),
    "numpy": ("1.6.1",),
    "PIL": ("1.1.7",),
    "pytz": ("2016.4", "2017.2", "2017.3"),
    "setuptools": ("0.6c11", "36.6.0"),
    "six": ("1.9.0", "1.12.0"),
    "webapp2": ("2.3", "2.5.1", "2.5.2"),
    "webob": ("1.1.1", "1.2.3"),
    "werkzeug": ("0.11.10",),
    "yaml": ("3.10",),
}

# App Engine's libraries that Python 3's standard library now holds (ssl, concurrent.futures, enum): there is
# nothing to install, and the app imports them as it did.
STANDARD_LIBRARY: dict[str, tuple[str, ...]] = {
    "enum": ("0.9.23",),
    "futures": ("3.0.5",),
    "ssl": ("2.7", "2.7.11", "2.7.16"),
}

# App Engine's libraries that kiln cannot provide, each with what to use instead.
NOT_PROVIDED: dict[str, str] = {
    "backports.ssl_match_hostname": "Python 3's ssl module checks host names itself (ssl.create_default_context)",
    "crcmod": "use zlib.crc32 or binascii.crc32 from the standard library, or vendor crcmod's pure-Python modules",
    "endpoints": "Cloud Endpoints Frameworks are not part of kiln; serve JSON from a webapp2 or WSGI handler",
    "grpcio": "apps cannot load kiln's own gRPC runtime; call kiln's services through google.appengine or kiln.api",
    "matplotlib": "not in kiln's catalogue; draw charts in the browser, or with PIL",
    "MySQLdb": "kiln has no Cloud SQL; use the datastore, or a pure-Python MySQL client (PyMySQL) in "
               "requirements.txt with --urlfetch-allow-internal for the server's network",
    "protobuf": "list protobuf in requirements.txt (its pure-Python implementation serves), or use google.appengine",
    "protorpc": "ProtoRPC is not part of kiln; serve JSON from a webapp2 or WSGI handler",
    "pycrypto": "PyCrypto has no Python 3 build and its successors load native code through ctypes, which the "
                "sandbox refuses; use hashlib, hmac and secrets from the standard library, or a pure-Python "
                "cipher package (such as pyaes) in requirements.txt",
    "PyAMF": "PyAMF has no Python 3 release; serve JSON instead of AMF",
    "ujson": "use the standard library's json",
}

# Distributions PyPI has only as source, by pin: the sdist's sha256 (a changed upload is refused). Each is built
# into a wheel once per host and then installed like any other pin.
SOURCE_BUILDS: dict[str, str] = {
    "webapp2==3.0.0b1": "4215a2ab407f0e0ad1c1ec134ff5bebcdfd7995b0ce99c1cc9cc9ba28a6814ce",
}

# The build backend pip installs into the isolated environment that builds them, pinned.
BUILD_CONSTRAINTS = ("setuptools==84.2.1",)

INSTALL_TIMEOUT_SECONDS = 600
# The SDK's distribution name, as requirements.txt names it (compared canonicalised: "appengine_python_standard"…).
GAE_SDK_DISTRIBUTION = "appengine-python-standard"
# The version a ``runtime: python27`` app gets: App Engine bundled its SDK with that runtime.
GAE_SDK_BUNDLED = "3.1.0"
# What the SDK kiln bundles with python27 apps leaves out: Pillow, which the SDK itself needs only for its local
# images stub (kiln's images service decodes images), and which App Engine's python27 gave an app only when
# ``libraries:`` named PIL. A Python 3 app that lists the SDK in requirements.txt gets it all, as pip would.
GAE_SDK_NOT_BUNDLED = frozenset({"pillow"})


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
    """The pinned distributions of a catalogued library (none for what the standard library holds).

    App Engine's own versions of a library (:data:`APP_ENGINE_VERSIONS`) resolve to the newest release kiln pins.

    Raises:
        ConfigError: kiln does not provide that library or version; the message lists what it does, or names
            what to use instead.
    """
    if name in NOT_PROVIDED:
        raise ConfigError(f"libraries: kiln cannot provide {name!r}: {NOT_PROVIDED[name]}")
    if name in STANDARD_LIBRARY:
        if version != "latest" and version not in STANDARD_LIBRARY[name]:
            raise ConfigError(f"libraries: {name} {version!r} is not one of App Engine's versions "
                              f"({', '.join(STANDARD_LIBRARY[name])}, latest); Python 3's standard library has it")
        return ()
    versions = CATALOG.get(name)
    if versions is None:
        raise ConfigError(f"libraries: kiln does not provide {name!r}; it provides "
                          f"{', '.join(sorted(CATALOG, key=str.lower))} "
                          "(vendor other pure-Python packages in the app directory, or list them in requirements.txt)")
    newest = max(versions, key=_version_key)
    app_engine = APP_ENGINE_VERSIONS.get(name, ())
    if version == "latest" or version in app_engine:
        version = newest
    if version not in versions:
        also = f" (App Engine's {', '.join(app_engine)} mean {newest})" if app_engine else ""
        raise ConfigError(f"libraries: {name} {version!r} is not provided; versions: {', '.join(sorted(versions))}, "
                          f"latest{also}")
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


def sdk_pins(version: str, *, bundled: bool = False) -> tuple[str, ...]:
    """The distributions installed for the SDK ``version``: all its pins, or for the SDK kiln bundles with python27
    apps, those less :data:`GAE_SDK_NOT_BUNDLED`."""
    pins = GAE_SDK[version]
    if not bundled:
        return pins
    return tuple(p for p in pins if Requirement(p).name.lower() not in GAE_SDK_NOT_BUNDLED)


def sdk_dir(version: str, cache_dir: pathlib.Path, *, python: interpreters.Interpreter | None = None,
            bundled: bool = False) -> pathlib.Path:
    """Google's App Engine SDK ``version`` with its pinned dependencies, installed once per host (and Python)."""
    return _install(sdk_target(version, cache_dir, python=python, bundled=bundled), sdk_pins(version, bundled=bundled),
                    deps=False, what=f"{GAE_SDK_DISTRIBUTION} {version}", python=python)


def sdk_target(version: str, cache_dir: pathlib.Path, *, python: interpreters.Interpreter | None = None,
               bundled: bool = False) -> pathlib.Path:
    """Where :func:`sdk_dir` installs the SDK ``version`` for ``python`` (kiln's own by default)."""
    key = _cache_key(python or interpreters.own(), sdk_pins(version, bundled=bundled))
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
        if not pins:
            continue  # the standard library has it
        target = cache_dir / "libraries" / f"{lib.name}-{_cache_key(python, pins)}"
        if not target.is_dir():
            pins = tuple(str(built_wheel(cache_dir / "wheels", pin)) if pin in SOURCE_BUILDS else pin for pin in pins)
        library_dirs.append(_install(target, pins, deps=False, what=f"library {lib.name} {lib.version}",
                                     python=python))
    requirements_dir = None
    req_file = app_dir / "requirements.txt"
    lines = read_requirements(req_file) if req_file.is_file() else []
    sdk_version, lines = sdk_requirement(req_file, lines)
    bundled = sdk_version is None and config.runtime == "python27"
    if bundled:
        sdk_version = GAE_SDK_BUNDLED
    if sdk_version is not None:
        library_dirs.append(sdk_dir(sdk_version, cache_dir, python=python, bundled=bundled))
    if lines:
        try:
            requirements_dir = _install(cache_dir / "requirements" / _cache_key(python, lines), tuple(lines),
                                        deps=True, what="requirements.txt", python=python)
        except ConfigError as exc:
            raise ConfigError(_where_pip_failed(req_file, lines, str(exc), python)) from None
    return Environment(tuple(library_dirs), requirements_dir)


def check_requirements(req_file: pathlib.Path, version: tuple[int, int], *,
                       search: interpreters.Search | None = None) -> None:
    """What ``kiln deploy`` checks of ``requirements.txt`` before uploading, for the Python ``version`` the hosts
    will run it on: the lines :func:`read_requirements` accepts, an SDK version kiln provides
    (:func:`sdk_requirement`), and that pip can resolve the rest as the hosts' :func:`prepare` installs them (wheels
    only, dependencies included), without installing anything.

    pip is that of a Python ``version`` on this machine when there is one (the same lookup as the hosts'), so
    environment markers and wheel tags are exactly the hosts'. Without one it is kiln's own pip with
    ``--python-version`` (wheel tags and ``Requires-Python`` of ``version``): the file's own markers are evaluated
    for ``version`` here, but pip evaluates its dependencies' markers for kiln's Python. pip uses its own
    configuration (``PIP_INDEX_URL``, ``pip.conf``…), so the check asks the index the hosts will use only when this
    machine's pip is configured as theirs.

    Raises:
        ConfigError: a line kiln refuses, an SDK version it does not provide, or what pip could not resolve — each
            led by the file and line, with the fix.
    """
    lines = read_requirements(req_file)
    _, lines = sdk_requirement(req_file, lines)
    own = interpreters.own()
    local = own if version == own.version else interpreters.lookup(version, search or interpreters.Search.from_env())
    options = ["--dry-run", "--ignore-installed"]
    if local is None:
        environment = {"python_version": f"{version[0]}.{version[1]}",
                       "python_full_version": f"{version[0]}.{version[1]}.0"}
        lines = [_without_marker(req) for req in map(Requirement, lines)
                 if req.marker is None or req.marker.evaluate(environment)]
        options += ["--python-version", f"{version[0]}.{version[1]}"]
    if not lines:
        return
    python = local or interpreters.Interpreter(version, own.executable)
    with tempfile.TemporaryDirectory(prefix="kiln-requirements-") as tmp:
        try:
            pip_install(str((local or own).executable), pathlib.Path(tmp), lines, deps=True, what="requirements.txt",
                        options=options)
        except ConfigError as exc:
            message = _where_pip_failed(req_file, lines, str(exc), python)
            if local is None:
                name, mine = python.name, f"{own.version[0]}.{own.version[1]}"
                message += (f"; there is no {name} on this machine, so kiln's Python {mine} checked it, reading the "
                            f"dependencies' environment markers for {mine}: install {name} here for an exact check, "
                            "or skip it with kiln deploy --skip-requirements-check")
            raise ConfigError(message) from None


def _without_marker(req: Requirement) -> str:
    req.marker = None
    return str(req)


def _where_pip_failed(req_file: pathlib.Path, lines: Sequence[str], message: str,
                      python: interpreters.Interpreter) -> str:
    """pip's failure for ``requirements.txt``, led by the file and line of the requirement pip names, and the fix."""
    detail = message.rpartition(": ")[2]
    for line in lines:
        name = Requirement(line).name
        if re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", detail, re.IGNORECASE):
            number = _line_number(req_file, name)
            version = f"{python.version[0]}.{python.version[1]}"
            return (f"{req_file.name}:{number}: pip could not install {line!r} for Python {version}: {detail} "
                    "(kiln installs wheels only: pick a version with a wheel for this Python on the package index, "
                    "or vendor a pure-Python copy in the app's directory)")
    return message


def _cache_key(python: interpreters.Interpreter, requirements: Sequence[str]) -> str:
    """What an installed set depends on: its requirements and the Python (wheels and markers are per version)."""
    text = "\n".join([*requirements, f"python{python.version[0]}.{python.version[1]}",
                      sys.version if python.own else str(python.executable)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def built_wheel(wheels_dir: pathlib.Path, pin: str) -> pathlib.Path:
    """The wheel of a :data:`SOURCE_BUILDS` pin, built once per host from its sdist (whose sha256 must match).

    pip downloads the sdist, checks its hash and builds it in an isolated environment with the pinned
    :data:`BUILD_CONSTRAINTS`; nothing from pip's cache is used, so the wheel comes from the checked sdist. The
    wheels built are pure Python (``py3-none-any``): one serves every interpreter.

    Raises:
        ConfigError: the download, the hash check or the build failed; the message says which.
    """
    sha256 = SOURCE_BUILDS[pin]
    name, version = pin.split("==")

    def build(tmp: pathlib.Path) -> None:
        requirement, constraints = tmp / ".requirement.txt", tmp / ".build-constraints.txt"
        requirement.write_text(f"{pin} --hash=sha256:{sha256}\n")
        constraints.write_text("".join(f"{c}\n" for c in BUILD_CONSTRAINTS))
        _pip_wheel(["--no-deps", "--no-cache-dir", "--no-binary", name, "--require-hashes",
                    "--build-constraint", str(constraints), "--wheel-dir", str(tmp), "-r", str(requirement)],
                   what=f"{name} {version}: building its wheel from the sdist (sha256 {sha256})")
        requirement.unlink()
        constraints.unlink()

    target = install_atomically(wheels_dir / f"{name}-{version}-{sha256[:16]}", build)
    wheels = sorted(target.glob("*.whl"))
    if len(wheels) != 1:
        raise ConfigError(f"{name} {version}: {target} should hold one wheel, holds {len(wheels)}; remove it")
    return wheels[0]


def _pip_wheel(args: list[str], *, what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-input", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{what}: pip did not finish within {INSTALL_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["(no output)"])[-1].strip()
        got = re.search(r"^\s*Got\s+([0-9a-f]{64})$", done.stderr, re.MULTILINE)
        if "DO NOT MATCH THE HASHES" in done.stderr and got:
            detail = f"the downloaded file's sha256 is {got[1]}, not the pinned one: refused (the upload changed)"
        raise ConfigError(f"{what}: {detail}")


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


def pip_install(python: str, target: pathlib.Path, requirements: Sequence[str], *, deps: bool, what: str,
                options: Sequence[str] = ()) -> None:
    """Install wheels (only) of ``requirements`` into ``target`` with the interpreter ``python``'s pip (with
    ``options`` too, e.g. ``--dry-run``).

    Raises:
        ConfigError: pip failed or did not finish in time; the message names ``what`` and pip's last line.
    """
    cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
           "--root-user-action", "ignore", "--only-binary", ":all:", "--target", str(target),
           *([] if deps else ["--no-deps"]), *options, *requirements]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{what}: pip did not finish within {INSTALL_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        # pip names the requirement a missing dependency came from on an earlier line (pip 24 not on the last one).
        parent = re.search(r"the requirement \S+ \(from (?!versions:)([^)]+)\)", done.stderr)
        if parent and "(from " not in detail:
            detail += f" (from {parent[1]})"
        raise ConfigError(f"{what}: could not install {' '.join(requirements)}: {detail}")
