"""What the console's tests share: a ``kiln dev`` serving a small app that logs, the services called as that app
(to set up data and to check a page's effect), and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import pathlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from deploy.dev import DevOptions, DevServer
from kiln.api import _rpc
from kiln.pb.cron.v1 import cron_pb2_grpc
from kiln.pb.datastore.v1 import datastore_pb2 as ds
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from kiln.pb.memcache.v1 import memcache_pb2_grpc
from kiln_platform.appcalls import AppCredentials
from tests.integration.apps import THREADSAFE_YAML, wait_for

CHROMIUM = pathlib.Path("/usr/bin/chromium")  # Debian's package (apt-get install chromium); never a download

CRON_YAML = """cron:
- description: nightly <b>report</b>
  url: /tasks/report
  schedule: every day 03:00
  timezone: Europe/Berlin
"""

# The app: each request logs lines at its levels; /missing... answers 404 after an error line.
MAIN = '''
import logging


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/missing"):
        logging.error("no page at %s", path)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"missing"]
    logging.info("served %s", path)
    logging.warning("careful with <b>%s</b>", path)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


@contextlib.contextmanager
def console_dev(app_dir: pathlib.Path, **options: Any) -> Iterator[DevServer]:
    """``kiln dev`` (every part, the console on a free port; more :class:`DevOptions` in ``options``) serving the
    logging app from ``app_dir``, with a daily cron job (that does not fire during a test)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "app.yaml").write_text(THREADSAFE_YAML)
    (app_dir / "main.py").write_text(MAIN)
    (app_dir / "cron.yaml").write_text(CRON_YAML)
    server = DevServer(DevOptions(app_dir=app_dir, port=0, console_port=0, data_dir=app_dir / "data", **options))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class AsApp:
    """The services of a ``kiln dev``, called as its app (the console's own identity)."""

    def __init__(self, server: DevServer) -> None:
        self.app_id = server.app_id
        self._meta = AppCredentials(server.secrets["service"]).metadata(server.app_id)
        self._channels = [_rpc.channel(server.addresses[name]) for name in ("datastore_svc", "memcache_svc",
                                                                             "logs_svc", "cron_svc")]
        self.datastore = datastore_pb2_grpc.DatastoreServiceStub(self._channels[0])
        self.memcache = memcache_pb2_grpc.MemcacheServiceStub(self._channels[1])
        self.logs = logs_pb2_grpc.LogsServiceStub(self._channels[2])
        self.cron = cron_pb2_grpc.CronServiceStub(self._channels[3])

    def call(self, method: Any, request: Any) -> Any:
        return method(request, metadata=self._meta, timeout=30)

    def put(self, kind: str, name: str, properties: dict[str, ds.Value], namespace: str = "") -> ds.Key:
        key = ds.Key(partition_id=ds.PartitionId(namespace=namespace), path=[ds.PathElement(kind=kind, name=name)])
        answer = self.call(self.datastore.Put, ds.PutRequest(entities=[ds.Entity(key=key, properties=properties)]))
        return answer.keys[0]

    def get(self, key: ds.Key) -> ds.Entity | None:
        result = self.call(self.datastore.Get, ds.GetRequest(keys=[key])).results[0]
        return result.entity if result.HasField("entity") else None

    def wait_for_logs(self, resources: set[str]) -> None:
        """Until logs_svc holds a request for each of ``resources`` (records arrive through NATS)."""
        def stored() -> bool:
            found = self.call(self.logs.Query, logs_pb2.QueryRequest(app_id=self.app_id, page_size=1000))
            return resources <= {r.resource for r in found.logs}
        wait_for(stored, 60)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def console_request(dev: DevServer, method: str, path: str, *, headers: dict[str, str] | None = None,
                    body: str | None = None) -> tuple[int, dict[str, str], str]:
    """One plain HTTP request to the console (no browser): status, headers (lower-case names), body."""
    host, _, port = dev.addresses["console"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def timestamp(when: datetime.datetime) -> ds.Value:
    value = ds.Value()
    value.timestamp_value.FromDatetime(when)
    return value


def fetch(server: DevServer, path: str) -> None:
    """One request to the app (an error status is an answer too)."""
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=60) as resp:
            resp.read()
    except urllib.error.HTTPError as err:
        err.read()


def mark_document(page: Page) -> None:
    """Leave a mark on the loaded document: it is gone after a full reload, kept by htmx's swaps."""
    page.evaluate("window.notReloaded = true")


def not_reloaded(page: Page) -> bool:
    """Whether the document :func:`mark_document` marked is still the one shown (no full-page reload since)."""
    return bool(page.evaluate("window.notReloaded === true"))


# -- fixtures of the browser tests (import them into a test module that defines ``dev``, a DevServer) ----------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, driven by Playwright."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, dev: DevServer) -> Iterator[Page]:
    """A new tab on the module's console; the test fails if the page broke its own Content-Security-Policy."""
    context = browser.new_context(base_url=dev.console_url.rstrip("/"))
    tab = context.new_page()
    refused: list[str] = []
    tab.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    yield tab
    context.close()
    assert refused == [], "the page broke its own Content-Security-Policy"
