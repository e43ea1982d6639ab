"""Traces are off unless asked for, the setting is checked at start, span names stay bounded, and trace context
travels only where kiln puts it (no sockets: kiln_platform/tracing.py's parts driven directly; a Tracing made here
never exports, as it ends no span before it is closed)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from blobstore_svc.config import BlobstoreConfig
from cron_svc.config import CronConfig
from datastore_svc.config import DatastoreConfig
from deploy.control.config import ControlConfig
from identity_svc.config import IdentityConfig
from images_svc.config import ImagesConfig
from kiln.api import _rpc
from kiln.errors import ConfigError
from kiln_platform import tracing
from kiln_platform.config import load
from logs_svc.config import LogsConfig
from mail_svc.config import MailConfig
from memcache_svc.config import MemcacheConfig
from natscallout.config import CalloutConfig
from router.config import RouterConfig
from runtime import manager
from runtime.config import RuntimeConfig
from taskqueue_svc.config import TaskQueueConfig
from urlfetch_svc.config import UrlFetchConfig

CONFIGS = [BlobstoreConfig, CronConfig, DatastoreConfig, ControlConfig, IdentityConfig, ImagesConfig, LogsConfig,
           MailConfig, MemcacheConfig, CalloutConfig, RouterConfig, RuntimeConfig, TaskQueueConfig, UrlFetchConfig]
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_part_traces_nothing_unless_otlp_endpoint_is_set(cls):
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert defaults["otlp_endpoint"] == ""


def test_no_endpoint_means_no_tracer_at_all():
    assert tracing.start("", "kiln-datastore") is None


def test_the_router_does_not_trust_a_client_s_traceparent_by_default():
    defaults = {f.name: f.default for f in dataclasses.fields(RouterConfig)}
    assert defaults["trust_traceparent"] is False


def test_otlp_endpoint_is_read_from_the_environment():
    cfg = load(DatastoreConfig, prefix="DATASTORE", env={"KILN_DATASTORE_SERVICE_SECRET": "s",
                                                         "KILN_DATASTORE_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
               argv=[])
    assert cfg.otlp_endpoint == "http://127.0.0.1:4318"


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4318", "grpc://collector:4317", "http://", "collector"])
def test_an_endpoint_that_is_no_http_url_is_refused_naming_the_setting(endpoint):
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        load(DatastoreConfig, prefix="DATASTORE", env={"KILN_DATASTORE_SERVICE_SECRET": "s",
                                                       "KILN_DATASTORE_OTLP_ENDPOINT": endpoint}, argv=[])


def test_the_router_refuses_a_bad_endpoint_naming_the_setting():
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        load(RouterConfig, prefix="ROUTER", env={"KILN_ROUTER_NATS_URL": "nats://127.0.0.1:4222",
                                                 "KILN_ROUTER_SESSION_SECRET": "s",
                                                 "KILN_ROUTER_OTLP_ENDPOINT": "collector:4318"}, argv=[])


@pytest.mark.parametrize(("endpoint", "url"), [
    ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
    ("http://collector:4318/", "http://collector:4318/v1/traces"),
    ("https://otel.example.com/otlp", "https://otel.example.com/otlp/v1/traces"),
    ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
])
def test_spans_are_posted_to_the_endpoint_s_v1_traces(endpoint, url):
    assert tracing.traces_url(endpoint) == url


def test_span_names_carry_known_http_methods_only():
    assert tracing.http_method("GET") == "GET"
    assert tracing.http_method("PATCH") == "PATCH"
    assert tracing.http_method("BREW") == "_OTHER"
    assert tracing.http_method("get") == "_OTHER"


def test_the_manager_forwards_an_http_collector_by_host_and_port():
    assert tracing.collector_address("http://collector:4318/v1/traces") == "collector:4318"
    assert tracing.collector_address("http://collector") == "collector:80"


def test_an_https_collector_is_not_forwarded_to_instances_without_a_network():
    with pytest.raises(ValueError, match="https:// is not forwarded"):
        tracing.collector_address("https://collector:4318")


def test_an_instance_without_a_network_exports_through_its_loopback_keeping_the_path():
    assert tracing.on_loopback("http://collector:4318/otlp", 40000) == "http://127.0.0.1:40000/otlp"


def test_the_manager_reads_the_instance_s_otlp_endpoint_from_its_flags_then_environment():
    assert manager.otlp_endpoint(["--listen", "127.0.0.1:0", "--otlp-endpoint", "http://c:4318"], {}) == "http://c:4318"
    assert manager.otlp_endpoint([], {"KILN_RUNTIME_OTLP_ENDPOINT": "http://d:4318"}) == "http://d:4318"
    assert manager.otlp_endpoint([], {}) == ""


def test_api_calls_carry_no_trace_context_unless_the_runtime_names_one(monkeypatch):
    monkeypatch.setenv("KILN_APP_TOKEN", "token")
    assert [k for k, _ in _rpc.metadata()] == ["authorization"]
    _rpc.set_trace_parent(PARENT)
    try:
        assert dict(_rpc.metadata())["traceparent"] == PARENT
        assert dict(_rpc.metadata())["authorization"] == "Bearer token"
    finally:
        _rpc.set_trace_parent(None)
    assert [k for k, _ in _rpc.metadata()] == ["authorization"]


@pytest.fixture
def tracer():
    found = tracing.Tracing("http://127.0.0.1:9", "kiln-test")
    yield found
    found.close()


def test_a_span_continues_a_valid_traceparent(tracer):
    span = tracer.server_span("s", PARENT, {})
    context = span.get_span_context()
    assert f"{context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "b7ad6b7169203331"


@pytest.mark.parametrize("value", [None, "", "00-not-a-trace-01",
                                   "00-00000000000000000000000000000000-b7ad6b7169203331-01"])
def test_a_missing_or_malformed_traceparent_starts_a_new_trace(tracer, value):
    span = tracer.server_span("s", value, {})
    assert span.parent is None
    assert span.get_span_context().is_valid


def test_the_runtime_span_s_traceparent_names_the_runtime_span_itself(tracer):
    span, traceparent = tracer.runtime_span("GET", PARENT, "app", "v1", "instance", "request")
    context = span.get_span_context()
    assert traceparent == f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
    assert span.name == "runtime GET"


def test_parts_that_do_not_trace_never_import_the_sdk():
    code = ("import sys, kiln_platform.grpcserver, router.app, runtime.app, runtime.manager\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_request_its_caller_did_not_sample_is_not_recorded_and_stays_unsampled(tracer):
    span, traceparent = tracer.runtime_span("GET", PARENT[:-2] + "00", "app", "v1", "instance", "request")
    assert not span.is_recording()
    assert traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-") and traceparent.endswith("-00")
