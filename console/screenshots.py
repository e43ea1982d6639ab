"""``python -m console.screenshots``: screenshots of each console page, for the README (docs/console/*.png).

Starts ``kiln dev`` on a small demo app in a temporary directory, gives it some requests (so there are logs),
entities of several kinds and types, cache entries, waiting tasks, mail and 40 s of traffic (the dashboard's
plots), then opens each page in Debian's Chromium (driven by
Playwright, from the ``test`` extra) and saves what it shows. Run it again after changing a page, and commit the
PNGs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from kiln.api import _rpc
from kiln.pb.datastore.v1 import datastore_pb2 as ds
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from kiln.pb.mail.v1 import mail_pb2 as ml
from kiln.pb.mail.v1 import mail_pb2_grpc
from kiln.pb.memcache.v1 import memcache_pb2 as mc
from kiln.pb.memcache.v1 import memcache_pb2_grpc
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as tq
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform.appcalls import AppCredentials

OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "console"
CHROMIUM = "/usr/bin/chromium"
APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"
MAIN = '''
import logging


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/admin"):
        logging.warning("refused %s: not signed in", path)
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"no"]
    if path.startswith("/broken"):
        logging.error("Traceback (most recent call last):\\n  File \\"main.py\\", line 9, in app\\n"
                      "ZeroDivisionError: division by zero")
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"error"]
    logging.debug("routing %s", path)
    logging.info("served %s from the cache", path)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''
CRON_YAML = """cron:
- description: nightly sales report
  url: /tasks/report
  schedule: every day 03:00
  timezone: Europe/Berlin
- description: refresh the stock cache
  url: /tasks/stock
  schedule: every 15 minutes
"""
INDEX_YAML = """indexes:
- kind: Product
  properties:
  - name: tags
  - name: price
    direction: desc
- kind: Order
  ancestor: yes
  properties:
  - name: total
    direction: desc
"""
GQL = "SELECT * FROM Product WHERE price > 2.0 ORDER BY price DESC"
QUEUE_YAML = """queue:
- name: emails
  rate: 5/s
  bucket_size: 10
  retry_parameters:
    task_retry_limit: 5
- name: thumbnails
  rate: 30/m
  max_concurrent_requests: 4
- name: imports
  mode: pull
"""
ORDER_MAIL = """<h1>Thanks for your order</h1><p>Your <b>Sprocket</b> ships tomorrow.</p>
<table><tr><td>Sprocket</td><td>9.50 EUR</td></tr><tr><td>Flange</td><td>4.25 EUR</td></tr></table>"""
PATHS = ["/", "/products?page=2", "/products/17", "/admin/settings", "/cart", "/broken/checkout", "/",
         "/products/3", "/api/stock?sku=A-100"]


def _seed(addresses: dict[str, str], secret: str, app_id: str) -> None:
    meta = AppCredentials(secret).metadata(app_id)
    with _rpc.channel(addresses["datastore_svc"]) as channel:
        datastore = datastore_pb2_grpc.DatastoreServiceStub(channel)
        entities = []
        for i, (name, price, tags) in enumerate([("Sprocket", 9.5, ["steel", "small"]), ("Flange", 4.25, ["steel"]),
                                                 ("Gasket", 1.1, ["rubber"]), ("Widget <b>XL</b>", 19.0, [])]):
            made = ds.Value()
            made.timestamp_value.FromDatetime(datetime.datetime(2026, 11, 3 + i, 9, 30, tzinfo=datetime.UTC))
            entities.append(ds.Entity(key=ds.Key(path=[ds.PathElement(kind="Product", id=1001 + i)]), properties={
                "name": ds.Value(string_value=name), "price": ds.Value(double_value=price),
                "in_stock": ds.Value(boolean_value=i % 2 == 0), "made": made,
                "maker": ds.Value(key_value=ds.Key(path=[ds.PathElement(kind="Maker", name="acme")])),
                "tags": ds.Value(array_value=ds.ArrayValue(values=[ds.Value(string_value=t) for t in tags])),
                "description": ds.Value(string_value="A sturdy part for every workshop. " * 6,
                                        meaning=ds.MEANING_TEXT, exclude_from_indexes=True),
                "photo": ds.Value(blob_value=bytes(range(64)), meaning=ds.MEANING_BLOB, exclude_from_indexes=True),
                "warehouse": ds.Value(geo_point_value=ds.GeoPoint(latitude=52.52, longitude=13.405)),
            }))
        entities.append(ds.Entity(key=ds.Key(path=[ds.PathElement(kind="Maker", name="acme")]), properties={
            "name": ds.Value(string_value="ACME Corporation"),
            "contact": ds.Value(user_value=ds.User(email="orders@acme.example", auth_domain="gmail.com"))}))
        entities.append(ds.Entity(key=ds.Key(partition_id=ds.PartitionId(namespace="eu"),
                                             path=[ds.PathElement(kind="Order", id=7)]),
                                  properties={"total": ds.Value(integer_value=129)}))
        datastore.Put(ds.PutRequest(entities=entities), metadata=meta, timeout=30)
    with _rpc.channel(addresses["memcache_svc"]) as channel:
        cache = memcache_pb2_grpc.MemcacheServiceStub(channel)
        cache.Set(mc.SetRequest(items=[mc.Item(key=f"product:{1001 + i}".encode(), value=b"Sprocket" * (i + 1),
                                               flags=1) for i in range(4)]), metadata=meta, timeout=30)
        cache.Get(mc.GetRequest(keys=[b"product:1001", b"product:1002", b"product:9999"]), metadata=meta, timeout=30)
    with _rpc.channel(addresses["taskqueue_svc"]) as channel:
        queues = taskqueue_pb2_grpc.TaskQueueServiceStub(channel)
        tasks = [tq.Task(queue="emails", name=f"welcome-{n}", url=f"/tasks/mail/welcome?user={4000 + n}",
                         payload=b"{}" * (n + 3), countdown_seconds=600 + 300 * n) for n in range(6)]
        tasks += [tq.Task(queue="thumbnails", url=f"/tasks/thumb/{1001 + n}", method="GET",
                          countdown_seconds=3600 * (n + 1)) for n in range(3)]
        queues.Add(tq.AddRequest(tasks=tasks), metadata=meta, timeout=30)
        queues.Add(tq.AddRequest(tasks=[tq.Task(queue="imports", method="PULL", payload=b"row" * 40, tag=b"csv")
                                        for _ in range(4)]), metadata=meta, timeout=30)
        queues.Pause(tq.PauseRequest(queue="thumbnails"), metadata=meta, timeout=30)
    with _rpc.channel(addresses["mail_svc"]) as channel:
        mail = mail_pb2_grpc.MailServiceStub(channel)
        sender = f"Shop <orders@{app_id}.appspotmail.com>"
        for n, (to, subject) in enumerate([("ann@example.org", "Welcome to the shop"),
                                           ("bob@example.org", "Your password reset link"),
                                           ("carl@example.org", "Order 1042 confirmed")]):
            message = ml.MailMessage(sender=sender, to=[to], subject=subject,
                                     text_body=f"Hello,\n\nthis is message {n + 1}.\n\n-- The shop",
                                     html_body=ORDER_MAIL if n == 2 else "")
            if n == 2:
                message.attachments.add(file_name="invoice-1042.pdf", data=b"%PDF-1.7" + b"0" * 18000)
            mail.Send(ml.SendRequest(message=message), metadata=meta, timeout=30)


def _wait_for_mail(addresses: dict[str, str], secret: str, app_id: str, count: int) -> None:
    import time
    meta = AppCredentials(secret).metadata(app_id)
    deadline = time.monotonic() + 60
    with _rpc.channel(addresses["mail_svc"]) as channel:
        mail = mail_pb2_grpc.MailServiceStub(channel)
        while len(mail.ListOutbox(ml.ListOutboxRequest(), metadata=meta, timeout=30).messages) < count:
            if time.monotonic() > deadline:
                raise SystemExit("screenshots: the mail did not reach the outbox within 60 s")
            time.sleep(0.2)


def _wait_for_logs(addresses: dict[str, str], secret: str, app_id: str, count: int) -> None:
    import time
    meta = AppCredentials(secret).metadata(app_id)
    deadline = time.monotonic() + 60
    with _rpc.channel(addresses["logs_svc"]) as channel:
        logs = logs_pb2_grpc.LogsServiceStub(channel)
        while len(logs.Query(logs_pb2.QueryRequest(page_size=100), metadata=meta, timeout=30).logs) < count:
            if time.monotonic() > deadline:
                raise SystemExit("screenshots: the requests' logs did not arrive within 60 s")
            time.sleep(0.2)


def _traffic(url: str, seconds: float) -> None:
    """Requests for ``seconds``, at a rate that rises and falls, some of them failing: the dashboard's plots."""
    import math
    import time
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        for n in range(int(6 + 5 * math.sin(elapsed / 4))):
            path = "/broken/checkout" if n == 7 else "/admin/x" if n % 4 == 3 else f"/products/{n}"
            try:
                urllib.request.urlopen(url + path, timeout=60).read()
            except urllib.error.HTTPError as err:
                err.read()
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console.screenshots", description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help=f"where the PNGs go (default {OUT})")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright  # the test extra: only this script and the tests need it

    from deploy.dev import DevOptions, DevServer
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        app_dir = pathlib.Path(tmp) / "shop"
        app_dir.mkdir()
        (app_dir / "app.yaml").write_text(APP_YAML)
        (app_dir / "main.py").write_text(MAIN)
        (app_dir / "cron.yaml").write_text(CRON_YAML)
        (app_dir / "queue.yaml").write_text(QUEUE_YAML)
        (app_dir / "index.yaml").write_text(INDEX_YAML)
        os.environ.setdefault("KILN_CONSOLE_METRICS_SCRAPE_SECONDS", "1")  # the dashboard: a point a second
        server = DevServer(DevOptions(app_dir=app_dir, port=0, console_port=0, data_dir=app_dir / "data"))
        server.start()
        try:
            for path in PATHS:
                try:
                    urllib.request.urlopen(server.url.rstrip("/") + path, timeout=60).read()
                except urllib.error.HTTPError as err:
                    err.read()
            _seed(server.addresses, server.secrets["service"], server.app_id)
            _wait_for_logs(server.addresses, server.secrets["service"], server.app_id, len(PATHS))
            _wait_for_mail(server.addresses, server.secrets["service"], server.app_id, 3)
            base = server.console_url.rstrip("/")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM)
                page = browser.new_page(viewport={"width": 1440, "height": 900}, base_url=base)
                page.goto("/versions")
                page.locator("table.instances tbody tr").first.wait_for(timeout=30_000)  # its first heartbeat
                page.screenshot(path=str(args.out / "versions.png"), full_page=True)
                page.goto("/logs")
                page.locator(".request", has_text="/broken/checkout").locator("summary").click()
                page.screenshot(path=str(args.out / "logs.png"), full_page=True)
                page.goto("/datastore?kind=Product")
                page.screenshot(path=str(args.out / "datastore.png"), full_page=True)
                page.locator("table.entities tbody th a").first.click()
                page.screenshot(path=str(args.out / "entity.png"), full_page=True)
                page.locator("#entity-form tr[data-field=price] textarea").fill("cheap")  # a wrong type, shown
                page.get_by_role("button", name="Save").click()
                page.locator(".field-error").first.wait_for()
                page.screenshot(path=str(args.out / "entity-edit.png"), full_page=True)
                page.goto("/datastore/new?kind=Product")
                page.screenshot(path=str(args.out / "entity-new.png"), full_page=True)
                page.goto("/datastore/gql?q=" + urllib.parse.quote(GQL))
                page.screenshot(path=str(args.out / "gql.png"), full_page=True)
                page.goto("/datastore/indexes")
                page.screenshot(path=str(args.out / "indexes.png"), full_page=True)
                page.goto("/memcache?key=product%3A1002")
                page.screenshot(path=str(args.out / "memcache.png"), full_page=True)
                page.goto("/cron")
                page.screenshot(path=str(args.out / "cron.png"), full_page=True)
                page.goto("/queues")
                page.screenshot(path=str(args.out / "queues.png"), full_page=True)
                page.goto("/queues/tasks?queue=emails")
                page.screenshot(path=str(args.out / "queue.png"), full_page=True)
                page.goto("/mail")
                page.screenshot(path=str(args.out / "mail.png"), full_page=True)
                page.get_by_role("link", name="Order 1042 confirmed").click()
                page.screenshot(path=str(args.out / "mail-message.png"), full_page=True)
                _traffic(server.url.rstrip("/"), 40)
                page.goto("/dashboard")
                page.wait_for_function("document.querySelector('figure[data-chart=latency]')"
                                       "?.getAttribute('data-drawn') > 20")
                page.screenshot(path=str(args.out / "dashboard.png"), full_page=True)
                phone = browser.new_page(viewport={"width": 390, "height": 844}, base_url=base)
                phone.goto("/logs?status=5xx")
                phone.screenshot(path=str(args.out / "logs-phone.png"), full_page=True)
                browser.close()
        finally:
            server.stop()
    for png in sorted(args.out.glob("*.png")):
        print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
