"""Typed configuration for every kiln process.

Each deployable declares one frozen dataclass of settings. :func:`load` builds
it once, in ``__main__``, from (lowest to highest precedence):

1. the field defaults (documented in each field's ``help``),
2. a YAML file given with ``--config FILE`` (``yaml.safe_load``),
3. environment variables ``KILN_<SVC>_<FIELD>`` (e.g. ``KILN_DATASTORE_LISTEN``),
4. command-line flags ``--field-name``.

Unknown YAML keys are errors, every value is converted to the field's type and
a bad value names the key. Nothing is read at import time; tests pass ``env``
and ``argv`` explicitly.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import pathlib
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import yaml

from kiln.errors import ConfigError
from kiln_platform.tracing import traces_url

T = TypeVar("T")


class Secret:
    """A string whose ``repr``/``str`` hide it, so it never reaches a log."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret value."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__


# A host name or an IPv4 address: ASCII letters, digits, '-', '_' and '.', so no name the resolver would
# normalise (full-width or circled digits, ideographic dots) reaches a connection as another host.
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclasses.dataclass(frozen=True)
class HostPort:
    """A ``host:port`` setting, parsed once: ``host`` is a name or an IP address (an IPv6 one without its
    brackets; it is written ``[v6]:port``), ``port`` 1 to 65535.

    Fields of this type (or ``tuple[HostPort, ...]`` for a comma list) are parsed by :func:`load`;
    subclasses change what a setting accepts through the class variables.
    """

    host: str
    port: int

    # The port of a bare ``host`` (None: the port is required).
    default_port: ClassVar[int | None] = None
    # The lowest port accepted (0 for listen addresses: the system picks a free port).
    min_port: ClassVar[int] = 1

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, name: str) -> typing.Self:
        """Parse ``host:port``, ``[v6]:port`` (or a bare host when the class has a default port).

        Raises:
            ConfigError: the value is not one; the message names the setting ``name`` and says what is wrong.
        """
        value = text.strip()

        def bad(why: str) -> ConfigError:
            return ConfigError(f"{name}: expected host:port, got {text!r} ({why})")

        if not value:
            raise bad("empty")
        if value.startswith("["):
            host, sep, rest = value[1:].partition("]")
            if not sep:
                raise bad("no ']' after the IPv6 address")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise bad(f"{host!r} in brackets is not an IPv6 address") from None
            if rest and not rest.startswith(":"):
                raise bad("':port' must follow the ']'")
            port = rest[1:] if rest else None
        elif value.count(":") > 1:
            raise bad("an IPv6 address is written in brackets, [v6]:port")
        else:
            host, sep, after = value.partition(":")
            port = after if sep else None
            if not host:
                raise bad("no host")
            if not _HOST.fullmatch(host):
                raise bad(f"{host!r} is not a host name or IP address")
        if port is None:
            if cls.default_port is None:
                raise bad("no port")
            return cls(host, cls.default_port)
        if not _PORT.fullmatch(port) or not cls.min_port <= int(port) <= 65535:
            raise bad(f"the port must be a number from {cls.min_port} to 65535")
        return cls(host, int(port))

    @classmethod
    def parse_list(cls, text: str, name: str) -> tuple[typing.Self, ...]:
        """Parse ``host:port[,host:port...]`` as :func:`load` does a ``tuple[HostPort, ...]`` field.

        Raises:
            ConfigError: an item is not host:port; the message names ``name`` and the item.
        """
        parsed: tuple[typing.Self, ...] = _convert(name, tuple[cls, ...], text)  # type: ignore[valid-type]
        return parsed


class ListenAddress(HostPort):
    """An address to serve on: port 0 lets the system pick a free port."""

    min_port = 0


def field(default: Any, help: str, *, required: bool = False, **kwargs: Any) -> Any:  # noqa: A002 - argparse's
    """Declare a config field with a default and a help text.

    ``required``: :func:`load` refuses to build the config unless the setting is given a non-empty value (from the
    YAML file, the environment or a flag), naming it, its environment variable and its flag. ``default`` is then
    only what a test constructing the class directly gets.
    """
    return dataclasses.field(default=default, metadata={"help": help, "required": required, **kwargs})


class Parser(argparse.ArgumentParser):
    """argparse, whose errors are :class:`~kiln.errors.ConfigError` (one line, said by the caller) rather than a
    usage text and an exit: every kiln process reports a bad or missing setting the same way."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert(name: str, tp: Any, raw: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or raw == "":
            return None
        return _convert(name, args[0], raw)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{name}: expected a boolean, got {raw!r}")
    if tp in (int, float):
        if isinstance(raw, bool):
            raise ConfigError(f"{name}: expected a number, got {raw!r}")
        try:
            return tp(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {'an integer' if tp is int else 'a number'}, got {raw!r}") from None
    if tp is str:
        if isinstance(raw, (dict, list)):
            raise ConfigError(f"{name}: expected a string, got {raw!r}")
        return str(raw)
    if tp is pathlib.Path:
        return pathlib.Path(str(raw)).expanduser()
    if tp is Secret:
        return raw if isinstance(raw, Secret) else Secret(str(raw))
    if isinstance(tp, type) and issubclass(tp, HostPort):
        if isinstance(raw, tp):
            return raw
        if not isinstance(raw, (str, int)):
            raise ConfigError(f"{name}: expected host:port, got {raw!r}")
        return tp.parse(str(raw), name)
    if origin is tuple:
        # Comma lists are split here and nowhere else; blank items (a trailing comma) are dropped.
        if isinstance(raw, (dict, bytes)) or not isinstance(raw, (str, list, tuple)):
            raise ConfigError(f"{name}: expected a comma-separated list, got {raw!r}")
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        (inner, _) = typing.get_args(tp)
        stripped = (i.strip() if isinstance(i, str) else i for i in items)
        return tuple(_convert(name, inner, i) for i in stripped if i != "")
    raise ConfigError(f"{name}: unsupported config type {tp!r}")  # a programming error, caught by tests


def _shown(default: Any) -> str:
    """A default as it would be written in a flag."""
    if isinstance(default, HostPort):
        return repr(str(default))
    if isinstance(default, tuple):
        return repr(",".join(str(i) for i in default))
    return repr(default)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_prefix(cls: type[Any]) -> str:
    """The ``<SVC>`` of a part's environment variables ``KILN_<SVC>_<SETTING>``: its config class's ``env_prefix``."""
    return str(cls.env_prefix)


def is_required(cls: type[Any], f: dataclasses.Field[Any]) -> bool:
    """Whether :func:`load` refuses ``cls`` without a value for ``f`` (see :func:`field`)."""
    return bool(f.metadata.get("required")) and f.name not in getattr(cls, "not_required", ())


def parser(cls: type[Any], *, prefix: str, description: str | None = None) -> Parser:
    """The command line of a config class: a flag per field, whose help says its default and environment name
    (a secret's too, never its value), and ``--config``. :func:`load` parses with it; the settings reference
    (``deploy/settings_doc.py``) is written from it."""
    hints = typing.get_type_hints(cls)
    env_prefix = f"KILN_{prefix.upper()}_"
    out = Parser(description=description, argument_default=argparse.SUPPRESS)
    out.add_argument("--config", type=pathlib.Path,
                     help=f"YAML file with settings (keys = field names; env {env_prefix}CONFIG)")
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        env_name = f"env {env_prefix}{f.name.upper()}"
        default = f.default if f.default is not dataclasses.MISSING else None
        if is_required(cls, f):
            shown = f" (required; {env_name})"
        elif isinstance(default, Secret):
            shown = f" ({env_name}; keep it out of command lines)"
        else:
            shown = f" (default: {_shown(default)}; {env_name})"
        if hints[f.name] is bool:
            out.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                             help=f.metadata.get("help", "") + shown)
        else:
            out.add_argument(_flag(f.name), dest=f.name, metavar=f.name.upper(),
                             help=f.metadata.get("help", "") + shown)
    return out


def load(
    cls: type[T],
    *,
    prefix: str,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    description: str | None = None,
) -> T:
    """Build ``cls`` from defaults, ``--config`` YAML, ``KILN_<PREFIX>_*`` env and flags.

    Args:
        cls: A frozen dataclass whose fields were declared with :func:`field`.
        prefix: The env prefix, e.g. ``"DATASTORE"`` for ``KILN_DATASTORE_LISTEN``.
        argv: Command-line arguments (without the program name); ``None`` means none.
        env: Environment mapping; ``None`` means no environment.
        description: ``--help`` text.

    Raises:
        ConfigError: A value, a key or the YAML file is invalid; the message names it.
    """
    env = env or {}
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    env_prefix = f"KILN_{prefix.upper()}_"
    args = vars(parser(cls, prefix=prefix, description=description).parse_args(list(argv or [])))

    values: dict[str, Any] = {}
    config_file = args.pop("config", None) or env.get(env_prefix + "CONFIG")
    if config_file:
        values.update(_read_yaml(pathlib.Path(config_file), {f.name for f in fields}))
    for f in fields:
        key = env_prefix + f.name.upper()
        if key in env:
            values[f.name] = env[key]
    values.update(args)
    for f in fields:
        if is_required(cls, f) and (values.get(f.name) is None or str(values[f.name]).strip() == ""):
            raise ConfigError(f"{f.name}: required (set {env_prefix}{f.name.upper()} or {_flag(f.name)})")
    kwargs = {name: _convert(name, hints[name], raw) for name, raw in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _read_yaml(path: pathlib.Path, known: set[str]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of setting names to values")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return dict(data)


# Every part's otlp_endpoint setting says the same (kiln_platform/tracing.py).
OTLP_ENDPOINT_HELP = ("OTLP/HTTP collector to export traces to, e.g. http://127.0.0.1:4318 (spans are POSTed to "
                      "<endpoint>/v1/traces); off when empty")
# Every part's metrics_listen setting says the same (kiln_platform/metrics.py).
METRICS_LISTEN_HELP = ("host:port to serve Prometheus metrics on, at /metrics (off when empty; port 0 picks a free "
                       "port); no authentication, so keep it on loopback or a network only scrapers reach")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GrpcServiceConfig:
    """Settings every gRPC service shares. Services subclass it and override defaults."""

    # Required settings a subclass does not need (the runtime holds only its app's token, never the service secret).
    not_required: typing.ClassVar[frozenset[str]] = frozenset()

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 0), "host:port to serve gRPC on (port 0 picks a "
                                                                  "free port)")
    max_message_bytes: int = field(32 * 1024 * 1024, "largest gRPC message accepted or sent, in bytes")
    grace_seconds: float = field(5.0, "on SIGTERM, how long in-flight calls may finish")
    service_secret: Secret = field(Secret(""), "shared secret that signs app identity tokens", required=True)
    ready_file: pathlib.Path | None = field(None, "write the bound address here once serving")
    metrics_listen: ListenAddress | None = field(None, METRICS_LISTEN_HELP)
    otlp_endpoint: str = field("", OTLP_ENDPOINT_HELP)
    log_level: str = field("INFO", "log level")
    log_format: str = field("text", "log format: text (local) or json (cluster)")

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format: must be text or json, got {self.log_format!r}")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes: must be at least 1024")
        if self.otlp_endpoint:
            traces_url(self.otlp_endpoint)  # a precise error at start, not a failed export later


class CassandraHost(HostPort):
    """A Cassandra contact point: ``host:port``, or a bare host for the native protocol's port."""

    default_port = 9042


STORAGE_ENGINES = ("embedded", "cassandra")
# Cassandra's unquoted identifiers; keyspace names are at most 48 characters.
_KEYSPACE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
# Datacenter names go into CREATE KEYSPACE as a string literal: no quotes, nothing a snitch does not produce.
_DATACENTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """Where a service keeps its data: the settings block the datastore, logs and control plane share.

    Mix it in before :class:`GrpcServiceConfig` and override the defaults that differ (``data_dir``,
    ``cassandra_keyspace``); env names are the service's (``KILN_LOGS_CASSANDRA_HOSTS``…). Build a store
    with :meth:`pick`.
    """

    storage: str = field("embedded", "where data is kept: embedded (SQLite and files under data_dir; one "
                                     "replica) or cassandra (any number of replicas)")
    data_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/data").expanduser(),
                                   "directory of the embedded store")
    cassandra_hosts: tuple[CassandraHost, ...] = field(
        (CassandraHost("127.0.0.1", 9042),),
        "Cassandra contact points, host:port[,host:port] ([v6]:port for IPv6; a bare host means port 9042)")
    cassandra_keyspace: str = field("kiln", "Cassandra keyspace (created if missing)")
    cassandra_datacenter: str = field("datacenter1", "local Cassandra datacenter")
    cassandra_replication: int = field(1, "replication factor when creating the keyspace (3 in production)")

    def __post_init__(self) -> None:
        parent: Callable[[], None] | None = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.storage not in STORAGE_ENGINES:
            raise ValueError(f"storage: must be one of {', '.join(STORAGE_ENGINES)}, got {self.storage!r}")
        if not _KEYSPACE.fullmatch(self.cassandra_keyspace):
            raise ValueError(f"cassandra_keyspace: {self.cassandra_keyspace!r} is not a valid keyspace name "
                             "(a letter, then up to 47 letters, digits or '_')")
        if not _DATACENTER.fullmatch(self.cassandra_datacenter):
            raise ValueError(f"cassandra_datacenter: {self.cassandra_datacenter!r} is not a datacenter name")
        if self.cassandra_replication < 1:
            raise ValueError("cassandra_replication: must be at least 1")
        if self.storage == "cassandra" and not self.cassandra_hosts:
            raise ValueError("cassandra_hosts: required with storage cassandra")

    def pick(self, engines: Mapping[str, Callable[[], T]]) -> T:
        """Call the factory of the engine named by ``storage`` (each factory imports its own driver).

        Raises:
            ConfigError: the service has no such engine.
        """
        factory = engines.get(self.storage)
        if factory is None:
            raise ConfigError(f"storage: must be one of {', '.join(engines)}, got {self.storage!r}")
        return factory()


def parse_app_emails(spec: str, name: str) -> dict[str, frozenset[str]]:
    """``app=email;email[,app=email...]`` (e.g. administrators per app) as app -> lower-cased emails."""
    out: dict[str, frozenset[str]] = {}
    for item in filter(None, (i.strip() for i in spec.split(","))):
        app, sep, emails = item.partition("=")
        if not sep or not app or not emails:
            raise ValueError(f"{name}: expected app=email;email, got {item!r}")
        out[app.strip()] = frozenset(e.strip().lower() for e in emails.split(";") if e.strip())
    return out
