"""The console's pages under load of data: time per page (p50/p95) with ``--entities`` entities in one kind and
``--logs`` request log records, beside the gRPC calls each page makes (its floor), in the same run.

A ``kiln dev`` (every part, the console on a free port) serves a small app; the bench seeds the datastore through
the datastore service's ``Put`` (500 entities a call, every property type the table shows) and the request logs
with real requests through the router (each logs two lines), ``--tasks`` waiting push tasks in one queue (Add, 100
a call) and ``--mails`` messages in the development outbox (Send), and says how long each took. Then, for
``--rounds`` rounds, each page is fetched ``--requests`` times over one keep-alive connection to the console
(time to the last byte, on loopback: the console's server time plus a loopback round trip), each followed in the
same round by its *floor*: the same gRPC calls the page makes, made directly as the app (so page − floor is the
console's own work: parsing, rendering, escaping). The CPU of the console process per page comes from /proc.
Figures are medians over rounds of each round's p50/p95; the page/floor ratio is per round, then its median.

Usage::

    .venv/bin/python bench/console_bench.py [--entities 10000] [--logs 10000] [--rounds 3] [--requests 20]

The issue's figure is 100,000 of each (``--entities 100000 --logs 100000``): seeding that takes minutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import os
import pathlib
import statistics
import sys
import tempfile
import textwrap
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench.http_bench import _cpu_seconds
from console import datastore as console_datastore
from console import logs as console_logs
from console import mail as console_mail
from console import taskqueues as console_taskqueues
from console import values
from deploy.dev import DevOptions, DevServer
from kiln.api import _rpc
from kiln.pb.cron.v1 import cron_pb2, cron_pb2_grpc
from kiln.pb.datastore.v1 import datastore_pb2 as ds
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.deploy.v1 import deploy_pb2, deploy_pb2_grpc
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from kiln.pb.mail.v1 import mail_pb2, mail_pb2_grpc
from kiln.pb.memcache.v1 import memcache_pb2, memcache_pb2_grpc
from kiln.pb.taskqueue.v1 import taskqueue_pb2, taskqueue_pb2_grpc
from deploy.control import tokens
from kiln_platform.appcalls import AppCredentials

KIND = "Bench"
APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"
CRON_YAML = "cron:\n- description: nightly report\n  url: /tasks/report\n  schedule: every day 03:00\n"
QUEUE = "bench"
QUEUE_YAML = f"queue:\n- name: {QUEUE}\n  rate: 5/s\n"
MAIN = textwrap.dedent('''
    import logging

    def app(environ, start_response):
        logging.info("served %s", environ["PATH_INFO"])
        logging.warning("careful with %s", environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
''')


class Calls:
    """The services of the ``kiln dev``, called as its app (as the console calls them)."""

    def __init__(self, server: DevServer) -> None:
        self.app_id = server.app_id
        self._meta = AppCredentials(server.secrets["service"]).metadata(server.app_id)
        self.channels = {name: _rpc.channel(server.addresses[f"{name}_svc"])
                         for name in ("datastore", "logs", "memcache", "cron", "taskqueue", "mail")}
        self.datastore = datastore_pb2_grpc.DatastoreServiceStub(self.channels["datastore"])
        self.logs = logs_pb2_grpc.LogsServiceStub(self.channels["logs"])
        self.memcache = memcache_pb2_grpc.MemcacheServiceStub(self.channels["memcache"])
        self.cron = cron_pb2_grpc.CronServiceStub(self.channels["cron"])
        self.taskqueue = taskqueue_pb2_grpc.TaskQueueServiceStub(self.channels["taskqueue"])
        self.mail = mail_pb2_grpc.MailServiceStub(self.channels["mail"])
        # kiln dev's control plane, called with an admin deploy token of the app (as the console's versions page)
        self.version_id = server.version_id
        self.channels["control"] = _rpc.channel(server.addresses["control"])
        self.control = deploy_pb2_grpc.DeployServiceStub(self.channels["control"])
        self._admin = (("authorization", "Bearer " + tokens.mint(server.secrets["control_admin"], server.app_id,
                                                                   "admin", "console-bench")),)

    def __call__(self, method: Any, request: Any) -> Any:
        return method(request, metadata=self._meta, timeout=120)

    def admin(self, method: Any, request: Any) -> Any:
        """A control plane call, as the console makes it."""
        return method(request, metadata=self._admin, timeout=120)

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def _entity(i: int) -> ds.Entity:
    key = ds.Key(path=[ds.PathElement(kind=KIND, name=f"e{i:07d}")])
    props = {"title": ds.Value(string_value=f"item <b>{i}</b>"), "count": ds.Value(integer_value=i),
             "ratio": ds.Value(double_value=i / 7), "done": ds.Value(boolean_value=i % 2 == 0),
             "body": ds.Value(string_value="lorem ipsum " * 60, exclude_from_indexes=True),
             "data": ds.Value(blob_value=os.urandom(64), exclude_from_indexes=True),
             "tags": ds.Value(array_value=ds.ArrayValue(values=[ds.Value(string_value=t) for t in ("a", "b", "c")])),
             "parent": ds.Value(key_value=ds.Key(path=[ds.PathElement(kind="Owner", name=f"o{i % 100}")]))}
    when = ds.Value()
    when.timestamp_value.FromDatetime(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
                                      + datetime.timedelta(seconds=i))
    props["when"] = when
    return ds.Entity(key=key, properties=props)


def seed_entities(calls: Calls, count: int) -> float:
    started = time.monotonic()
    for first in range(0, count, 500):
        batch = [_entity(i) for i in range(first, min(count, first + 500))]
        calls(calls.datastore.Put, ds.PutRequest(entities=batch))
    return time.monotonic() - started


def seed_tasks(calls: Calls, count: int) -> float:
    """``count`` push tasks waiting a day in the queue (none runs during the bench)."""
    started = time.monotonic()
    for first in range(0, count, 100):
        batch = [taskqueue_pb2.Task(queue=QUEUE, url=f"/tasks/t{i}", payload=b"x" * 200, countdown_seconds=86400)
                 for i in range(first, min(count, first + 100))]
        calls(calls.taskqueue.Add, taskqueue_pb2.AddRequest(tasks=batch))
    return time.monotonic() - started


def seed_mail(calls: Calls, count: int) -> float:
    """``count`` messages (plain and HTML parts, one attachment) in the development outbox."""
    started = time.monotonic()
    for i in range(count):
        message = mail_pb2.MailMessage(sender=f"robot@{calls.app_id}.appspotmail.com", to=["ann@example.org"],
                                       subject=f"message {i}", text_body="hello " * 200,
                                       html_body="<p>hello <b>there</b></p>" * 50,
                                       attachments=[mail_pb2.Attachment(file_name="a.txt", data=b"0" * 4096)])
        calls(calls.mail.Send, mail_pb2.SendRequest(message=message))
    deadline = time.monotonic() + 120
    while len(calls(calls.mail.ListOutbox, mail_pb2.ListOutboxRequest(limit=1000)).messages) < min(count, 1000):
        if time.monotonic() > deadline:
            raise SystemExit(f"mail_svc's outbox did not hold {min(count, 1000)} messages within 120 s")
        time.sleep(0.1)
    return time.monotonic() - started


def _stored_logs(calls: Calls, at_least: int) -> int:
    """How many records logs_svc holds (paging newest first, stopping at ``at_least``)."""
    seen, token = 0, ""
    while seen < at_least:
        answer = calls(calls.logs.Query, logs_pb2.QueryRequest(app_id=calls.app_id, page_size=1000,
                                                               page_token=token))
        seen += len(answer.logs)
        token = answer.next_page_token
        if not token:
            break
    return seen


def seed_logs(server: DevServer, calls: Calls, count: int, *, threads: int = 8) -> float:
    """``count`` requests through the router (paths /r/0…), then until logs_svc has stored them all."""
    parts = urllib.parse.urlsplit(server.url)
    started = time.monotonic()

    def send(indices: range) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        try:
            for i in indices:
                conn.request("GET", f"/r/{i}")
                resp = conn.getresponse()
                resp.read()
        finally:
            conn.close()

    step = -(-count // threads)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, [range(s, min(count, s + step)) for s in range(0, count, step)]))
    deadline = time.monotonic() + 600
    while _stored_logs(calls, count) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"logs_svc did not store {count} records within 600 s")
        time.sleep(1)
    return time.monotonic() - started


def deep_cursor(calls: Calls, skip: int) -> str:
    """The console's cursor text for the table page starting after ``skip`` entities."""
    cursor, left = b"", skip
    while left > 0:
        query = ds.Query(kind=KIND, keys_only=True, limit=min(1000, left))
        if cursor:
            query.start_cursor = cursor
        answer = calls(calls.datastore.RunQuery, ds.RunQueryRequest(query=query))
        left -= len(answer.batch.entity_results)
        cursor = answer.batch.end_cursor
    return console_datastore.encode_cursor(cursor)


def _datastore_floor(calls: Calls, cursor: bytes = b"", *, table: bool = True) -> Callable[[], None]:
    def run() -> None:  # the namespaces, the kinds, a page of the table (console/datastore.py)
        calls(calls.datastore.RunQuery, ds.RunQueryRequest(query=ds.Query(kind="__namespace__", keys_only=True)))
        calls(calls.datastore.RunQuery, ds.RunQueryRequest(query=ds.Query(kind="__kind__", keys_only=True)))
        if not table:
            return
        query = ds.Query(kind=KIND, limit=console_datastore.PAGE)
        if cursor:
            query.start_cursor = cursor
        calls(calls.datastore.RunQuery, ds.RunQueryRequest(query=query))
    return run


def _logs_floor(calls: Calls, *, level: logs_pb2.LogLevel.ValueType | None = None,
                scan: int = console_logs.SERVICE_PAGE) -> Callable[[], None]:
    def run() -> None:  # the Query pages the console reads for one page shown (console/logs.py)
        request = logs_pb2.QueryRequest(app_id=calls.app_id, include_app_logs=True,
                                        page_size=console_logs.SERVICE_PAGE)
        if level is not None:
            request.minimum_log_level = level
        read = 0
        while read < scan:
            answer = calls(calls.logs.Query, request)
            read += len(answer.logs)
            if not answer.next_page_token:
                break
            request.page_token = answer.next_page_token
    return run


GQL = f"SELECT * FROM {KIND} WHERE done = TRUE LIMIT 20"  # the GQL console's page: one RunQuery


def pages(calls: Calls, entities: int) -> list[tuple[str, str, Callable[[], None]]]:
    """(name, console path, the gRPC calls the page makes) for each page measured."""
    get = calls(calls.datastore.RunQuery, ds.RunQueryRequest(query=ds.Query(kind=KIND, limit=1)))
    some_key = get.batch.entity_results[0].entity.key
    deep_skip = max(0, entities - console_datastore.PAGE)
    deep = deep_cursor(calls, deep_skip)
    deep_bytes = console_datastore.decode_cursor(deep) if deep else b""
    outbox = calls(calls.mail.ListOutbox, mail_pb2.ListOutboxRequest(limit=1000, without_raw=True)).messages
    oldest, mails = outbox[-1].message_id, len(outbox)
    return [
        ("logs, first page", "/logs", _logs_floor(calls)),
        ("logs, level ≥ warning", "/logs?level=warning", _logs_floor(calls, level=logs_pb2.LOG_LEVEL_WARNING)),
        ("logs, path matching none (1,000 read)", "/logs?path=/nowhere",
         _logs_floor(calls, scan=console_logs.MAX_SCAN)),
        ("datastore, kinds", "/datastore", _datastore_floor(calls, table=False)),
        ("datastore, first page of kind", console_datastore.list_url("", KIND), _datastore_floor(calls)),
        (f"datastore, page after {deep_skip:,}", console_datastore.list_url("", KIND, deep),
         _datastore_floor(calls, deep_bytes)),
        ("datastore, one entity", "/datastore/entity?" + urllib.parse.urlencode({"key": values.encode_key(some_key)}),
         lambda: calls(calls.datastore.Get, ds.GetRequest(keys=[some_key]))),
        ("datastore, new entity form", f"/datastore/new?kind={KIND}", lambda: None),
        ("datastore, GQL (20 of a kind, filtered)", "/datastore/gql?" + urllib.parse.urlencode({"q": GQL}),
         lambda: calls(calls.datastore.RunQuery, ds.RunQueryRequest(
             gql_query=ds.GqlQuery(query_string=GQL), batch_size=console_datastore.GQL_ROWS))),
        ("memcache", "/memcache", lambda: calls(calls.memcache.Stats, memcache_pb2.StatsRequest())),
        ("cron", "/cron", lambda: calls(calls.cron.ListJobs, cron_pb2.ListJobsRequest())),
        ("task queues", "/queues", lambda: calls(calls.taskqueue.QueueStats, taskqueue_pb2.QueueStatsRequest())),
        ("a queue, first page of tasks", console_taskqueues.queue_url(QUEUE), _queue_floor(calls)),
        ("mail, outbox list", "/mail",
         lambda: calls(calls.mail.ListOutbox, mail_pb2.ListOutboxRequest(limit=console_mail.LIST_SIZE,
                                                                          without_raw=True))),
        (f"mail, the oldest of {mails:,} messages", console_mail.message_url(oldest),
         lambda: calls(calls.mail.ListOutbox, mail_pb2.ListOutboxRequest(limit=1, message_id=oldest))),
        ("mail, dead letters (none)", "/mail/dead",
         lambda: calls(calls.mail.ListDeadLetters, mail_pb2.ListDeadLettersRequest(page_size=console_mail.DEAD_PAGE))),
        ("datastore, indexes", "/datastore/indexes",
         lambda: calls(calls.datastore.ListIndexes, ds.ListIndexesRequest())),
        ("versions and instances", "/versions", _versions_floor(calls)),
        ("dashboard", "/dashboard", lambda: None),  # no call: the page's script asks for its data
        ("dashboard data (the history so far)", "/dashboard/data?" + urllib.parse.urlencode(
            {"version": calls.version_id}), lambda: None),  # no call: read from the console's memory
    ]


def _versions_floor(calls: Calls) -> Callable[[], None]:
    def run() -> None:  # the app's versions and instances (console/versions.py)
        calls.admin(calls.control.ListVersions, deploy_pb2.ListVersionsRequest(app_id=calls.app_id))
        calls.admin(calls.control.ListInstances, deploy_pb2.ListInstancesRequest(app_id=calls.app_id))
    return run


def _queue_floor(calls: Calls) -> Callable[[], None]:
    def run() -> None:  # the queue's stats and one page of its tasks (console/taskqueues.py)
        calls(calls.taskqueue.QueueStats, taskqueue_pb2.QueueStatsRequest(queues=[QUEUE]))
        calls(calls.taskqueue.ListTasks, taskqueue_pb2.ListTasksRequest(queue=QUEUE,
                                                                         page_size=console_taskqueues.PAGE_SIZE))
    return run


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entities", type=int, default=10_000)
    ap.add_argument("--logs", type=int, default=10_000)
    ap.add_argument("--tasks", type=int, default=1_000, help="waiting push tasks in one queue")
    ap.add_argument("--mails", type=int, default=100, help="messages in the development outbox")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20, help="requests per page per round (p50/p95 over them)")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        app = pathlib.Path(tmp) / "app"
        app.mkdir()
        (app / "app.yaml").write_text(APP_YAML)
        (app / "main.py").write_text(MAIN)
        (app / "cron.yaml").write_text(CRON_YAML)
        (app / "queue.yaml").write_text(QUEUE_YAML)
        server = DevServer(DevOptions(app_dir=app, port=0, console_port=0, data_dir=app / "data"))
        server.start()
        calls = Calls(server)
        try:
            took = seed_entities(calls, args.entities)
            print(f"seeded {args.entities:,} entities of kind {KIND} in {took:.1f} s")
            took = seed_logs(server, calls, args.logs)
            print(f"seeded {args.logs:,} request logs (requests through the router, stored) in {took:.1f} s")
            took = seed_tasks(calls, args.tasks)
            print(f"seeded {args.tasks:,} waiting tasks in queue {QUEUE} in {took:.1f} s")
            took = seed_mail(calls, max(1, args.mails))
            print(f"seeded {max(1, args.mails):,} messages in the outbox in {took:.1f} s")
            console_pid = next(c.proc.pid for c in server.supervisor.children if c.name == "console")
            measured = pages(calls, args.entities)
            run(server, calls, measured, console_pid, args.rounds, args.requests)
        finally:
            calls.close()
            server.stop()


def run(server: DevServer, calls: Calls, measured: list[tuple[str, str, Callable[[], None]]], console_pid: int,
        rounds: int, requests: int) -> None:
    host, _, port = server.addresses["console"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    results: dict[str, dict[str, list[float]]] = {name: {"p50": [], "p95": [], "f50": [], "f95": [], "ratio": [],
                                                          "cpu": []} for name, _, _ in measured}
    for r in range(rounds):
        for name, path, floor in measured:
            conn.request("GET", path)  # warm (and check) once
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise SystemExit(f"{path}: {resp.status} {body[:300]!r}")
            times, floors = [], []
            cpu0 = _cpu_seconds(console_pid)
            for _ in range(requests):
                t0 = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                times.append(time.perf_counter() - t0)
            cpu = (_cpu_seconds(console_pid) - cpu0) / requests
            for _ in range(requests):
                t0 = time.perf_counter()
                floor()
                floors.append(time.perf_counter() - t0)
            row = results[name]
            row["p50"].append(_pct(times, 0.5) * 1000)
            row["p95"].append(_pct(times, 0.95) * 1000)
            row["f50"].append(_pct(floors, 0.5) * 1000)
            row["f95"].append(_pct(floors, 0.95) * 1000)
            row["ratio"].append(_pct(times, 0.5) / _pct(floors, 0.5))
            row["cpu"].append(cpu * 1000)
            print(f"round {r + 1}: {name}: page p50 {row['p50'][-1]:.1f} ms, floor p50 {row['f50'][-1]:.1f} ms, "
                  f"ratio {row['ratio'][-1]:.2f}, console CPU {row['cpu'][-1]:.1f} ms/page", flush=True)
    conn.close()
    med = statistics.median
    print(f"\n{requests} requests per page per round, {rounds} rounds; medians over rounds (ms)\n")
    print("| Page | p50 | p95 | gRPC floor p50 | floor p95 | page/floor (p50) | console CPU/page |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, _, _ in measured:
        row = results[name]
        # A page that makes no gRPC call (its floor is the timer's own cost) has no ratio.
        ratio = f"{med(row['ratio']):.2f}×" if med(row["f50"]) >= 0.05 else "— (no call)"
        print(f"| {name} | {med(row['p50']):.1f} | {med(row['p95']):.1f} | {med(row['f50']):.1f} | "
              f"{med(row['f95']):.1f} | {ratio} | {med(row['cpu']):.1f} |")


if __name__ == "__main__":
    main()
