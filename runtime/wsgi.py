"""Turning a NATS HttpRequest into a WSGI call and the app's answer into an HttpResponse.

App Engine's CGI/WSGI environment is built here: the standard WSGI keys, the
request headers as ``HTTP_*``, and App Engine's own variables
(``APPLICATION_ID``, ``CURRENT_VERSION_ID``, ``INSTANCE_ID``, ``REQUEST_LOG_ID``,
``SERVER_SOFTWARE``, ``AUTH_DOMAIN``, ``USER_*``…). The environ is a fresh dict
per request, so concurrent requests never see each other's values.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from kiln.pb.runtime.v1 import http_pb2

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

SERVER_VERSION = "0.1"


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


def build_environ(req: http_pb2.HttpRequest, info: InstanceInfo) -> dict[str, Any]:
    """The WSGI environ for one request."""
    environ: dict[str, Any] = dict(info.env_variables)
    environ.update({
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote(req.path, encoding="latin-1"),
        "QUERY_STRING": req.query_string,
        "SERVER_NAME": req.host,
        "SERVER_PORT": str(req.port or (443 if req.scheme == "https" else 80)),
        "SERVER_PROTOCOL": req.protocol or "HTTP/1.1",
        "REMOTE_ADDR": req.remote_addr,
        "HTTPS": "on" if req.scheme == "https" else "off",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": req.scheme or "http",
        "wsgi.input": io.BytesIO(req.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "APPLICATION_ID": info.app_id,
        "CURRENT_VERSION_ID": f"{info.version_id}.{info.minor_version}",
        "INSTANCE_ID": info.instance_id,
        "AUTH_DOMAIN": info.auth_domain,
        "DEFAULT_VERSION_HOSTNAME": info.default_hostname,
        "REQUEST_LOG_ID": req.request_id,
        "REQUEST_ID_HASH": req.request_id[:8].upper(),
        "SERVER_SOFTWARE": f"Development/{SERVER_VERSION}" if info.dev else f"kiln/{SERVER_VERSION}",
        "USER_EMAIL": req.user.email,
        "USER_ID": req.user.user_id,
        "USER_IS_ADMIN": "1" if req.user.is_admin else "0",
        "USER_NICKNAME": req.user.email.split("@")[0] if req.user.email else "",
        "USER_ORGANIZATION": "",
    })
    for header in req.headers:
        name = header.name.upper().replace("-", "_")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = header.value
        elif name == "CONTENT_LENGTH":
            continue  # recomputed from the body below: the body is authoritative
        else:
            key = "HTTP_" + name
            environ[key] = f"{environ[key]},{header.value}" if key in environ else header.value
    environ["CONTENT_LENGTH"] = str(len(req.body))
    environ.setdefault("CONTENT_TYPE", "")
    return environ


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
        resp.headers.add(name=str(name), value=str(value))
    return resp
