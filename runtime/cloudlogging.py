"""Cloud Logging's write API, answered in the app's process: entries become lines of the app's own logs.

On App Engine an app may write to Cloud Logging with ``google-cloud-logging`` (Google's Django Blobstore sample does:
``logging.Client().logger("django-app-logs").log_text(...)``), authenticated by the metadata server's tokens. kiln
has no Cloud Logging and the app's process has no network: as for the metadata server (:mod:`runtime.metadata`),
the runtime's HTTP clients (:mod:`runtime.httpfetch`: ``http.client``, and urllib3 2 under ``requests``) hand every
request for ``https://logging.googleapis.com`` to :func:`answer`, which answers it here, without a socket. The
runtime sets ``GOOGLE_CLOUD_DISABLE_GRPC`` so that Google's client libraries use their JSON/HTTP transport (gRPC's
C core opens its own sockets, which the sandbox does not see).

What is emulated:

- ``POST /v2/entries:write`` (``WriteLogEntriesRequest`` as JSON): each entry becomes one line of the current
  request's app log (outside a request: the instance's log), at the Python level its severity maps to
  (:data:`LEVELS`: ``DEFAULT`` and ``NOTICE`` at INFO, ``ALERT`` and ``EMERGENCY`` at CRITICAL), at the entry's
  ``timestamp`` when it has one. The line is the log's id, ``": "``, then the ``textPayload`` as sent, or the
  ``jsonPayload`` (or ``protoPayload``) as compact JSON. ``dryRun`` validates and writes nothing. The answer is
  ``{}``.
- The request is validated whole before anything is written (so ``partialSuccess`` changes nothing: a request
  with one bad entry writes none): JSON shapes and field names (JSON or proto names: ``dryRun`` or ``dry_run``, as
  Google's JSON mapping accepts and google-cloud-logging sends), log names
  (``projects/<app id>/logs/<LOG_ID>``, LOG_ID URL-encoded, at most 512 characters of letters, digits, ``/ _ - .``),
  one payload at most, severities, timestamps, labels, at most 10 MB a request and 256 KB an entry. A bad request
  gets Cloud Logging's error shape, ``{"error": {"code": 400, "message": ..., "status": "INVALID_ARGUMENT"}}``
  (a log of another project: 403 ``PERMISSION_DENIED``).
- Not emulated: reading entries, listing logs, deleting logs, sinks, metrics, exclusions: ``/v2/…`` paths other
  than ``entries:write`` get 501 ``UNIMPLEMENTED`` naming what kiln answers; other paths 404. ``resource``,
  ``labels``, ``httpRequest``, ``trace``… are validated as JSON shapes and not kept. The ``Authorization`` header is
  not checked: the request never leaves the app's process and its lines only reach that app's own logs.
  google-cloud-logging adds a diagnostic entry (``{"logging.googleapis.com/diagnostic": …}``) to its first write in
  a process; Cloud Logging keeps it, and so does kiln (one line).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from kiln.api import app_identity
from kiln_platform import requestscope

log = logging.getLogger(__name__)

Answer = tuple[int, list[tuple[str, str]], bytes]

HOST = "logging.googleapis.com"
WRITE_PATH = "/v2/entries:write"
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # Cloud Logging's limit for one entries.write request
MAX_ENTRY_BYTES = 256 * 1024  # and for one LogEntry
MAX_LOG_ID_CHARS = 512

# Cloud Logging's severities (LogSeverity: name and number) and the Python level each entry is logged at.
SEVERITIES = {"DEFAULT": 0, "DEBUG": 100, "INFO": 200, "NOTICE": 300, "WARNING": 400, "ERROR": 500,
              "CRITICAL": 600, "ALERT": 700, "EMERGENCY": 800}
LEVELS = {0: logging.INFO, 100: logging.DEBUG, 200: logging.INFO, 300: logging.INFO, 400: logging.WARNING,
          500: logging.ERROR, 600: logging.CRITICAL, 700: logging.CRITICAL, 800: logging.CRITICAL}

_REQUEST_FIELDS = frozenset({"logName", "resource", "labels", "entries", "partialSuccess", "dryRun"})
_PAYLOADS = ("textPayload", "jsonPayload", "protoPayload")
_ENTRY_FIELDS = frozenset({"logName", "resource", "timestamp", "receiveTimestamp", "severity", "insertId",
                           "httpRequest", "labels", "operation", "trace", "spanId", "traceSampled",
                           "sourceLocation", "split", *_PAYLOADS})
_OBJECT_FIELDS = frozenset({"resource", "httpRequest", "operation", "sourceLocation", "split"})
_STRING_FIELDS = frozenset({"insertId", "trace", "spanId"})
_CAMEL = re.compile(r"_([a-z])")
_LOG_NAME = re.compile(r"projects/([^/]+)/logs/([^/]+)")
_LOG_ID = re.compile(r"[A-Za-z0-9/_.\-]+")
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
_ANSWERED = f"kiln answers only POST https://{HOST}{WRITE_PATH} (entries become lines of the app's logs)"


class BadRequest(ValueError):
    """An entries.write request Cloud Logging would refuse: ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


Line = tuple[float | None, int, str]  # time (None: now), Python logging level, message


def is_logging_host(host: str) -> bool:
    """True if ``host`` (a URL's host, without port) is Cloud Logging's API."""
    return host.lower().rstrip(".") == HOST


def answer(method: str, url: str, headers: Mapping[str, str], body: bytes) -> Answer | None:
    """Cloud Logging's answer to a request for ``url``, or ``None`` when ``url`` is not Cloud Logging's (module
    docstring)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not is_logging_host(parts.hostname or ""):
        return None
    if parts.path != WRITE_PATH:
        if parts.path.startswith("/v2/"):
            return _error(501, f"{parts.path}: not emulated; {_ANSWERED}")
        return _error(404, f"{parts.path}: not found; {_ANSWERED}")
    if method.upper() != "POST":
        return _error(404, f"{method} {WRITE_PATH}: not found; {WRITE_PATH} takes POST")
    try:
        lines, dry_run = parse_write(body, app_identity.get_application_id())
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    if not dry_run:
        for created, level, message in lines:
            if not requestscope.app_log(level, message, created):
                log.log(level, "%s", message)  # outside a request: the instance's log
    return 200, [("Content-Type", "application/json; charset=UTF-8")], b"{}"


def parse_write(body: bytes, project: str) -> tuple[list[Line], bool]:
    """The log lines of an entries.write request body, and whether it is a dry run.

    Raises:
        BadRequest: the body is not a valid request for ``project``'s logs; nothing is to be written.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(f"Request size {len(body)} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes")
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("Invalid JSON payload received. The request must be a JSON object (WriteLogEntriesRequest)")
    _known(request, _REQUEST_FIELDS, "")
    entries = request.get("entries")
    if not isinstance(entries, list) or not entries:
        raise BadRequest("entries: at least one log entry is required (a JSON array of LogEntry objects)")
    default_name = _string(request, "logName", "")
    _labels(request, "")
    _object(request, "resource", "")
    for flag in ("partialSuccess", "dryRun"):
        if not isinstance(request.get(flag, False), bool):
            raise BadRequest(f"Invalid value at '{flag}': expected a boolean")
    lines = [_line(entry, n, default_name, project) for n, entry in enumerate(entries)]
    return lines, bool(request.get("dryRun", False))


def level_of(severity: object, where: str = "severity") -> int:
    """The Python logging level of a Cloud Logging severity (its name or number; absent: ``DEFAULT``)."""
    if severity is None:
        return LEVELS[0]
    if isinstance(severity, str) and severity.upper() in SEVERITIES:
        return LEVELS[SEVERITIES[severity.upper()]]
    if isinstance(severity, int) and not isinstance(severity, bool) and severity in LEVELS:
        return LEVELS[severity]
    raise BadRequest(f"Invalid value at '{where}' (type.googleapis.com/google.logging.type.LogSeverity), "
                     f"{json.dumps(severity)}: one of {', '.join(SEVERITIES)} or its number")


def _line(entry: object, n: int, default_name: str, project: str) -> Line:
    where = f"entries[{n}]"
    if not isinstance(entry, dict):
        raise BadRequest(f"Invalid value at '{where}': a LogEntry must be a JSON object")
    size = len(json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_ENTRY_BYTES:
        raise BadRequest(f"{where}: Log entry with size {size} bytes exceeds maximum size of {MAX_ENTRY_BYTES}")
    _known(entry, _ENTRY_FIELDS, where + ".")
    log_id = _log_id(_string(entry, "logName", where + ".") or default_name, where, project)
    for name in _OBJECT_FIELDS:
        _object(entry, name, where + ".")
    for name in _STRING_FIELDS:
        _string(entry, name, where + ".")
    _labels(entry, where + ".")
    if not isinstance(entry.get("traceSampled", False), bool):
        raise BadRequest(f"Invalid value at '{where}.traceSampled': expected a boolean")
    _timestamp(entry, "receiveTimestamp", where)
    created = _timestamp(entry, "timestamp", where)
    level = level_of(entry.get("severity"), f"{where}.severity")
    given = [name for name in _PAYLOADS if name in entry]
    if len(given) > 1:
        raise BadRequest(f"{where}: a LogEntry has at most one payload, not {' and '.join(given)}")
    if not given:
        return created, level, f"{log_id}:"
    payload = entry[given[0]]
    if given[0] == "textPayload":
        if not isinstance(payload, str):
            raise BadRequest(f"Invalid value at '{where}.textPayload': expected a string")
        return created, level, f"{log_id}: {payload}"
    if not isinstance(payload, dict):
        raise BadRequest(f"Invalid value at '{where}.{given[0]}': expected a JSON object")
    return created, level, f"{log_id}: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}"


def _log_id(log_name: str, where: str, project: str) -> str:
    if not log_name:
        raise BadRequest(f"{where}.logName: a log name is required (on the entry or the request)")
    found = _LOG_NAME.fullmatch(log_name)
    if found is None:
        raise BadRequest(f"{where}.logName: {log_name!r} is not projects/[PROJECT_ID]/logs/[LOG_ID] "
                         "(kiln keeps the logs of projects only)")
    if found.group(1) != project:
        raise BadRequest(f"{where}.logName: {log_name!r} is another project's log; this app writes to "
                         f"projects/{project}/logs/…", status=403)
    log_id = urllib.parse.unquote(found.group(2))
    if len(log_id) > MAX_LOG_ID_CHARS or not _LOG_ID.fullmatch(log_id):
        raise BadRequest(f"{where}.logName: the log id {log_id!r} must be 1 to {MAX_LOG_ID_CHARS} letters, digits, "
                         "forward slashes, underscores, hyphens or periods (URL-encoded in the name)")
    return log_id


def _known(obj: dict[str, Any], fields: frozenset[str], prefix: str) -> None:
    """Check ``obj``'s field names, renaming those given by their proto names (``dry_run``, ``text_payload``…: the
    JSON mapping accepts both, and google-cloud-logging sends some so) to their JSON names."""
    for name in list(obj):
        camel = _CAMEL.sub(lambda m: m.group(1).upper(), name)
        if camel not in fields:
            raise BadRequest(f'Invalid JSON payload received. Unknown name "{name}" at \'{prefix.rstrip(".")}\': '
                             "Cannot find field.")
        if camel != name:
            if camel in obj:
                raise BadRequest(f"Invalid JSON payload received. Field '{prefix}{camel}' is given twice "
                                 f"(as {camel} and {name})")
            obj[camel] = obj.pop(name)


def _string(obj: dict[str, Any], name: str, prefix: str) -> str:
    value = obj.get(name, "")
    if not isinstance(value, str):
        raise BadRequest(f"Invalid value at '{prefix}{name}': expected a string")
    return value


def _object(obj: dict[str, Any], name: str, prefix: str) -> None:
    if not isinstance(obj.get(name, {}), dict):
        raise BadRequest(f"Invalid value at '{prefix}{name}': expected a JSON object")


def _labels(obj: dict[str, Any], prefix: str) -> None:
    labels = obj.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise BadRequest(f"Invalid value at '{prefix}labels': expected a JSON object of strings")


def _timestamp(entry: dict[str, Any], name: str, where: str) -> float | None:
    value = entry.get(name)
    if value is None:
        return None
    found = _TIMESTAMP.fullmatch(value) if isinstance(value, str) else None
    try:
        if found is None:
            raise ValueError(value)
        whole, fraction, zone = found.groups()
        stamp = datetime.datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6].ljust(6, '0')}"
                                                f"{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        raise BadRequest(f"Invalid value at '{where}.{name}' (type.googleapis.com/google.protobuf.Timestamp), "
                         f"{json.dumps(value)}: an RFC 3339 time") from None
    return stamp.timestamp()


_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 501: "UNIMPLEMENTED"}


def _error(status: int, message: str) -> Answer:
    body = {"error": {"code": status, "message": message, "status": _STATUS[status]}}
    return status, [("Content-Type", "application/json; charset=UTF-8")], json.dumps(body).encode()
