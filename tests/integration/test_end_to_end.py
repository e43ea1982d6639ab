"""One request the whole way: HTTP -> router -> NATS -> runtime -> WSGI app -> datastore and back.

These start the suite exactly as ``kiln dev`` does (DevServer), with a guestbook
written against ``kiln.ext.db`` (tests/integration/kilnbook), on the embedded engine
and on a real Cassandra. (The bundled example on Google's SDK: test_guestbook.py.)
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
import pytest

from deploy.dev import DevOptions, DevServer
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.nats

GUESTBOOK = ROOT / "tests" / "integration" / "kilnbook"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _sign(base: str, content: str, book: str = "default") -> int:
    data = urllib.parse.urlencode({"content": content}).encode()
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        opener.open(urllib.request.Request(f"{base}sign?guestbook={book}", data=data), timeout=30)
    except urllib.error.HTTPError as err:
        return err.code
    return 200


def _greetings(base: str, book: str = "default") -> list[str]:
    status, _, body = _get(f"{base}api/greetings?guestbook={book}")
    assert status == 200, body
    return [g["content"] for g in json.loads(body)]


@pytest.fixture
def dev_server(tmp_path):
    servers = []

    def start(**kwargs) -> DevServer:
        opts = DevOptions(app_dir=GUESTBOOK, port=0, data_dir=tmp_path / "data", **kwargs)
        server = DevServer(opts)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_guestbook_writes_and_lists_a_greeting_through_the_whole_stack(dev_server):
    server = dev_server()
    assert _sign(server.url, "hello from the test") == 302
    assert _greetings(server.url) == ["hello from the test"]
    status, headers, body = _get(server.url)
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b"hello from the test" in body


def test_guestbook_lists_the_newest_greeting_first(dev_server):
    server = dev_server()
    for text in ("first", "second", "third"):
        _sign(server.url, text, book="order")
    assert _greetings(server.url, book="order") == ["third", "second", "first"]


def test_data_persists_across_restarts_and_clear_datastore_wipes_it(dev_server):
    first = dev_server()
    _sign(first.url, "kept")
    first.stop()
    second = dev_server()
    assert _greetings(second.url) == ["kept"]
    second.stop()
    third = dev_server(clear_datastore=True)
    assert _greetings(third.url) == []


def test_client_cannot_forge_app_engine_headers(dev_server, tmp_path):
    app_dir = tmp_path / "echo"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: echo.app\n")
    (app_dir / "echo.py").write_text(
        "import json\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'application/json'), ('Server', 'app-server')])\n"
        "    keys = {k: v for k, v in environ.items() if isinstance(v, str)}\n"
        "    return [json.dumps(keys).encode()]\n")
    server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=tmp_path / "echo-data"))
    server.start()
    try:
        status, headers, body = _get(server.url + "path?q=1", headers={"X-AppEngine-Cron": "true",
                                                                       "X-AppEngine-User-Email": "a@b.c"})
    finally:
        server.stop()
    environ = json.loads(body)
    assert status == 200
    assert "HTTP_X_APPENGINE_CRON" not in environ
    assert "HTTP_X_APPENGINE_USER_EMAIL" not in environ
    assert environ["PATH_INFO"] == "/path"
    assert environ["QUERY_STRING"] == "q=1"
    assert environ["APPLICATION_ID"] == "echo"
    assert environ["CURRENT_VERSION_ID"] == "v1.1"
    assert environ["SERVER_SOFTWARE"].startswith("Development/")
    assert len(environ["REQUEST_LOG_ID"]) == 32
    assert "KILN_RUNTIME_SERVICE_SECRET" not in environ
    assert headers["Server"] == "kiln"


def test_app_exception_gives_500_without_a_traceback(dev_server, tmp_path):
    app_dir = tmp_path / "boom"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: boom.app\n")
    (app_dir / "boom.py").write_text("def app(environ, start_response):\n    raise ValueError('secret detail')\n")
    server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=tmp_path / "boom-data"))
    server.start()
    try:
        status, _, body = _get(server.url)
        again, _, _ = _get(server.url)
    finally:
        server.stop()
    assert status == 500
    assert b"secret detail" not in body and b"Traceback" not in body
    assert again == 500  # the instance is still serving


@pytest.mark.cassandra
def test_guestbook_stores_its_greeting_in_real_cassandra(dev_server, cassandra_hosts):
    server = dev_server(storage="cassandra", cassandra_hosts=cassandra_hosts, clear_datastore=True)
    _sign(server.url, "stored in cassandra")
    assert _greetings(server.url) == ["stored in cassandra"]
    from cassandra.cluster import Cluster
    host, _, port = cassandra_hosts.rpartition(":")
    cluster = Cluster([host], port=int(port), protocol_version=5)
    try:
        rows = cluster.connect().execute(f"SELECT kind FROM {server._keyspace()}.entities").all()
    finally:
        cluster.shutdown()
    assert [r.kind for r in rows] == ["Greeting"]


def test_kiln_dev_command_serves_then_stops_every_child_on_sigterm(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "dev", str(GUESTBOOK), "--port", "0",
                             "--console-port", "0", "--data-dir", str(tmp_path / "data")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "serving app" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "kiln dev exited early"
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        assert _get(url.group(0))[0] == 200
        children = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True).stdout.split()
        assert len(children) >= 8  # nats-server, six services, runtime, router
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in output
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True).stdout.split()
    assert left == []
    logs = "".join(p.read_text() for p in (tmp_path / "data" / "run").glob("*.log"))
    assert "Traceback" not in logs


def test_bodies_larger_than_the_nats_payload_limit_arrive_whole(tmp_path):
    app_dir = tmp_path / "bigbody"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text(
        "import hashlib\n"
        "def app(environ, start_response):\n"
        "    body = environ['wsgi.input'].read(int(environ.get('CONTENT_LENGTH') or 0))\n"
        "    start_response('200 OK', [('Content-Type', 'application/octet-stream'),\n"
        "                              ('X-Request-Sha256', hashlib.sha256(body).hexdigest())])\n"
        "    return [body[::-1] * 2]\n")
    server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=tmp_path / "bigbody-data"))
    server.start()
    try:
        payload = bytes(range(256)) * (12 * 1024)  # 3 MiB, past NATS's default 1 MiB payload
        req = urllib.request.Request(server.url, data=payload, method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            headers, body = resp.headers, resp.read()
    finally:
        server.stop()
    import hashlib
    assert headers["X-Request-Sha256"] == hashlib.sha256(payload).hexdigest()
    assert body == payload[::-1] * 2


def _dev_app(tmp_path, name, index_yaml=None):
    app_dir = tmp_path / name
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text("def app(environ, start_response):\n"
                                     "    start_response('200 OK', [])\n    return [b'ok']\n")
    if index_yaml is not None:
        (app_dir / "index.yaml").write_text(index_yaml)
    return app_dir


def _datastore(server):
    from kiln_platform import auth
    from kiln.pb.datastore.v1 import datastore_pb2_grpc
    channel = grpc.insecure_channel(server.addresses["datastore_svc"])
    token = auth.mint_app_token(server._secret, server.app_id)
    return channel, datastore_pb2_grpc.DatastoreServiceStub(channel), (("authorization", f"Bearer {token}"),)


def _sorted_query():
    from kiln.pb.datastore.v1 import datastore_pb2 as pb
    query = pb.Query(kind="Note")
    query.filter.property_filter.property.name = "owner"
    query.filter.property_filter.op = pb.PropertyFilter.OPERATOR_EQUAL
    query.filter.property_filter.value.string_value = "ann"
    query.order.add(property=pb.PropertyReference(name="date"), direction=pb.PropertyOrder.DIRECTION_DESCENDING)
    return pb.RunQueryRequest(query=query)


def test_kiln_dev_adds_the_indexes_queries_need_to_index_yaml(tmp_path):
    app_dir = _dev_app(tmp_path, "autoindex")
    server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=tmp_path / "autoindex-data"))
    server.start()
    try:
        channel, stub, md = _datastore(server)
        stub.RunQuery(_sorted_query(), metadata=md)
        channel.close()
    finally:
        server.stop()
    text = (app_dir / "index.yaml").read_text()
    assert "# AUTOGENERATED" in text
    assert "- kind: Note\n  properties:\n  - name: owner\n  - name: date\n    direction: desc" in text


def test_kiln_dev_builds_the_indexes_index_yaml_declares(tmp_path):
    from kiln.pb.datastore.v1 import datastore_pb2 as pb
    app_dir = _dev_app(tmp_path, "declared", "indexes:\n- kind: Note\n  properties:\n  - name: owner\n"
                                             "  - name: date\n    direction: desc\n")
    server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=tmp_path / "declared-data"))
    server.start()
    try:
        channel, stub, md = _datastore(server)
        indexes = stub.ListIndexes(pb.ListIndexesRequest(), metadata=md).indexes
        channel.close()
    finally:
        server.stop()
    assert [(i.kind, [p.property.name for p in i.properties]) for i in indexes] == [("Note", ["owner", "date"])]
    assert "AUTOGENERATED" not in (app_dir / "index.yaml").read_text()


def test_kiln_dev_refuses_a_malformed_index_yaml_naming_the_line(tmp_path):
    from kiln.errors import ConfigError
    app_dir = _dev_app(tmp_path, "badindex", "indexes:\n- kind: Note\n  properties:\n  - name: a\n    direction: up\n")
    with pytest.raises(ConfigError) as err:
        DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=tmp_path / "badindex-data"))
    assert "index.yaml:5: indexes[0].properties[0].direction" in str(err.value)
