"""OpenTelemetry traces (kiln_platform/tracing.py) of real requests: a router, an instance manager's runtime
instance and a datastore_svc export their spans over OTLP/HTTP to a collector this test runs in-process (a small
HTTP server that decodes OTLP's own protobufs from opentelemetry-proto)."""

from __future__ import annotations

import http.client
import http.server
import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from kiln_platform.supervisor import python_module
from tests.integration.conftest import service_env

pytestmark = pytest.mark.nats

APP = "traced"
HOST = f"{APP}.example.test"
MAIN = ("import json, os\n"
        "from kiln.api import datastore\n"
        "\n"
        "def app(environ, start_response):\n"
        "    entity = datastore.Entity('Visit')\n"
        "    entity['path'] = environ['PATH_INFO']\n"
        "    datastore.Get(datastore.Put(entity))\n"
        "    start_response('200 OK', [('Content-Type', 'application/json')])\n"
        "    return [json.dumps({'request_id': os.environ['REQUEST_LOG_ID'],\n"
        "                        'traceparent': environ.get('HTTP_TRACEPARENT')}).encode()]\n")
APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"


class Span:
    """One span the collector received, with its process's service.name."""

    def __init__(self, service: str, span: trace_pb2.Span) -> None:
        self.service = service
        self.name = span.name
        self.kind = span.kind
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex()
        self.attributes: dict[str, Any] = {
            a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (``POST /v1/traces``, binary protobuf)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.posts = 0
        self._changed = threading.Condition()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                assert self.path == "/v1/traces", self.path
                assert self.headers.get("Content-Type") == "application/x-protobuf"
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with collector._changed:
                    collector.posts += 1
                    for resource_spans in request.resource_spans:
                        service = next(a.value.string_value for a in resource_spans.resource.attributes
                                       if a.key == "service.name")
                        for scope_spans in resource_spans.scope_spans:
                            collector.spans.extend(Span(service, s) for s in scope_spans.spans)
                    collector._changed.notify_all()
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, found: Callable[[list[Span]], Any], seconds: float = 30.0) -> Any:
        """The first truthy ``found(spans)`` as spans arrive; fails after ``seconds``."""
        deadline = time.monotonic() + seconds
        with self._changed:
            while True:
                result = found(self.spans)
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    received = [(s.service, s.name) for s in self.spans]
                    raise AssertionError(f"not received in {seconds} s; spans: {received}")
                self._changed.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def traced_env() -> dict[str, str]:
    # The SDK's own setting (read by every part): export each batch after 50 ms rather than 5 s.
    return {**service_env(), "OTEL_BSP_SCHEDULE_DELAY": "50"}


@pytest.fixture(scope="module")
def collector():
    found = Collector()
    yield found
    found.close()


@pytest.fixture(scope="module")
def stack(supervisor, nats_url, tmp_path_factory, collector):
    """A datastore_svc, a router and an instance manager, all tracing to ``collector``; and a second router that
    trusts clients' traceparent. Their addresses: (router, trusting router, datastore_svc)."""
    run = supervisor.run_dir
    env = traced_env()
    datastore = supervisor.start("datastore_svc-traced", python_module(
        "datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(run / "datastore-traced.addr"),
        "--data-dir", str(tmp_path_factory.mktemp("datastore-traced")), "--otlp-endpoint", collector.endpoint),
        env=env, ready_file=run / "datastore-traced.addr")
    app_dir = tmp_path_factory.mktemp(APP)
    (app_dir / "app.yaml").write_text(APP_YAML)
    (app_dir / "main.py").write_text(MAIN)
    routers = []
    for name, extra in (("router-traced", []), ("router-trusting", ["--trust-traceparent"])):
        routers.append(supervisor.start(name, python_module(
            "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
            "--apps", f"{APP}=v1", "--app-dirs", f"{APP}/v1={app_dir}", "--otlp-endpoint", collector.endpoint,
            *extra, "--ready-file", str(run / f"{name}.addr")), env=env, ready_file=run / f"{name}.addr"))
    supervisor.start("manager-traced", python_module(
        "runtime.manager", "--app-dir", str(app_dir), "--app-id", APP, "--version-id", "v1",
        "--nats-url", nats_url, "--run-dir", str(run / "traced-instances"),
        "--ready-file", str(run / "manager-traced.ready"), "--", "--listen", "127.0.0.1:0",
        "--datastore-addr", datastore.address, "--otlp-endpoint", collector.endpoint),
        env=env, ready_file=run / "manager-traced.ready")
    deadline = time.monotonic() + 60
    while get(routers[0].address)[0] != 200:
        assert time.monotonic() < deadline, "the app never answered"
    return routers[0].address, routers[1].address, datastore.address


def get(address: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.request("GET", "/visit/1234", headers={"Host": HOST, **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if resp.status == 200 else {}
    finally:
        conn.close()


def trace_of(collector: Collector, request_id: str) -> tuple[Span, Span, list[Span]]:
    """The request's router span, runtime span and datastore spans, once all have arrived."""
    def complete(spans: list[Span]) -> tuple[Span, Span, list[Span]] | None:
        runtime = [s for s in spans
                   if s.service == "kiln-runtime" and s.attributes.get("kiln.request_id") == request_id]
        if not runtime:
            return None
        trace = [s for s in spans if s.trace_id == runtime[0].trace_id]
        router = [s for s in trace if s.service == "kiln-router"]
        datastore = [s for s in trace if s.service == "kiln-datastore"]
        return (router[0], runtime[0], datastore) if router and len(datastore) >= 2 else None
    return collector.wait_for(complete)


def test_one_request_is_one_trace_from_the_router_through_the_runtime_to_the_datastore(stack, collector):
    status, body = get(stack[0])
    assert status == 200
    router, runtime, datastore = trace_of(collector, body["request_id"])
    assert router.trace_id == runtime.trace_id == datastore[0].trace_id
    assert router.parent_id == ""  # the trace starts at the router
    assert runtime.parent_id == router.span_id
    assert {s.parent_id for s in datastore} == {runtime.span_id}
    assert {s.name for s in datastore} == {"kiln.pb.datastore.v1.DatastoreService/Put",
                                          "kiln.pb.datastore.v1.DatastoreService/Get"}


def test_span_names_and_attributes_are_bounded_not_the_client_s_path(stack, collector):
    status, body = get(stack[0])
    assert status == 200
    router, runtime, datastore = trace_of(collector, body["request_id"])
    assert (router.name, router.kind) == ("router GET", SERVER)
    assert (runtime.name, runtime.kind) == ("runtime GET", SERVER)
    assert all(s.kind == SERVER for s in datastore)
    assert router.attributes["http.response.status_code"] == 200
    assert (router.attributes["kiln.app"], router.attributes["kiln.version"]) == (APP, "v1")
    assert runtime.attributes["http.response.status_code"] == 200
    assert {s.attributes["rpc.grpc.status_code"] for s in datastore} == {0}
    assert not any("/visit" in s.name for s in (router, runtime, *datastore))


def test_a_client_s_traceparent_is_not_the_parent_by_default_and_reaches_the_app(stack, collector):
    status, body = get(stack[0], {"traceparent": CLIENT_TRACEPARENT})
    assert status == 200
    assert body["traceparent"] == CLIENT_TRACEPARENT  # an ordinary header for the app
    router, _, _ = trace_of(collector, body["request_id"])
    assert router.trace_id != CLIENT_TRACE
    assert router.parent_id == ""


def test_a_router_that_trusts_traceparent_continues_the_client_s_trace(stack, collector):
    status, body = get(stack[1], {"traceparent": CLIENT_TRACEPARENT})
    assert status == 200
    router, runtime, _ = trace_of(collector, body["request_id"])
    assert router.trace_id == runtime.trace_id == CLIENT_TRACE
    assert router.parent_id == "b7ad6b7169203331"
    assert runtime.parent_id == router.span_id


def test_a_malformed_client_traceparent_starts_a_new_trace_even_when_trusted(stack, collector):
    status, body = get(stack[1], {"traceparent": "00-not-a-trace-01"})
    assert status == 200
    router, runtime, _ = trace_of(collector, body["request_id"])
    assert router.parent_id == ""
    assert runtime.parent_id == router.span_id


def test_a_part_without_otlp_endpoint_exports_nothing(supervisor, nats_url, tmp_path_factory, collector):
    """A router without the setting, though the SDK's own endpoint variable names the collector, serves a request
    and stops (a tracing part flushes its spans when it stops): the collector got nothing from it."""
    app_dir = tmp_path_factory.mktemp("untraced")
    (app_dir / "app.yaml").write_text(APP_YAML)
    (app_dir / "main.py").write_text(MAIN)
    run = supervisor.run_dir
    env = {**traced_env(), "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint + "/v1/traces", "OTEL_SERVICE_NAME": "untraced"}
    router = supervisor.start("router-untraced", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
        "--apps", "untraced=v1", "--app-dirs", f"untraced/v1={app_dir}", "--pending-timeout-seconds", "0.5",
        "--ready-file", str(run / "router-untraced.addr")), env=env, ready_file=run / "router-untraced.addr")
    name, _, port = router.address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    conn.request("GET", "/", headers={"Host": "untraced.example.test"})
    assert conn.getresponse().status == 503  # routed (no instance runs the version): the handler ran
    conn.close()
    router.proc.send_signal(signal.SIGTERM)
    assert router.proc.wait(timeout=30) == 0
    assert not [s for s in collector.spans if s.attributes.get("kiln.app") == "untraced"]


# ------------------------------------------------------------------ kiln dev --otlp-endpoint

@pytest.fixture(scope="module")
def dev(tmp_path_factory, collector):
    from deploy.dev import DevOptions, DevServer
    root = tmp_path_factory.mktemp("dev-traces")
    app_dir = root / "app"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text(APP_YAML)
    (app_dir / "main.py").write_text(MAIN)
    # The SDK's default batching: spans leave each part within 5 s (trace_of waits up to 30).
    srv = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=root / "data", otlp_endpoint=collector.endpoint))
    srv.start()
    yield srv
    srv.stop()


def test_kiln_dev_with_otlp_endpoint_traces_a_request_across_router_runtime_and_datastore(dev, collector):
    address = dev.url.removeprefix("http://").rstrip("/")
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    conn.request("GET", "/visit/1", headers={"Host": "localhost"})
    resp = conn.getresponse()
    assert resp.status == 200
    body = json.loads(resp.read())
    conn.close()
    router, runtime, datastore = trace_of(collector, body["request_id"])
    assert runtime.parent_id == router.span_id
    assert {s.parent_id for s in datastore} == {runtime.span_id}
    assert router.attributes["kiln.app"] == dev.app_id


def test_health_checks_make_no_spans(stack, collector):
    with grpc.insecure_channel(stack[2]) as channel:
        for _ in range(3):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    # A request after the checks: the datastore's spans leave in the order they ended, so once this request's
    # have arrived, the checks' would have too.
    status, body = get(stack[0])
    assert status == 200
    trace_of(collector, body["request_id"])
    assert not [s for s in collector.spans if "Health" in s.name]
