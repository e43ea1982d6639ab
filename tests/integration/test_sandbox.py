"""The sandbox: every escape App Engine forbade is refused with a clear error and the app keeps running;
through router, NATS and runtime."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import ctypes, json, os, pathlib, shutil, signal, socket, subprocess, sys
    HERE = pathlib.Path(__file__).parent

    ATTEMPTS = {
        "write-file": lambda: open(HERE / "new.txt", "w"),
        "append-file": lambda: open(HERE / "main.py", "a"),
        "write-tmp": lambda: open("/tmp/kiln-sandbox-escape.txt", "wb"),
        "os-open-create": lambda: os.open(str(HERE / "x"), os.O_CREAT | os.O_WRONLY),
        "remove": lambda: os.remove(HERE / "main.py"),
        "rename": lambda: os.rename(HERE / "main.py", HERE / "moved.py"),
        "mkdir": lambda: os.mkdir(HERE / "dir"),
        "chmod": lambda: os.chmod(HERE / "main.py", 0o777),
        "rmtree": lambda: shutil.rmtree(HERE / "static"),
        "subprocess": lambda: subprocess.run(["true"]),
        "os-system": lambda: os.system("true"),
        "exec": lambda: os.execv("/bin/true", ["true"]),
        "fork": lambda: os.fork(),
        "kill": lambda: os.kill(os.getppid(), signal.SIGTERM),
        "socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
        "raw-socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        "urllib": lambda: __import__("urllib.request").request.urlopen("http://127.0.0.1:8080/"),
        "ctypes": lambda: ctypes.CDLL("libc.so.6"),
        "c-extension": lambda: __import__("evil_ext"),
    }

    def app(environ, start_response):
        name = environ["PATH_INFO"].strip("/")
        if name == "read-own-file":
            body = {"ok": (HERE / "data.txt").read_text()}
        elif name == "process-environ":
            raw = pathlib.Path("/proc/self/environ").read_bytes()
            body = {"environ": raw.decode("latin-1")}
        elif name in ATTEMPTS:
            try:
                ATTEMPTS[name]()
                body = {"escaped": True}
            except Exception as exc:
                body = {"error": type(exc).__name__, "message": str(exc),
                        "permission": isinstance(exc, PermissionError)}
        else:
            body = {"alive": True}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')

ESCAPES = ["write-file", "append-file", "write-tmp", "os-open-create", "remove", "rename", "mkdir", "chmod",
           "rmtree", "subprocess", "os-system", "exec", "fork", "kill", "socket", "raw-socket", "ctypes"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("sandbox")
    (app_dir / "static").mkdir()
    (app_dir / "static" / "keep.txt").write_text("keep")
    (app_dir / "evil_ext.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF not really")
    with running(app_dir, {"main.py": MAIN, "data.txt": "the app's own data"}) as srv:
        srv.app_dir = app_dir
        yield srv


def attempt(server, name):
    status, _, body = fetch(server, f"/{name}")
    assert status == 200, body
    return json.loads(body)


@pytest.mark.parametrize("name", ESCAPES)
def test_escape_is_refused_with_a_permission_error_naming_the_rule(server, name):
    result = attempt(server, name)
    assert "escaped" not in result
    assert result["error"] == "SandboxError" and result["permission"] is True
    assert result["message"].startswith("kiln sandbox: apps cannot")
    assert attempt(server, "still-alive") == {"alive": True}


def test_urllib_goes_through_url_fetch_which_refuses_kilns_own_network(server):
    result = attempt(server, "urllib")
    assert result["error"] == "URLError"  # urllib wraps the refusal, as it wraps any connection error
    assert "URL Fetch: ForbiddenDestinationError" in result["message"] and "127.0.0.1" in result["message"]


def test_c_extension_shipped_with_the_app_is_refused(server):
    result = attempt(server, "c-extension")  # an ImportError, so that pure-Python fallbacks are taken
    assert result["error"] == "SandboxImportError" and "evil_ext" in result["message"]
    assert result["message"].startswith("kiln sandbox: apps cannot load the C extension")


def test_nothing_was_changed_on_disk(server):
    for name in ("write-file", "remove", "rename", "mkdir", "chmod", "rmtree", "append-file"):
        attempt(server, name)
    app_dir = server.app_dir
    assert not (app_dir / "new.txt").exists() and not (app_dir / "moved.py").exists()
    assert (app_dir / "main.py").read_text() == MAIN
    assert (app_dir / "static" / "keep.txt").exists()
    assert oct((app_dir / "main.py").stat().st_mode & 0o777) != oct(0o777)


def test_reading_the_apps_own_files_works(server):
    assert attempt(server, "read-own-file") == {"ok": "the app's own data"}


def test_the_instance_process_holds_no_secret_only_its_apps_token(server):
    """App code can read its process's initial environment; no secret that signs tokens may be in it."""
    environ = dict(item.split("=", 1) for item in attempt(server, "process-environ")["environ"].split("\0") if item)
    assert not [name for name in environ if "SECRET" in name]
    assert server._secret not in "".join(environ.values())
    assert environ["KILN_RUNTIME_APP_TOKEN"].startswith(server.app_id + ".")
    # NATS: the app's own restricted user (kiln_platform.natsauth), never the platform's.
    assert f"//app-{server.app_id}:" in environ["KILN_RUNTIME_NATS_URL"]
    assert server.nats_url.split("@")[0] not in "".join(environ.values())
