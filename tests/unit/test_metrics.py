"""Metrics are off unless asked for, and their label values stay bounded (no sockets: kiln_platform/metrics.py's
parts driven directly)."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from blobstore_svc.config import BlobstoreConfig
from cron_svc.config import CronConfig
from datastore_svc.config import DatastoreConfig
from deploy.control.config import ControlConfig
from deploy.dev import DevOptions
from identity_svc.config import IdentityConfig
from images_svc.config import ImagesConfig
from kiln_platform import metrics
from kiln.errors import ConfigError
from kiln_platform.config import ListenAddress, load
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


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_part_serves_no_metrics_unless_metrics_listen_is_set(cls):
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert defaults["metrics_listen"] is None


def test_metrics_listen_is_read_from_the_environment_as_a_listen_address():
    cfg = load(DatastoreConfig, prefix="DATASTORE", env={"KILN_DATASTORE_SERVICE_SECRET": "s",
                                                         "KILN_DATASTORE_METRICS_LISTEN": "127.0.0.1:9100"}, argv=[])
    assert cfg.metrics_listen == ListenAddress("127.0.0.1", 9100)


def test_a_bad_metrics_listen_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="metrics_listen"):
        load(DatastoreConfig, prefix="DATASTORE", env={"KILN_DATASTORE_SERVICE_SECRET": "s",
                                                       "KILN_DATASTORE_METRICS_LISTEN": "localhost"}, argv=[])


def test_the_instance_manager_serves_no_metrics_unless_asked():
    args = manager.parser({}).parse_args(["--app-dir", ".", "--app-id", "a", "--version-id", "v1", "--run-dir", "."])
    assert args.metrics_listen is None


def test_the_instance_manager_reads_its_metrics_address_from_the_environment():
    args = manager.parser({"KILN_MANAGER_METRICS_LISTEN": "127.0.0.1:9101"}).parse_args(
        ["--app-dir", ".", "--app-id", "a", "--version-id", "v1", "--run-dir", "."])
    assert args.metrics_listen == ListenAddress("127.0.0.1", 9101)


def test_kiln_dev_serves_no_metrics_unless_asked():
    assert DevOptions(app_dir=pathlib.Path(".")).metrics_port is None


@pytest.mark.parametrize(("status", "label"), [(200, "2xx"), (302, "3xx"), (404, "4xx"), (503, "5xx"), (99, "other"),
                                              (600, "other")])
def test_the_router_labels_a_status_by_its_class(status, label):
    assert metrics.status_class(status) == label


def test_router_worker_n_serves_metrics_on_the_given_port_plus_n_minus_one():
    listen = ListenAddress("127.0.0.1", 9200)
    assert [metrics.worker_address(listen, w) for w in (0, 1, 3)] == [
        listen, listen, ListenAddress("127.0.0.1", 9202)]


def test_method_labels_stop_growing_past_the_bound(monkeypatch):
    monkeypatch.setattr(metrics, "_methods", set())
    monkeypatch.setattr(metrics, "MAX_METHODS", 2)
    assert metrics.grpc_method_labels("/a.S/One") == ("a.S", "One")
    assert metrics.grpc_method_labels("/a.S/Two") == ("a.S", "Two")
    assert metrics.grpc_method_labels("/a.S/Made-up-by-a-client") == ("other", "other")
    assert metrics.grpc_method_labels("/a.S/One") == ("a.S", "One")  # one already labelled keeps its label


def _served(app: str) -> float:
    return REGISTRY.get_sample_value("kiln_runtime_requests_served_total", {"app": app, "version": "v1"}) or 0.0


def test_the_manager_counts_what_each_heartbeat_adds_to_the_instance_s_count():
    measured = metrics.ManagerMetrics("unit-served", "v1")
    measured.heartbeat("i1", 5)
    measured.heartbeat("i1", 5)  # nothing new
    measured.heartbeat("i2", 3)
    measured.heartbeat("i1", 7)
    assert _served("unit-served") == 10


def test_a_late_heartbeat_with_a_lower_count_takes_nothing_back():
    measured = metrics.ManagerMetrics("unit-late", "v1")
    measured.heartbeat("i1", 5)
    measured.heartbeat("i1", 4)
    measured.heartbeat("i1", 6)
    assert _served("unit-late") == 6


def test_the_manager_reports_its_instances_by_state():
    metrics.ManagerMetrics("unit-states", "v1").instances(starting=1, serving=2, stopping=3)
    got = {state: REGISTRY.get_sample_value("kiln_runtime_instances",
                                            {"app": "unit-states", "version": "v1", "state": state})
           for state in metrics.INSTANCE_STATES}
    assert got == {"starting": 1, "serving": 2, "stopping": 3}


def _table() -> tuple[metrics.Table, CollectorRegistry]:
    table = metrics.Table(("service", "method"), "code", ("t_calls", "t_seconds", "t_in_flight"), ("c", "s", "f"))
    registry = CollectorRegistry()
    registry.register(table)
    return table, registry


def test_a_latency_counts_in_every_bucket_whose_bound_holds_it():
    table, registry = _table()
    series = table.get(("S", "M"))
    series.done("OK", 0.001)  # exactly a bound: in that bucket (le means <=)
    series.done("OK", 0.0011)
    series.done("NOT_FOUND", 700.0)  # past the last finite bound: only +Inf

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("t_seconds_bucket", {"service": "S", "method": "M", "le": le})
    assert [bucket(le) for le in ("0.0005", "0.001", "0.0025", "600.0", "+Inf")] == [0, 1, 2, 2, 3]
    assert registry.get_sample_value("t_seconds_count", {"service": "S", "method": "M"}) == 3


def test_completions_are_counted_by_outcome():
    table, registry = _table()
    series = table.get(("S", "M"))
    for outcome in ("OK", "OK", "UNAUTHENTICATED"):
        series.done(outcome, 0.01)
    got = {code: registry.get_sample_value("t_calls_total", {"service": "S", "method": "M", "code": code})
           for code in ("OK", "UNAUTHENTICATED")}
    assert got == {"OK": 2, "UNAUTHENTICATED": 1}


def test_requests_under_way_are_exported_as_a_gauge():
    table, registry = _table()
    table.get(("S", "M")).under_way += 2
    assert registry.get_sample_value("t_in_flight", {"service": "S", "method": "M"}) == 2
