"""Turning a NATS HttpRequest into a WSGI call and the app's answer into an HttpResponse.

App Engine's CGI/WSGI environment is built here: the standard WSGI keys, the
request headers as ``HTTP_*``, and App Engine's own variables
(``APPLICATION_ID``, ``CURRENT_VERSION_ID``, ``INSTANCE_ID``, ``REQUEST_LOG_ID``,
``SERVER_SOFTWARE``, ``AUTH_DOMAIN``, ``USER_*``…). The environ is a fresh dict
per request, so concurrent requests never see each other's values.

Header values arrive as the bytes the client sent and become ISO-8859-1 text
(PEP 3333); the app's response header values go back as their ISO-8859-1
bytes, and one HTTP cannot carry (:mod:`kiln_platform.httpfields`) turns the
response into a 500 (:class:`BadResponseHeaderError`), as gunicorn and waitress
refuse them.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import re
import runpy
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from kiln.pb.runtime.v1 import http_pb2
from kiln_platform import httpfields

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

SERVER_VERSION = "0.1"
# Header names that become HTTP_* variables: letters, digits and "-". A name with "_" (or anything else) would
# share a variable with its "-" spelling, so it is dropped here as the router drops it (router.headers).
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
# Repeated headers become one variable, joined with "," (RFC 9110 5.3), except Cookie: its pairs are separated by
# "; " (RFC 6265 5.4; HTTP/2 splits and rejoins it the same way, RFC 9113 8.2.3), and a "," would make two cookies
# one (``a=1,b=2`` is one cookie ``a`` to every cookie parser).
_JOINERS = {"COOKIE": "; "}
# The CGI name of X-AppEngine-QueueName: a push task's request (request_environ).
_QUEUE_NAME = "X_APPENGINE_QUEUENAME"


class BadResponseHeaderError(ValueError):
    """The app answered with a header HTTP cannot carry (:mod:`kiln_platform.httpfields`); the client gets 500."""


@dataclasses.dataclass(frozen=True)
class InstanceInfo:
    """Per-instance values copied into every environ."""

    app_id: str
    version_id: str
    minor_version: int
    instance_id: str
    auth_domain: str
    default_hostname: str
    dev: bool
    env_variables: dict[str, str]
    # What every request's environ starts from (see _instance_environ): computed once, here.
    base_environ: dict[str, Any] = dataclasses.field(init=False, repr=False, compare=False)
    # The keys of a request's environ whose values are not strings (see string_variables): computed once, here.
    other_keys: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base = _instance_environ(self)
        object.__setattr__(self, "base_environ", base)  # frozen: set once, never changed
        others = {key for key, value in base.items() if not isinstance(value, str)} | _REQUEST_OTHER_KEYS
        object.__setattr__(self, "other_keys", tuple(sorted(others)))


# The keys build_environ sets per request to values that are not strings (every other value it sets is a string).
_REQUEST_OTHER_KEYS = frozenset({"wsgi.input", "wsgi.errors"})


def string_variables(environ: dict[str, Any], info: InstanceInfo) -> dict[str, str]:
    """A new dict of the string values of ``environ`` (one request's, from :func:`request_environ` plus string
    values the runtime adds, such as its API ticket): the request's ``os.environ`` (the request scope's overlay).

    The same as filtering every value by type, made by one copy and the removal of the few keys known to hold
    other values (:attr:`InstanceInfo.other_keys`).
    """
    found = environ.copy()
    for key in info.other_keys:
        found.pop(key, None)
    return found


def build_environ(req: http_pb2.HttpRequest, info: InstanceInfo) -> dict[str, Any]:
    """The WSGI environ for one request (see :func:`request_environ`)."""
    return request_environ(req, info)[0]


def request_environ(req: http_pb2.HttpRequest, info: InstanceInfo) -> tuple[dict[str, Any], bool]:
    """The WSGI environ for one request, and whether it is a push task's (an ``X-AppEngine-QueueName`` header).

    What is the same for every request of the instance is computed once (:func:`_instance_environ`); a request
    copies it and adds its own values, in the order that decides which wins: the app's ``env_variables`` first, then
    the request's and App Engine's variables, then its headers, then the variables only the runtime sets. The task
    flag comes from the same pass over the headers (the runtime's deadline length needs it; only the router sets
    the header, on the task queue's signed requests).
    """
    environ = info.base_environ.copy()
    task = False
    https = req.scheme == "https"
    user = req.user
    email = user.email
    environ.update({
        "REQUEST_METHOD": req.method,
        "PATH_INFO": urllib.parse.unquote(req.path, encoding="latin-1"),
        "QUERY_STRING": req.query_string,
        "SERVER_NAME": req.host,
        "SERVER_PORT": str(req.port or (443 if https else 80)),
        "SERVER_PROTOCOL": req.protocol or "HTTP/1.1",
        "REMOTE_ADDR": req.remote_addr,
        "HTTPS": "on" if https else "off",
        "wsgi.url_scheme": req.scheme or "http",
        "wsgi.input": io.BytesIO(req.body),
        "wsgi.errors": sys.stderr,  # read per request: the runtime replaces it once app code may run
        "REQUEST_LOG_ID": req.request_id,
        "REQUEST_ID_HASH": req.request_id[:8].upper(),
        "USER_EMAIL": email,
        "USER_ID": user.user_id,
        "USER_IS_ADMIN": "1" if user.is_admin else "0",
        "USER_NICKNAME": email.split("@")[0] if email else "",
        # The router's signature over the signed-in user: kiln.api.mail shows it to mail_svc (sender rule).
        "KILN_USER_PROOF": user.proof,
    })
    for header in req.headers:
        name = _cgi_name(header.name)
        if name is None:
            continue
        value = httpfields.text(header.value)  # the bytes as sent, one character each (PEP 3333)
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value  # the router refuses a request with two
        elif name == "CONTENT_LENGTH":
            continue  # recomputed from the body below: the body is authoritative
        else:
            if name == _QUEUE_NAME:
                task = True
            key = "HTTP_" + name
            environ[key] = f"{environ[key]}{_JOINERS.get(name, ',')}{value}" if key in environ else value
    environ["CONTENT_LENGTH"] = str(len(req.body))
    environ.setdefault("CONTENT_TYPE", "")
    # The runtime's own variables: no header becomes one (_cgi_name), nor does an env_variables entry (base_environ).
    environ.update(appengine_headers(req, info))
    if "HTTP_X_APPENGINE_QUEUENAME" in environ:
        # A push task (only the router sets the header, for the task queue's signed requests) comes from App Engine's
        # task queue address, which the SDK's deferred handler checks outside the development server.
        environ["REMOTE_ADDR"] = TASK_QUEUE_REMOTE_ADDR
    return environ, task


def _instance_environ(info: InstanceInfo) -> dict[str, Any]:
    """The part of every request's environ that only depends on the instance (computed once per instance).

    Every key here that a request also sets is set again by :func:`build_environ`, so its position in the dict, and
    what it overrides, stay as if it were built per request.
    """
    found: dict[str, Any] = {key: value for key, value in info.env_variables.items() if key not in _RUNTIME_OWNED}
    found.update({
        "REQUEST_METHOD": "",
        "SCRIPT_NAME": "",
        "PATH_INFO": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "",
        "SERVER_PORT": "",
        "SERVER_PROTOCOL": "",
        "REMOTE_ADDR": "",
        "HTTPS": "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "",
        "wsgi.input": None,
        # The body is in memory and seekable: WebOb (webapp2's base) reads it in place instead of copying it
        # into a temporary file, which the sandbox refuses (webapp2 copies any body: request_body_tempfile_limit 0).
        "webob.is_body_seekable": True,
        "wsgi.errors": None,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "APPLICATION_ID": info.app_id,
        "CURRENT_VERSION_ID": f"{info.version_id}.{info.minor_version}",
        "INSTANCE_ID": info.instance_id,
        "AUTH_DOMAIN": info.auth_domain,
        "DEFAULT_VERSION_HOSTNAME": info.default_hostname,
        "REQUEST_LOG_ID": "",
        "REQUEST_ID_HASH": "",
        "SERVER_SOFTWARE": f"Development/{SERVER_VERSION}" if info.dev else f"kiln/{SERVER_VERSION}",
        "USER_EMAIL": "",
        "USER_ID": "",
        "USER_IS_ADMIN": "",
        "USER_NICKNAME": "",
        "USER_ORGANIZATION": "",
        "KILN_USER_PROOF": "",
    })
    return found


@functools.lru_cache(maxsize=1024)
def _cgi_name(name: str) -> str | None:
    """A request header's CGI name (``X-Foo`` -> ``X_FOO``), or ``None`` for a name that must not become a variable:
    not a token of letters, digits and "-", or one of the runtime's own ``X-AppEngine-*`` variables
    (:data:`_RUNTIME_OWNED`: whatever reached the runtime under those names is not the runtime's).

    Header names come from a small set (the client's usual headers and the router's): cached, bounded.
    """
    if not _HEADER_NAME.fullmatch(name):
        return None
    cgi = name.upper().replace("-", "_")
    return None if "HTTP_" + cgi in _RUNTIME_OWNED else cgi


#: App Engine's REMOTE_ADDR for push task requests.
TASK_QUEUE_REMOTE_ADDR = "0.1.0.2"


# The X-AppEngine-* variables only the runtime sets (appengine_headers, and the API ticket).
_RUNTIME_OWNED = frozenset({
    "HTTP_X_APPENGINE_USER_EMAIL", "HTTP_X_APPENGINE_USER_ID", "HTTP_X_APPENGINE_USER_NICKNAME",
    "HTTP_X_APPENGINE_USER_ORGANIZATION", "HTTP_X_APPENGINE_USER_IS_ADMIN", "HTTP_X_APPENGINE_AUTH_DOMAIN",
    "HTTP_X_APPENGINE_DEFAULT_VERSION_HOSTNAME", "HTTP_X_APPENGINE_REQUEST_LOG_ID", "HTTP_X_APPENGINE_HTTPS",
    "HTTP_X_APPENGINE_USER_IP", "HTTP_X_APPENGINE_API_TICKET", "HTTP_X_APPENGINE_DEV_REQUEST_ID"})


def appengine_headers(req: http_pb2.HttpRequest, info: InstanceInfo) -> dict[str, str]:
    """The ``X-AppEngine-*`` variables Google's SDK reads, from what the router established (never the client's).

    The router drops every ``X-AppEngine-*`` header a client sends; these are the runtime's, as App Engine's front
    end sent them (the SDK's middleware turns them into ``USER_EMAIL``, ``AUTH_DOMAIN``…). The API ticket is added
    per request by the runtime (:mod:`kiln.sdk.tickets`).
    """
    out = {
        "HTTP_X_APPENGINE_AUTH_DOMAIN": info.auth_domain,
        "HTTP_X_APPENGINE_DEFAULT_VERSION_HOSTNAME": info.default_hostname,
        "HTTP_X_APPENGINE_REQUEST_LOG_ID": req.request_id,
        "HTTP_X_APPENGINE_HTTPS": "on" if req.scheme == "https" else "off",
        "HTTP_X_APPENGINE_USER_IP": req.remote_addr,
        "HTTP_X_APPENGINE_USER_IS_ADMIN": "1" if req.user.is_admin else "0",
    }
    if req.user.email:  # App Engine sent the user's headers only for a signed-in user
        out.update({
            "HTTP_X_APPENGINE_USER_EMAIL": req.user.email,
            "HTTP_X_APPENGINE_USER_ID": req.user.user_id,
            "HTTP_X_APPENGINE_USER_NICKNAME": req.user.email.split("@")[0],
        })
    return out


def call_app(app: WsgiApp, environ: dict[str, Any]) -> http_pb2.HttpResponse:
    """Run one WSGI request to completion (blocking; called on a worker thread)."""
    state: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and state.get("sent"):
            raise exc_info[1].with_traceback(exc_info[2])
        state["status"], state["headers"] = status, headers
        return chunks.append

    result = app(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                state["sent"] = True
                chunks.append(bytes(chunk))
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if "status" not in state:
        raise RuntimeError("the WSGI app returned without calling start_response")
    code = int(str(state["status"]).split(" ", 1)[0])
    resp = http_pb2.HttpResponse(status=code, body=b"".join(chunks))
    for name, value in state["headers"]:
        _add_header(resp, str(name), str(value))
    return resp


def _add_header(resp: http_pb2.HttpResponse, name: str, value: str) -> None:
    """Add the app's header ``name: value`` (ISO-8859-1 text, PEP 3333), or :class:`BadResponseHeaderError`."""
    try:
        raw = httpfields.wire(value)
    except UnicodeEncodeError:
        raise BadResponseHeaderError(f"the app's response header {name[:80]!r} has a value that is not ISO-8859-1 "
                                     f"text (PEP 3333: encode it, e.g. RFC 8187 for file names)") from None
    problem = httpfields.response_problem(name, raw)
    if problem is not None:
        raise BadResponseHeaderError(f"the app's response header cannot be sent: {problem}")
    resp.headers.add(name=name, value=raw)


class CgiScript:
    """A CGI handler (``script: file.py``) with App Engine's app caching.

    The first request runs the file as ``__main__``. If it defines ``main()``,
    the module is kept and later requests only call ``main()``; otherwise the
    whole file runs again on every request. The request's environment is in
    ``os.environ`` (the runtime makes it request-local), the body on
    ``sys.stdin``; what the script prints to ``sys.stdout`` is the response:
    headers (``Status:`` sets the status), a blank line, the body. CGI apps
    are never threadsafe, so one request runs at a time and swapping
    ``sys.stdin``/``sys.stdout`` for it is safe.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._main: Callable[[], Any] | None = None

    def __call__(self, environ: dict[str, Any]) -> http_pb2.HttpResponse:
        out = io.BytesIO()
        stdout = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        stdin = io.TextIOWrapper(environ["wsgi.input"], encoding="utf-8", newline="")
        saved = sys.stdin, sys.stdout
        sys.stdin, sys.stdout = stdin, stdout
        try:
            if self._main is not None:
                self._main()
            else:
                namespace = runpy.run_path(self.path, run_name="__main__")
                main = namespace.get("main")
                if callable(main):
                    self._main = main
        finally:
            sys.stdin, sys.stdout = saved
            stdout.flush()
        return parse_cgi_output(out.getvalue())


def parse_cgi_output(raw: bytes) -> http_pb2.HttpResponse:
    """A CGI script's output as a response; malformed output raises ValueError."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    if not sep:
        raise ValueError("CGI output has no blank line after its headers")
    resp = http_pb2.HttpResponse(status=200, body=body)
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise ValueError(f"CGI output has a malformed header line {line[:80]!r}")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code = value.split(" ", 1)[0]
            if not code.isdigit() or not 100 <= int(code) <= 599:
                raise ValueError(f"CGI Status header is not a status: {value!r}")
            resp.status = int(code)
        else:
            _add_header(resp, name, value)
    if resp.status == 200 and any(h.name.lower() == "location" for h in resp.headers):
        resp.status = 302
    return resp
