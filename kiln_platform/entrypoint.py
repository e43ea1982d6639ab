"""``entrypoint`` of a Python 3 app.yaml: the command App Engine would run, read as the WSGI app it names.

App Engine's Python 3 runtime runs ``entrypoint`` (default ``gunicorn -b :$PORT main:app``) as a process that
serves HTTP on ``$PORT``. kiln serves apps as WSGI callables over NATS, so it reads the command for the one thing
that matters to it — which callable the server would load — and runs that callable in its own runtime. The forms
that name a WSGI app are understood, each with its own server's option parser where the server ships one:

- ``gunicorn [OPTIONS] MODULE[:APP]`` and ``python -m gunicorn …`` (gunicorn's own argument parser; ``APP`` is a
  name or a call of a factory with literal arguments, ``create_app("prod")``, as gunicorn allows; without ``:APP``
  gunicorn loads ``application``); ``--pythonpath``, ``--chdir`` and ``--env`` are honoured;
- ``uwsgi … --module MODULE[:APP]`` (``-w``, ``--wsgi``) or ``uwsgi … --wsgi-file FILE [--callable APP]``, with
  ``--chdir``, ``--pythonpath`` and ``--env``;
- ``waitress-serve [OPTIONS] [--call] MODULE:APP`` and ``python -m waitress …`` (waitress's own option parser).

Anything else (a shell pipeline, another server, an ASGI app's server) raises :class:`EntrypointError` naming the
forms kiln runs. :func:`parse` only reads the command (``kiln dev``, ``kiln deploy`` and the control plane check it
without the app); :func:`load` is the runtime's step that imports the app and returns the callable.
"""

from __future__ import annotations

import ast
import dataclasses
import getopt
import pkgutil
import posixpath
import re
import shlex
from collections.abc import Sequence
from typing import Any, NoReturn

DEFAULT_ENTRYPOINT = "gunicorn -b :$PORT main:app"  # App Engine's, when app.yaml has none

SUPPORTED_FORMS = ("gunicorn [OPTIONS] MODULE:APP (also python -m gunicorn; APP may be a factory call such as "
                   "create_app()), uwsgi --module MODULE:APP or uwsgi --wsgi-file FILE [--callable APP], "
                   "waitress-serve [--call] MODULE:APP (also python -m waitress)")
_SHELL = re.compile(r"^(&&|\|\||[;|&<>]|.*[`].*|\$\(.*)$")
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class EntrypointError(ValueError):
    """An entrypoint kiln cannot run; the message says why and names the forms it runs."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class WsgiTarget:
    """The WSGI callable an entrypoint names, and what its server would set up before loading it.

    ``attribute`` is a dotted attribute path of ``module`` (``None``: ``module`` itself is the full dotted name of
    the object, as waitress resolves a name without ``:``); ``args``/``kwargs`` are set when the object is a
    factory to call (``None``: use it as is). ``paths`` are directories of the app (relative, '/'-separated) to put
    first on ``sys.path``; ``env`` are variables the server would set.
    """

    server: str
    module: str
    attribute: str | None = "application"
    args: tuple[Any, ...] | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()
    paths: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def parse(command: str) -> WsgiTarget:
    """The WSGI app ``command`` would serve.

    Raises:
        EntrypointError: not a command kiln can run as a WSGI app.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise EntrypointError(f"cannot read the command ({exc})") from None
    if argv[:1] == ["exec"]:
        argv = argv[1:]
    if not argv:
        raise EntrypointError(f"the command is empty; kiln runs {SUPPORTED_FORMS}")
    for word in argv:
        if _SHELL.match(word):
            raise EntrypointError(f"{word!r}: kiln runs one WSGI app, not a shell command; it runs {SUPPORTED_FORMS}")
    program = posixpath.basename(argv[0])
    rest = argv[1:]
    if _PYTHON.match(program) and rest[:1] == ["-m"] and len(rest) > 1:
        program, rest = {"gunicorn": "gunicorn", "waitress": "waitress-serve"}.get(rest[1], f"-m {rest[1]}"), rest[2:]
    if program == "gunicorn":
        return _gunicorn(rest)
    if program in ("uwsgi", "uwsgi-core"):
        return _uwsgi(rest)
    if program == "waitress-serve":
        return _waitress(rest)
    raise EntrypointError(f"kiln cannot run {program!r}: it serves WSGI apps named by {SUPPORTED_FORMS}")


def _gunicorn(argv: list[str]) -> WsgiTarget:
    from gunicorn.config import Config  # gunicorn's own option table: which options take values, their spellings

    parser = Config(usage="gunicorn [OPTIONS] [APP_MODULE]", prog="gunicorn").parser()

    def refuse(message: str) -> NoReturn:
        raise EntrypointError(f"gunicorn: {message}")

    parser.error = refuse
    try:
        ns = parser.parse_args(argv)
    except SystemExit:  # --help or --version
        raise EntrypointError("gunicorn: --help and --version print and exit; name the app (MODULE:APP)") from None
    worker = str(ns.worker_class or "")
    if "uvicorn" in worker.lower() or "asgi" in worker.lower():
        raise EntrypointError(f"gunicorn --worker-class {worker}: that serves an ASGI app; kiln runs WSGI apps "
                              "(drop the option to serve a WSGI app with gunicorn's default worker)")
    if len(ns.args) != 1:
        raise EntrypointError("gunicorn: name exactly one app, as MODULE:APP (kiln does not read gunicorn's config "
                              f"file for it), got {' '.join(ns.args) or 'none'}")
    module, _, expression = ns.args[0].partition(":")
    attribute, args, kwargs = _call_or_name(expression or "application", ns.args[0])
    paths = [*_split(ns.pythonpath or ""), *([ns.chdir] if ns.chdir else [])]
    return WsgiTarget(server="gunicorn", module=_module(module), attribute=attribute, args=args, kwargs=kwargs,
                      paths=_app_paths(paths), env=_env(ns.raw_env or [], "gunicorn --env"))


def _call_or_name(expression: str, spec: str) -> tuple[str, tuple[Any, ...] | None, tuple[tuple[str, Any], ...]]:
    """gunicorn's rule: APP is a name, or a call of a name with literal arguments."""
    try:
        node = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        raise EntrypointError(f"{spec!r}: APP must be a name or a factory call such as create_app()") from None
    if isinstance(node, ast.Name):
        return node.id, None, ()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        try:
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = tuple((k.arg, ast.literal_eval(k.value)) for k in node.keywords if k.arg is not None)
        except ValueError:
            raise EntrypointError(f"{spec!r}: a factory's arguments must be literals (strings, numbers…)") from None
        if len(kwargs) != len(node.keywords):
            raise EntrypointError(f"{spec!r}: a factory's arguments must be literals, not **mappings")
        return node.func.id, args, kwargs
    raise EntrypointError(f"{spec!r}: APP must be a simple name or a call of one, such as app or create_app()")


_UWSGI_VALUE = {"module": "module", "w": "module", "wsgi": "module", "wsgi-file": "file", "file": "file",
                "callable": "callable", "chdir": "chdir", "pythonpath": "path", "python-path": "path", "pp": "path",
                "env": "env", "mount": "mount", "ini": "config", "yaml": "config", "xml": "config", "json": "config"}


def _uwsgi(argv: list[str]) -> WsgiTarget:
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-"):
            continue  # a value of an option kiln has no use for (uwsgi's options mostly take one)
        name, eq, value = word.lstrip("-").partition("=")
        kind = _UWSGI_VALUE.get(name)
        if kind is None:
            continue
        if not eq:
            if i >= len(argv):
                raise EntrypointError(f"uwsgi: {word} needs a value")
            value, i = argv[i], i + 1
        found.setdefault(kind, []).append(value)
    if "mount" in found:
        raise EntrypointError("uwsgi --mount: kiln serves one app per version; use --module MODULE:APP")
    modules, files = found.get("module", []), found.get("file", [])
    if len(modules) + len(files) != 1:
        raise EntrypointError("uwsgi: name the app with exactly one --module MODULE:APP or --wsgi-file FILE (kiln "
                              "does not read uwsgi's config files for it)")
    paths = [*found.get("chdir", []), *found.get("path", [])]
    callable_name = (found.get("callable") or ["application"])[-1]
    if modules:
        module, _, attribute = modules[0].partition(":")
        module = module.removesuffix(".py").replace("/", ".")
    else:
        file = posixpath.normpath(files[0])
        if not file.endswith(".py"):
            raise EntrypointError(f"uwsgi --wsgi-file {files[0]}: must be a Python file of the app")
        parent, module = posixpath.split(file[:-3])
        paths.append(parent or ".")
        attribute = ""
    attribute = attribute or callable_name
    if not _IDENTIFIER.match(attribute):
        raise EntrypointError(f"uwsgi: {attribute!r} is not a name of the app's module")
    return WsgiTarget(server="uwsgi", module=_module(module), attribute=attribute, paths=_app_paths(paths),
                      env=_env(found.get("env", []), "uwsgi --env"))


def _waitress(argv: list[str]) -> WsgiTarget:
    from waitress.adjustments import Adjustments  # waitress's own option table (which options take values)

    try:
        kw, args = Adjustments.parse_args(argv)
    except getopt.GetoptError as exc:
        raise EntrypointError(f"waitress-serve: {exc}") from None
    if len(args) != 1:
        raise EntrypointError(f"waitress-serve: name exactly one app, as MODULE:APP, got {' '.join(args) or 'none'}")
    module, colon, attribute = args[0].partition(":")
    if colon and not _IDENTIFIER.match(attribute):
        raise EntrypointError(f"waitress-serve {args[0]}: APP must be a dotted name (add --call for a factory)")
    return WsgiTarget(server="waitress", module=_module(module), attribute=attribute if colon else None,
                      args=() if kw["call"] else None)


def _module(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise EntrypointError(f"{name!r} is not a module name (MODULE:APP, e.g. main:app)")
    return name


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def _app_paths(paths: Sequence[str]) -> tuple[str, ...]:
    out = []
    for path in paths:
        normal = posixpath.normpath(path)
        if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
            raise EntrypointError(f"{path!r}: kiln loads the app from its own directory; give a directory inside "
                                  "it, relative to app.yaml")
        out.append(normal)
    return tuple(out)


def _env(pairs: Sequence[str], option: str) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise EntrypointError(f"{option} {pair!r}: must be KEY=VALUE")
        out.append((key, value))
    return tuple(out)


def load(target: WsgiTarget) -> Any:
    """Import the object ``target`` names (its paths already on ``sys.path``) and call it if it is a factory."""
    name = target.module if target.attribute is None else f"{target.module}:{target.attribute}"
    found = pkgutil.resolve_name(name)
    if target.args is not None:
        found = found(*target.args, **dict(target.kwargs))
    if not callable(found):
        raise TypeError(f"the entrypoint's app {name} is {type(found).__name__}, not a WSGI callable")
    return found
