"""Small apps run under ``kiln dev`` for the runtime's integration tests."""

from __future__ import annotations

import contextlib
import http.client
import pathlib
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping

from deploy.dev import DevOptions, DevServer

THREADSAFE_YAML = ("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                   "handlers:\n- url: /.*\n  script: main.app\n")


@contextlib.contextmanager
def running(app_dir: pathlib.Path, files: Mapping[str, str], *, app_yaml: str = THREADSAFE_YAML,
            request_deadline: float = 60.0, urlfetch_allow_internal: str = "",
            isolation: str = "none") -> Iterator[DevServer]:
    """Write the app's files and serve it with every kiln part, stopping everything afterwards.

    The router waits ``request_deadline`` + 5 s for an instance's answer (``kiln dev``'s setting).
    """
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "app.yaml").write_text(app_yaml)
    for name, text in files.items():
        (app_dir / name).write_text(text)
    server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data",
                                  request_deadline=request_deadline,
                                  urlfetch_allow_internal=urlfetch_allow_internal, isolation=isolation))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fetch(server: DevServer, path: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request through the router: status, headers, body (errors are answers, not exceptions)."""
    req = urllib.request.Request(server.url.rstrip("/") + path, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def request(server: DevServer, path: str, *, method: str = "GET", headers: Mapping[str, str] | None = None,
            body: bytes | str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request through the router with kiln dev's Host: status, headers (lower-case names), body."""
    address, _, port = server.addresses["router"].rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Host": f"localhost:{port}", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def post_to_upload_form(server: DevServer, form_page: bytes, data: bytes, filename: str, content_type: str,
                        *, fields: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Post ``data`` as the file input ``file`` (and ``fields``) to the action of the first form in ``form_page``
    (an upload URL, as Google's Blobstore samples make): status, headers (lower-case names), body."""
    found = re.search(rb'<form action="([^"]+)"', form_page)
    assert found is not None, form_page
    action = urllib.parse.urlsplit(found.group(1).decode())
    boundary = "samplephotoboundary"
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
              f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n"]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
              for name, value in (fields or {}).items()]
    return request(server, action.path, method="POST", body=b"".join(parts) + f"--{boundary}--\r\n".encode(),
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def sign_in(server: DevServer, email: str, *, goto: str = "/") -> str:
    """Sign in on kiln dev's sign-in page; the session cookie (``name=value``)."""
    status, headers, _ = request(server, "/_ah/login?" + urllib.parse.urlencode({"continue": goto}), method="POST",
                                 body=urllib.parse.urlencode({"email": email}),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302
    return headers["set-cookie"].split(";")[0]


def wait_for(predicate: Callable[[], object], seconds: float) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not true within {seconds:g} s: {predicate}")


def runtime_below(wrapper_pid: int) -> int:
    """The host pid of the runtime process under an instance's wrapper (past the init of its PID namespace)."""
    todo = [wrapper_pid]
    while todo:
        pid = todo.pop()
        if pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"runtime"]:
            return pid
        todo += [int(c) for c in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    raise AssertionError(f"no runtime process below {wrapper_pid}")
