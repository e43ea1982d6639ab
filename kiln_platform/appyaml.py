"""The ``app.yaml`` model: parse and validate an App Engine Python app's configuration.

Every field App Engine documents for the Python runtime's ``app.yaml`` is
parsed into frozen dataclasses and checked. Any mistake raises
:class:`AppYamlError` naming the file, the line and the field, e.g.::

    app.yaml:12: handlers[2].login: must be one of optional, required, admin, got 'root'

Runtimes, in App Engine's two styles, which one file may not mix (Google's
``appinfo`` model and its deploy rules are the reference):

- ``python27`` (the first generation): ``api_version: 1``, ``threadsafe`` and
  ``handlers`` naming a WSGI app (``module.app``) or a CGI script (``file.py``);
  ``libraries`` select platform libraries. kiln runs it on its own Python 3.
- ``python3NN`` (the second generation; kiln runs ``python311`` and newer, each on
  the Python it names, :mod:`runtime.interpreters`): the app is the WSGI callable
  ``entrypoint`` names (default ``gunicorn -b :$PORT main:app``,
  :mod:`kiln_platform.entrypoint`); handlers are static or ``script: auto``, and
  any request no handler matches goes to the app, as on App Engine;
  ``app_engine_apis: true`` turns on the bundled services.

Line numbers come from PyYAML's node marks: the file is parsed with a safe
loader whose mappings and sequences remember where each item started.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, cast

import yaml

from kiln.errors import ConfigError
from kiln_platform import entrypoint as entrypoints

MAX_HANDLERS = 100
RUNTIME_RE = re.compile(r"^python(27|3(\d{1,2}))$")
# The oldest Python 3 runtime kiln runs (its runtime needs 3.11); App Engine has ended support for the older ones.
MIN_PYTHON3 = (3, 11)
AUTO_SCRIPT = "auto"  # a Python 3 handler: the request goes to the entrypoint's app
WSGI_SCRIPT_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
DURATION_RE = re.compile(r"^\s*(\d+[dhms]\s*)+$")
LATENCY_RE = re.compile(r"^(\d+(\.\d+)?)(ms|s)$")
IDLE_TIMEOUT_RE = re.compile(r"^(\d+)(s|m)$")

DEFAULT_SKIP_FILES = (
    r"^(.*/)?#.*#$",
    r"^(.*/)?.*~$",
    r"^(.*/)?.*\.py[co]$",
    r"^(.*/)?.*/RCS/.*$",
    r"^(.*/)?\..*$",
)
INBOUND_SERVICES = frozenset({"mail", "mail_bounce", "warmup", "xmpp_message", "xmpp_presence",
                              "xmpp_subscribe", "xmpp_error", "channel_presence"})
BUILTINS = frozenset({"appstats", "deferred", "remote_api"})
#: ``builtins: - deferred: on`` maps App Engine's deferred URL, before the app's handlers, to kiln's deferred handler
#: (which also runs tasks deferred with Google's SDK), ``login: admin`` as App Engine's builtin did.
DEFERRED_BUILTIN = "kiln.api.deferred.application"
AUTOMATIC_CLASSES = frozenset({"F1", "F2", "F4", "F4_1G"})
BASIC_CLASSES = frozenset({"B1", "B2", "B4", "B4_1G", "B8"})
ERROR_CODES = frozenset({"over_quota", "dos_api_denial", "timeout"})
_REGEX_CHARS = set("()[]{}*+?|^$\\")


class AppYamlError(ConfigError):
    """An invalid app.yaml; ``filename``, ``line`` and ``field`` say where."""

    def __init__(self, filename: str, line: int | None, field: str, message: str) -> None:
        where = f"{filename}:{line}" if line else filename
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")
        self.filename, self.line, self.field = filename, line, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class Handler:
    """One ``handlers:`` entry."""

    url: str
    script: str | None = None
    static_dir: str | None = None
    static_files: str | None = None
    upload: str | None = None
    mime_type: str | None = None
    expiration_seconds: int | None = None
    http_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    login: str = "optional"
    secure: str = "optional"
    auth_fail_action: str = "redirect"
    redirect_http_response_code: int | None = None
    application_readable: bool = False
    require_matching_file: bool = False

    @property
    def is_cgi(self) -> bool:
        """True for a CGI script (``script: file.py``), False for WSGI (``module.app``)."""
        return self.script is not None and self.script.endswith(".py")

    @property
    def is_static(self) -> bool:
        """True for ``static_dir`` and ``static_files`` handlers."""
        return self.script is None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Library:
    """A platform library selected by name and version."""

    name: str
    version: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutomaticScaling:
    """``automatic_scaling``; ``None`` means App Engine's automatic choice."""

    min_idle_instances: int | None = None
    max_idle_instances: int | None = None
    min_pending_latency_seconds: float | None = None
    max_pending_latency_seconds: float | None = None
    max_concurrent_requests: int | None = None
    target_cpu_utilization: float | None = None
    target_throughput_utilization: float | None = None
    min_instances: int | None = None
    max_instances: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class BasicScaling:
    """``basic_scaling``."""

    max_instances: int
    idle_timeout_seconds: int = 300


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManualScaling:
    """``manual_scaling``."""

    instances: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ErrorHandler:
    """An ``error_handlers`` entry; ``error_code`` ``None`` is the default page."""

    file: str
    error_code: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AppConfig:
    """A parsed, validated ``app.yaml``."""

    runtime: str
    handlers: tuple[Handler, ...]
    application: str | None = None
    version: str | None = None
    service: str | None = None
    api_version: str | None = None
    threadsafe: bool = False
    env_variables: dict[str, str] = dataclasses.field(default_factory=dict)
    libraries: tuple[Library, ...] = ()
    skip_files: tuple[str, ...] = DEFAULT_SKIP_FILES
    instance_class: str | None = None
    automatic_scaling: AutomaticScaling | None = None
    basic_scaling: BasicScaling | None = None
    manual_scaling: ManualScaling | None = None
    inbound_services: tuple[str, ...] = ()
    default_expiration_seconds: int | None = None
    builtins: dict[str, bool] = dataclasses.field(default_factory=dict)
    includes: tuple[str, ...] = ()
    error_handlers: tuple[ErrorHandler, ...] = ()
    entrypoint: str | None = None
    app_engine_apis: bool = False
    # Python 3 runtimes: the WSGI callable ``entrypoint`` (or App Engine's default) names.
    wsgi_target: entrypoints.WsgiTarget | None = None
    runtime_line: int | None = dataclasses.field(default=None, compare=False)  # for errors found later

    @property
    def python_version(self) -> tuple[int, int] | None:
        """The Python ``runtime`` names (``python312`` -> (3, 12)); ``None`` for ``python27`` (kiln's own Python)."""
        found = RUNTIME_RE.match(self.runtime)
        if found is None or found.group(2) is None:
            return None
        return 3, int(found.group(2))

    def skips(self, path: str) -> bool:
        """True if ``path`` (relative, '/'-separated) matches ``skip_files``."""
        return any(re.search(p, path) for p in self.skip_files)


# --- YAML with line numbers -------------------------------------------------

class _Map(dict[str, Any]):
    line: int = 0
    lines: dict[str, int]


class _Seq(list[Any]):
    line: int = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    """A safe loader whose mappings/sequences remember the line of each item."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    out = _Map()
    out.line, out.lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise AppYamlError(loader.name, key_node.start_mark.line + 1, "", f"keys must be strings, got {key!r}")
        if key in out:
            raise AppYamlError(loader.name, key_node.start_mark.line + 1, key, "duplicate key")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(item, deep=True) for item in node.value)
    out.line, out.lines = node.start_mark.line + 1, [item.start_mark.line + 1 for item in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def load_yaml(text: str, filename: str) -> Any:
    """Parse YAML whose mappings and lists remember their lines; syntax errors name the line."""
    loader = _Loader(text)
    loader.name = filename
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise AppYamlError(filename, mark.line + 1 if mark else None, "",
                           f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise AppYamlError(filename, None, "", f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _read(text: str, filename: str) -> _Map:
    data = load_yaml(text, filename)
    if data is None:
        raise AppYamlError(filename, None, "", "the file is empty; it needs at least runtime and handlers")
    if not isinstance(data, _Map):
        raise AppYamlError(filename, 1, "", "the top level must be a mapping of fields")
    return data


# --- validation ----------------------------------------------------------------

class _Ctx:
    """Where we are: the file, and how to find a field's line."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, container: Any, key: Any, field: str, message: str) -> AppYamlError:
        line = None
        if isinstance(container, _Map):
            line = container.lines.get(key, container.line)
        elif isinstance(container, _Seq) and isinstance(key, int) and key < len(container.lines):
            line = container.lines[key]
        return AppYamlError(self.filename, line, field, message)


def _check_keys(ctx: _Ctx, m: _Map, allowed: set[str], where: str) -> None:
    for key in m:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ctx.fail(m, key, name, f"unknown field; allowed: {', '.join(sorted(allowed))}")


def _str(ctx: _Ctx, m: _Map, key: str, where: str, *, required: bool = False) -> str | None:
    if key not in m or m[key] is None:
        if required:
            raise ctx.fail(m, None, f"{where}{key}", "required field is missing")
        return None
    value = m[key]
    if isinstance(value, (dict, list, bool)):
        raise ctx.fail(m, key, f"{where}{key}", f"must be a string, got {value!r}")
    return str(value)


def _bool(ctx: _Ctx, m: _Map, key: str, where: str, default: bool = False) -> bool:
    if key not in m:
        return default
    if not isinstance(m[key], bool):
        raise ctx.fail(m, key, f"{where}{key}", f"must be true or false, got {m[key]!r}")
    return bool(m[key])


def _int(ctx: _Ctx, m: _Map, key: str, where: str, lo: int, hi: int, *, automatic: bool = False) -> int | None:
    if key not in m:
        return None
    value = m[key]
    if automatic and value == "automatic":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ctx.fail(m, key, f"{where}{key}", f"must be an integer from {lo} to {hi}"
                       f"{' or automatic' if automatic else ''}, got {value!r}")
    return value


def _float(ctx: _Ctx, m: _Map, key: str, where: str, lo: float, hi: float) -> float | None:
    if key not in m:
        return None
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ctx.fail(m, key, f"{where}{key}", f"must be a number from {lo} to {hi}, got {value!r}")
    return float(value)


def _choice(ctx: _Ctx, m: _Map, key: str, where: str, choices: tuple[str, ...], default: str) -> str:
    if key not in m:
        return default
    value = m[key]
    if value not in choices:
        raise ctx.fail(m, key, f"{where}{key}", f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _map(ctx: _Ctx, m: _Map, key: str, where: str) -> _Map | None:
    if key not in m or m[key] is None:
        return None
    if not isinstance(m[key], _Map):
        raise ctx.fail(m, key, f"{where}{key}", "must be a mapping")
    return m[key]  # type: ignore[no-any-return]


def top_level_list(text: str, filename: str, key: str, allowed: set[str],
                   what: str) -> tuple[_Ctx, _Map, _Seq]:
    """The top level and its list under ``key``, of a file whose top level is a mapping with only the keys
    ``allowed`` (cron.yaml, index.yaml, dispatch.yaml); an empty file is an empty list.

    Raises:
        AppYamlError: the message names the file, line and field (``what``: the list, as the message says it).
    """
    data = load_yaml(text, filename)
    ctx = _Ctx(filename)
    if data is None:
        return ctx, _Map(), _Seq()
    if not isinstance(data, _Map):
        raise AppYamlError(filename, 1, "", f"the top level must be a mapping with {what}")
    _check_keys(ctx, data, allowed, "")
    return ctx, data, _seq(ctx, data, key, "")


def _seq(ctx: _Ctx, m: _Map, key: str, where: str) -> _Seq:
    if key not in m or m[key] is None:
        return _Seq()
    if not isinstance(m[key], _Seq):
        raise ctx.fail(m, key, f"{where}{key}", "must be a list")
    return m[key]  # type: ignore[no-any-return]


def parse_duration(text: str) -> int:
    """App Engine's expiration format, e.g. ``"4d 5h"`` or ``"30s"``, in seconds."""
    if not DURATION_RE.match(text):
        raise ValueError(f"expected a duration like '4d 5h 30m 10s', got {text!r}")
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", text))


def _duration(ctx: _Ctx, m: _Map, key: str, where: str) -> int | None:
    text = _str(ctx, m, key, where)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ctx.fail(m, key, f"{where}{key}", str(exc)) from None


def _regex(ctx: _Ctx, m: Any, key: Any, field: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ctx.fail(m, key, field, f"invalid regular expression {pattern!r}: {exc}") from None


_HANDLER_KEYS = {"url", "script", "static_dir", "static_files", "upload", "mime_type", "expiration",
                 "http_headers", "login", "secure", "auth_fail_action", "redirect_http_response_code",
                 "application_readable", "require_matching_file"}


def _handler(ctx: _Ctx, h: Any, seq: _Seq, i: int) -> Handler:
    where = f"handlers[{i}]."
    if not isinstance(h, _Map):
        raise ctx.fail(seq, i, f"handlers[{i}]", "each handler must be a mapping with url and script or static_*")
    _check_keys(ctx, h, _HANDLER_KEYS, f"handlers[{i}]")
    url = _str(ctx, h, "url", where, required=True)
    assert url is not None
    kinds = [k for k in ("script", "static_dir", "static_files") if k in h]
    if len(kinds) != 1:
        raise ctx.fail(h, kinds[1] if len(kinds) > 1 else "url", f"handlers[{i}]",
                       "needs exactly one of script, static_dir, static_files"
                       + (f" (has {', '.join(kinds)})" if kinds else ""))
    if kinds[0] == "static_dir":
        if _REGEX_CHARS & set(url):
            raise ctx.fail(h, "url", f"{where}url", f"a static_dir url is a plain prefix, not a regex: {url!r}")
    else:
        _regex(ctx, h, "url", f"{where}url", url)
    script = _str(ctx, h, "script", where)
    if script is not None and not (script.endswith(".py") or WSGI_SCRIPT_RE.match(script) or script == AUTO_SCRIPT):
        raise ctx.fail(h, "script", f"{where}script",
                       f"must be a WSGI app path like main.app, a CGI file like main.py or auto, got {script!r}")
    upload = _str(ctx, h, "upload", where)
    if kinds[0] == "static_files":
        if upload is None:
            raise ctx.fail(h, "static_files", f"{where}upload", "static_files needs upload (a regex of the files)")
        _regex(ctx, h, "upload", f"{where}upload", upload)
    elif upload is not None:
        raise ctx.fail(h, "upload", f"{where}upload", "upload is only allowed with static_files")
    headers = _map(ctx, h, "http_headers", where)
    code = _int(ctx, h, "redirect_http_response_code", where, 300, 399)
    if code is not None and code not in (301, 302, 303, 307):
        raise ctx.fail(h, "redirect_http_response_code", f"{where}redirect_http_response_code",
                       f"must be one of 301, 302, 303, 307, got {code}")
    return Handler(
        url=url, script=script, static_dir=_str(ctx, h, "static_dir", where),
        static_files=_str(ctx, h, "static_files", where), upload=upload,
        mime_type=_str(ctx, h, "mime_type", where), expiration_seconds=_duration(ctx, h, "expiration", where),
        http_headers={str(k): str(v) for k, v in (headers or {}).items()},
        login=_choice(ctx, h, "login", where, ("optional", "required", "admin"), "optional"),
        secure=_choice(ctx, h, "secure", where, ("optional", "never", "always"), "optional"),
        auth_fail_action=_choice(ctx, h, "auth_fail_action", where, ("redirect", "unauthorized"), "redirect"),
        redirect_http_response_code=code,
        application_readable=_bool(ctx, h, "application_readable", where),
        require_matching_file=_bool(ctx, h, "require_matching_file", where))


def _latency(ctx: _Ctx, m: _Map, key: str, where: str) -> float | None:
    text = _str(ctx, m, key, where)
    if text is None or text == "automatic":
        return None
    found = LATENCY_RE.match(text)
    if not found:
        raise ctx.fail(m, key, f"{where}{key}", f"must be like 30ms, 1.5s or automatic, got {text!r}")
    value = float(found.group(1)) / (1000 if found.group(3) == "ms" else 1)
    if not 0.01 <= value <= 15:
        raise ctx.fail(m, key, f"{where}{key}", f"must be between 0.01s and 15s, got {text!r}")
    return value


def _automatic(ctx: _Ctx, m: _Map) -> AutomaticScaling:
    w = "automatic_scaling."
    _check_keys(ctx, m, {"min_idle_instances", "max_idle_instances", "min_pending_latency", "max_pending_latency",
                         "max_concurrent_requests", "target_cpu_utilization", "target_throughput_utilization",
                         "min_instances", "max_instances"}, "automatic_scaling")
    return AutomaticScaling(
        min_idle_instances=_int(ctx, m, "min_idle_instances", w, 0, 1000, automatic=True),
        max_idle_instances=_int(ctx, m, "max_idle_instances", w, 1, 1000, automatic=True),
        min_pending_latency_seconds=_latency(ctx, m, "min_pending_latency", w),
        max_pending_latency_seconds=_latency(ctx, m, "max_pending_latency", w),
        max_concurrent_requests=_int(ctx, m, "max_concurrent_requests", w, 1, 80),
        target_cpu_utilization=_float(ctx, m, "target_cpu_utilization", w, 0.5, 0.95),
        target_throughput_utilization=_float(ctx, m, "target_throughput_utilization", w, 0.5, 0.95),
        min_instances=_int(ctx, m, "min_instances", w, 0, 1000),
        max_instances=_int(ctx, m, "max_instances", w, 1, 2147483647))


_TOP_KEYS = {"application", "version", "module", "service", "runtime", "api_version", "threadsafe", "handlers",
             "env_variables", "libraries", "skip_files", "instance_class", "automatic_scaling", "basic_scaling",
             "manual_scaling", "inbound_services", "default_expiration", "builtins", "includes", "error_handlers",
             "entrypoint", "app_engine_apis", "env", "service_account", "build_env_variables", "vpc_access_connector",
             "runtime_config"}


def _merge_includes(ctx: _Ctx, data: _Map, base_dir: pathlib.Path | None, seen: tuple[pathlib.Path, ...]) -> _Map:
    includes = _seq(ctx, data, "includes", "")
    for i, item in enumerate(includes):
        if not isinstance(item, str):
            raise ctx.fail(includes, i, f"includes[{i}]", "must be a path")
        if base_dir is None:
            raise ctx.fail(includes, i, f"includes[{i}]", "includes need the app directory (use load())")
        path = (base_dir / item).resolve()
        if path.is_dir():
            path = path / "include.yaml"
        if path in seen:
            raise ctx.fail(includes, i, f"includes[{i}]", f"include cycle through {path}")
        try:
            text = path.read_text()
        except OSError as exc:
            raise ctx.fail(includes, i, f"includes[{i}]", f"cannot read {item}: {exc.strerror}") from None
        sub_ctx = _Ctx(str(path))
        sub = _merge_includes(sub_ctx, _read(text, str(path)), path.parent, (*seen, path))
        _check_keys(sub_ctx, sub, _TOP_KEYS, "")
        for key, value in sub.items():
            if key == "includes":
                continue
            if key not in data:
                data[key] = value
                data.lines[key] = data.lines.get("includes", data.line)
            elif key in ("handlers", "libraries", "inbound_services", "builtins", "error_handlers") \
                    and isinstance(data[key], list) and isinstance(value, list):
                merged = _Seq([*data[key], *value])
                merged.line = data[key].line
                # _Loader builds every YAML sequence as a _Seq, so the list is one.
                merged.lines = [*data[key].lines, *cast(_Seq, value).lines]
                data[key] = merged
            elif key == "env_variables" and isinstance(data[key], dict) and isinstance(value, dict):
                for k, v in value.items():
                    data[key].setdefault(k, v)
            # Scalars: the including file wins.
    return data


def parse(text: str, *, filename: str = "app.yaml", base_dir: pathlib.Path | None = None) -> AppConfig:
    """Parse and validate ``app.yaml`` text (``base_dir`` resolves ``includes``)."""
    ctx = _Ctx(filename)
    data = _read(text, filename)
    _check_keys(ctx, data, _TOP_KEYS, "")
    data = _merge_includes(ctx, data, base_dir, (base_dir / filename,) if base_dir else ())

    runtime = _runtime(ctx, data)
    legacy = runtime == "python27"
    _check_style(ctx, data, legacy)
    if "env" in data and data["env"] not in ("standard", "std"):
        raise ctx.fail(data, "env", "env", f"kiln runs the standard environment only, got {data['env']!r}")
    api_version = _str(ctx, data, "api_version", "", required=legacy)
    if legacy and api_version != "1":
        raise ctx.fail(data, "api_version", "api_version", f"must be 1 for python27, got {api_version!r}")
    if legacy and "threadsafe" not in data:
        raise ctx.fail(data, None, "threadsafe", "required field is missing for python27 (true or false)")
    threadsafe = _bool(ctx, data, "threadsafe", "", default=not legacy)

    raw_handlers = _seq(ctx, data, "handlers", "")
    if not raw_handlers and legacy:
        raise ctx.fail(data, "handlers", "handlers", "python27 apps need at least one handler")
    if len(raw_handlers) > MAX_HANDLERS:
        raise ctx.fail(data, "handlers", "handlers", f"at most {MAX_HANDLERS} handlers, got {len(raw_handlers)}")
    handlers = tuple(_handler(ctx, h, raw_handlers, i) for i, h in enumerate(raw_handlers))
    for i, h in enumerate(handlers):
        _check_script_style(ctx, raw_handlers, i, h, legacy)
        if threadsafe and h.is_cgi:
            raise ctx.fail(raw_handlers, i, f"handlers[{i}].script",
                           f"CGI script {h.script!r} is not allowed with threadsafe: true; "
                           "use a WSGI app (module.app) or set threadsafe: false")
    wsgi_target = None
    if not legacy:
        # Whatever no handler serves goes to the entrypoint's app, as on App Engine's Python 3 runtimes.
        handlers = (*handlers, Handler(url="/.*", script=AUTO_SCRIPT))
        wsgi_target = _entrypoint(ctx, data)

    # Accepted as App Engine accepts them; nothing in kiln depends on them (kiln builds nothing, has no VPC
    # connectors, and gives every app its own identity).
    _str(ctx, data, "service_account", "")
    for key in ("build_env_variables", "vpc_access_connector", "runtime_config"):
        _map(ctx, data, key, "")
    env_raw = _map(ctx, data, "env_variables", "") or _Map()
    env_variables = {}
    for key, value in env_raw.items():
        if isinstance(value, (dict, list)) or value is None:
            raise ctx.fail(env_raw, key, f"env_variables.{key}", "must be a string")
        env_variables[key] = str(value).lower() if isinstance(value, bool) else str(value)

    libraries = []
    raw_libs = _seq(ctx, data, "libraries", "")
    for i, lib in enumerate(raw_libs):
        if not isinstance(lib, _Map):
            raise ctx.fail(raw_libs, i, f"libraries[{i}]", "must be a mapping with name and version")
        _check_keys(ctx, lib, {"name", "version"}, f"libraries[{i}]")
        name = _str(ctx, lib, "name", f"libraries[{i}].", required=True)
        version = _str(ctx, lib, "version", f"libraries[{i}].", required=True)
        assert name is not None and version is not None
        libraries.append(Library(name=name, version=version))

    skip = data.get("skip_files")
    if skip is None:
        skip_files = DEFAULT_SKIP_FILES
    else:
        patterns = [skip] if isinstance(skip, str) else skip
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ctx.fail(data, "skip_files", "skip_files", "must be a regex or a list of regexes")
        for p in patterns:
            _regex(ctx, data, "skip_files", "skip_files", p)
        skip_files = tuple(patterns)

    scaling = [k for k in ("automatic_scaling", "basic_scaling", "manual_scaling") if k in data]
    if len(scaling) > 1:
        raise ctx.fail(data, scaling[1], scaling[1], f"only one scaling type is allowed (also has {scaling[0]})")
    automatic = basic = manual = None
    if (m := _map(ctx, data, "automatic_scaling", "")) is not None:
        automatic = _automatic(ctx, m)
    if (m := _map(ctx, data, "basic_scaling", "")) is not None:
        _check_keys(ctx, m, {"max_instances", "idle_timeout"}, "basic_scaling")
        max_instances = _int(ctx, m, "max_instances", "basic_scaling.", 1, 200)
        if max_instances is None:
            raise ctx.fail(m, None, "basic_scaling.max_instances", "required field is missing")
        idle = _str(ctx, m, "idle_timeout", "basic_scaling.")
        idle_seconds = 300
        if idle is not None:
            found = IDLE_TIMEOUT_RE.match(idle)
            if not found:
                raise ctx.fail(m, "idle_timeout", "basic_scaling.idle_timeout", f"must be like 10m or 30s, got {idle!r}")
            idle_seconds = int(found.group(1)) * (60 if found.group(2) == "m" else 1)
        basic = BasicScaling(max_instances=max_instances, idle_timeout_seconds=idle_seconds)
    if (m := _map(ctx, data, "manual_scaling", "")) is not None:
        _check_keys(ctx, m, {"instances"}, "manual_scaling")
        instances = _int(ctx, m, "instances", "manual_scaling.", 1, 1000)
        if instances is None:
            raise ctx.fail(m, None, "manual_scaling.instances", "required field is missing")
        manual = ManualScaling(instances=instances)

    instance_class = _str(ctx, data, "instance_class", "")
    if instance_class is not None:
        allowed = BASIC_CLASSES if (basic or manual) else AUTOMATIC_CLASSES
        if instance_class not in allowed:
            raise ctx.fail(data, "instance_class", "instance_class",
                           f"must be one of {', '.join(sorted(allowed))} with "
                           f"{'basic/manual' if basic or manual else 'automatic'} scaling, got {instance_class!r}")

    inbound = _seq(ctx, data, "inbound_services", "")
    for i, name in enumerate(inbound):
        if name not in INBOUND_SERVICES:
            raise ctx.fail(inbound, i, f"inbound_services[{i}]",
                           f"must be one of {', '.join(sorted(INBOUND_SERVICES))}, got {name!r}")

    builtins: dict[str, bool] = {}
    raw_builtins = _seq(ctx, data, "builtins", "")
    for i, item in enumerate(raw_builtins):
        if not isinstance(item, _Map) or len(item) != 1:
            raise ctx.fail(raw_builtins, i, f"builtins[{i}]", "each builtin is one 'name: on|off' mapping")
        ((name, state),) = item.items()
        if name not in BUILTINS:
            raise ctx.fail(item, name, f"builtins[{i}].{name}", f"unknown builtin; known: {', '.join(sorted(BUILTINS))}")
        if state not in (True, False, "on", "off"):
            raise ctx.fail(item, name, f"builtins[{i}].{name}", f"must be on or off, got {state!r}")
        builtins[name] = state in (True, "on")

    error_handlers: list[ErrorHandler] = []
    raw_errors = _seq(ctx, data, "error_handlers", "")
    for i, item in enumerate(raw_errors):
        if not isinstance(item, _Map):
            raise ctx.fail(raw_errors, i, f"error_handlers[{i}]", "must be a mapping with file and error_code")
        _check_keys(ctx, item, {"file", "error_code"}, f"error_handlers[{i}]")
        file = _str(ctx, item, "file", f"error_handlers[{i}].", required=True)
        code = _str(ctx, item, "error_code", f"error_handlers[{i}].")
        if code is not None and code not in ERROR_CODES:
            raise ctx.fail(item, "error_code", f"error_handlers[{i}].error_code",
                           f"must be one of {', '.join(sorted(ERROR_CODES))}, got {code!r}")
        if any(e.error_code == code for e in error_handlers):
            raise ctx.fail(raw_errors, i, f"error_handlers[{i}]",
                           f"a second handler for {code or 'the default error'}")
        assert file is not None
        error_handlers.append(ErrorHandler(file=file, error_code=code))
    if builtins.get("deferred") and legacy:
        handlers = (Handler(url="/_ah/queue/deferred", script=DEFERRED_BUILTIN, login="admin"), *handlers)

    return AppConfig(
        runtime=runtime, handlers=handlers, application=_str(ctx, data, "application", ""),
        version=_str(ctx, data, "version", ""),
        service=_str(ctx, data, "service", "") or _str(ctx, data, "module", ""),
        api_version=api_version, threadsafe=threadsafe, env_variables=env_variables, libraries=tuple(libraries),
        skip_files=skip_files, instance_class=instance_class, automatic_scaling=automatic, basic_scaling=basic,
        manual_scaling=manual, inbound_services=tuple(inbound),
        default_expiration_seconds=_duration(ctx, data, "default_expiration", ""), builtins=builtins,
        includes=tuple(str(i) for i in _seq(ctx, data, "includes", "")), error_handlers=tuple(error_handlers),
        entrypoint=_str(ctx, data, "entrypoint", ""), app_engine_apis=_bool(ctx, data, "app_engine_apis", ""),
        wsgi_target=wsgi_target, runtime_line=data.lines.get("runtime"))


def _runtime(ctx: _Ctx, data: _Map) -> str:
    runtime = _str(ctx, data, "runtime", "", required=True)
    assert runtime is not None
    found = RUNTIME_RE.match(runtime)
    if found is None:
        raise ctx.fail(data, "runtime", "runtime", f"kiln runs python27 and python311, python312, python313 (python3NN "
                                                   f"from 3.11 on), got {runtime!r}")
    if found.group(2) is not None and (3, int(found.group(2))) < MIN_PYTHON3:
        raise ctx.fail(data, "runtime", "runtime", f"{runtime}: App Engine has ended support for it and kiln's runtime "
                                                   "needs Python 3.11 or newer; use python311, python312 or python313")
    return runtime


# Fields of one style that the other refuses, with the fix.
_PYTHON27_ONLY = {
    "api_version": "Python 3 runtimes have no API version: remove api_version",
    "threadsafe": "Python 3 runtimes always serve requests concurrently (set automatic_scaling."
                  "max_concurrent_requests: 1 for one at a time): remove threadsafe",
    "libraries": "Python 3 runtimes take their packages from requirements.txt: list them there and remove libraries",
}
_PYTHON3_ONLY = {
    "entrypoint": "python27 apps name their WSGI app in each handler's script (module.app): remove entrypoint, or "
                  "use a Python 3 runtime (python312…)",
    "app_engine_apis": "python27 apps always have the bundled services: remove app_engine_apis, or use a Python 3 "
                       "runtime (python312…)",
}


def _check_style(ctx: _Ctx, data: _Map, legacy: bool) -> None:
    """Refuse a field of the other style (App Engine's python27 and Python 3 runtimes take different ones)."""
    runtime = data["runtime"]
    for key, fix in (_PYTHON3_ONLY if legacy else _PYTHON27_ONLY).items():
        if key in data:
            raise ctx.fail(data, key, key, f"not a setting of runtime {runtime}; {fix}")


def _check_script_style(ctx: _Ctx, seq: _Seq, i: int, h: Handler, legacy: bool) -> None:
    if h.script is None:
        return
    where = seq[i]  # the handler's mapping: errors name the script line
    if legacy and h.script == AUTO_SCRIPT:
        raise ctx.fail(where, "script", f"handlers[{i}].script",
                       "script: auto is for Python 3 runtimes; python27 handlers name their WSGI app (script: main.app)")
    if not legacy and h.script != AUTO_SCRIPT:
        raise ctx.fail(where, "script", f"handlers[{i}].script",
                       f"Python 3 runtimes serve every script handler with the entrypoint's app, so script must be "
                       f"auto, got {h.script!r}; name the app in entrypoint (e.g. entrypoint: gunicorn -b :$PORT "
                       f"{_as_entrypoint_app(h.script)}) and use script: auto")


def _as_entrypoint_app(script: str) -> str:
    module, _, attr = script.rpartition(".")
    return f"{module}:{attr}" if module and not script.endswith(".py") else "main:app"


def _entrypoint(ctx: _Ctx, data: _Map) -> entrypoints.WsgiTarget:
    command = _str(ctx, data, "entrypoint", "")
    try:
        return entrypoints.parse(entrypoints.DEFAULT_ENTRYPOINT if command is None else command)
    except entrypoints.EntrypointError as exc:
        raise ctx.fail(data, "entrypoint", "entrypoint", str(exc)) from None


def load(path: pathlib.Path | str) -> AppConfig:
    """Read and validate an ``app.yaml`` file."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise AppYamlError(str(path), None, "", f"cannot read: {exc.strerror}") from None
    return parse(text, filename=path.name if path.parent == pathlib.Path(".") else str(path), base_dir=path.parent)
