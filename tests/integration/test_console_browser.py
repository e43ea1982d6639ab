"""The console in a real browser (Debian's Chromium driven by Playwright) against a real ``kiln dev``: each test
clicks through a page and checks the effect in the services themselves."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from deploy.dev import DevServer
from kiln.pb.datastore.v1 import datastore_pb2 as ds
from kiln.pb.logs.v1 import logs_pb2
from kiln.pb.memcache.v1 import memcache_pb2 as mc
from tests.integration.consolekit import (AsApp, browser, console_dev, fetch, mark_document,  # noqa: F401 - fixtures
                                          not_reloaded, page, timestamp)

pytestmark = [pytest.mark.nats, pytest.mark.browser]

HOSTILE = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2">'


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Iterator[DevServer]:
    with console_dev(tmp_path_factory.mktemp("console") / "app") as server:
        yield server


@pytest.fixture(scope="module")
def services(dev) -> Iterator[AsApp]:
    calls = AsApp(dev)
    yield calls
    calls.close()


# --- request logs ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged(dev, services) -> None:
    for path in ("/first", "/second", "/missing/page"):
        fetch(dev, path)  # one after the other: newest is the last
    services.wait_for_logs({"/first", "/second", "/missing/page"})


def test_request_logs_list_requests_newest_first(page, logged):
    page.goto("/logs")
    resources = page.locator(".request .resource").all_inner_texts()
    assert resources[:3] == ["/missing/page", "/second", "/first"]


def test_a_request_expands_to_its_app_log_lines_with_levels(page, logged):
    page.goto("/logs")
    row = page.locator(".request", has=page.locator(".resource", has_text=re.compile(r"^/first$")))
    lines = row.locator(".app-logs li")
    expect(lines.first).to_be_hidden()
    row.locator("summary").click()
    expect(lines.first).to_be_visible()
    assert lines.locator(".level").all_text_contents() == ["info", "warning"]
    assert lines.locator("pre").all_inner_texts() == ["served /first", "careful with <b>/first</b>"]
    assert row.locator(".app-logs b").count() == 0  # the app's text is shown, never parsed as HTML


def test_log_filters_by_status_apply_without_reloading_the_page(page, logged):
    page.goto("/logs")
    mark_document(page)
    page.select_option("#f-status", "4xx")
    expect(page.locator(".request .resource")).to_have_text(["/missing/page"])
    assert not_reloaded(page)
    assert "status=4xx" in page.url  # the filtered list has an address of its own


def test_log_filters_by_level_and_path_apply_without_reloading_the_page(page, logged):
    page.goto("/logs")
    mark_document(page)
    page.select_option("#f-level", "warning")
    expect(page.locator(".request .resource")).to_have_text(["/missing/page", "/second", "/first"])
    page.fill("#f-path", "sec")
    expect(page.locator(".request .resource")).to_have_text(["/second"])
    page.select_option("#f-level", "error")
    expect(page.locator("#log-rows .empty")).to_contain_text("No requests match these filters")
    assert not_reloaded(page)


def test_a_requests_id_link_shows_that_request_alone(page, logged, services):
    page.goto("/logs")
    row = page.locator(".request", has=page.locator(".resource", has_text=re.compile(r"^/second$")))
    request_id = row.get_attribute("data-request-id")
    row.locator("summary").click()
    row.locator("a.request-link").click()
    expect(page.locator(".request .resource")).to_have_text(["/second"])
    assert page.locator(".request").get_attribute("data-request-id") == request_id
    expect(page.locator("#f-request-id")).to_have_value(request_id or "")


def test_log_filters_by_version_apply_without_reloading_the_page(page, logged):
    page.goto("/logs")
    mark_document(page)
    version = page.locator(".request .ids a.version-link").first.inner_text()
    page.fill("#f-version", "no-such-version")
    page.locator("#f-version").dispatch_event("change")
    expect(page.locator("#log-rows .empty")).to_contain_text("No requests match these filters")
    page.fill("#f-version", version)
    page.locator("#f-version").dispatch_event("change")
    expect(page.locator(".request .resource").first).to_have_text("/missing/page")
    assert not_reloaded(page)
    assert f"version={version}" in page.url


def test_log_filters_by_time_range_apply_without_reloading_the_page(page, logged):
    page.goto("/logs")
    mark_document(page)
    now = datetime.datetime.now(datetime.UTC)
    page.fill("#f-since", (now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    expect(page.locator("#log-rows .empty")).to_contain_text("No requests match these filters")
    page.fill("#f-since", (now - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#f-until", (now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    expect(page.locator(".request .resource").first).to_have_text("/missing/page")
    page.fill("#f-until", (now - datetime.timedelta(minutes=90)).strftime("%Y-%m-%dT%H:%M"))
    expect(page.locator("#messages .notice.error")).to_contain_text("until: must be after since")
    assert not_reloaded(page)


def test_the_live_tail_puts_new_requests_on_top_without_reloading_the_page(page, logged, dev, services):
    page.goto("/logs")
    mark_document(page)
    page.check("#f-live")
    expect(page.locator("#log-tail")).to_be_visible()
    fetch(dev, "/tailed")
    services.wait_for_logs({"/tailed"})
    expect(page.locator(".request .resource").first).to_have_text("/tailed", timeout=30_000)
    for _ in range(2):  # two more polls: the request is not added again
        with page.expect_response(lambda response: "/logs/tail?" in response.url, timeout=30_000):
            pass
    assert page.locator(".request .resource", has_text=re.compile(r"^/tailed$")).count() == 1
    assert not_reloaded(page)


def test_the_live_tail_keeps_to_the_filters(page, logged, dev, services):
    page.goto("/logs?status=4xx&live=1")
    expect(page.locator("#log-tail")).to_be_visible()
    fetch(dev, "/tailed-ok")
    fetch(dev, "/missing/tailed")
    services.wait_for_logs({"/tailed-ok", "/missing/tailed"})
    expect(page.locator(".request .resource").first).to_have_text("/missing/tailed", timeout=30_000)
    assert page.locator(".request .resource", has_text="/tailed-ok").count() == 0


def test_a_bad_filter_in_the_address_is_a_precise_error(page):
    response = page.goto("/logs?status=teapot")
    assert response is not None and response.status == 400
    expect(page.locator(".notice.error")).to_contain_text("status: expected a status such as 404")


# --- datastore ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gadget(services) -> ds.Key:
    """An entity with a property of each type."""
    when = datetime.datetime(2026, 5, 17, 8, 30, 15, tzinfo=datetime.UTC)
    other = ds.Key(path=[ds.PathElement(kind="Maker", name="acme")])
    return services.put("Gadget", "g1", {
        "name": ds.Value(string_value="Sprocket"),
        "count": ds.Value(integer_value=42),
        "price": ds.Value(double_value=9.5),
        "active": ds.Value(boolean_value=True),
        "made": timestamp(when),
        "maker": ds.Value(key_value=other),
        "notes": ds.Value(string_value="x" * 300, meaning=ds.MEANING_TEXT, exclude_from_indexes=True),
        "raw": ds.Value(blob_value=bytes(range(40)), meaning=ds.MEANING_BLOB, exclude_from_indexes=True),
        "where": ds.Value(geo_point_value=ds.GeoPoint(latitude=51.5, longitude=-0.12)),
        "owner": ds.Value(user_value=ds.User(email="ada@example.com", auth_domain="gmail.com")),
        "tags": ds.Value(array_value=ds.ArrayValue(values=[ds.Value(string_value="red"),
                                                           ds.Value(string_value="blue")])),
        "part": ds.Value(entity_value=ds.Entity(properties={"size": ds.Value(integer_value=3)})),
        "nothing": ds.Value(null_value=ds.NULL_VALUE_UNSPECIFIED),
    })


def test_the_datastore_page_lists_kinds_and_a_table_of_their_entities(page, gadget):
    page.goto("/datastore")
    mark_document(page)
    page.get_by_role("link", name="Gadget", exact=True).click()
    expect(page.locator("table.entities tbody tr")).to_have_count(1)
    assert not_reloaded(page)
    row = page.locator("table.entities tbody tr").first
    assert row.locator("th").inner_text() == "Gadget:'g1'"


@pytest.mark.parametrize(("prop", "kind", "text"), [
    ("name", "String", "Sprocket"),
    ("count", "Integer", "42"),
    ("price", "Float", "9.5"),
    ("active", "Boolean", "true"),
    ("made", "DateTime", "2026-05-17T08:30:15Z"),
    ("maker", "Key", "Maker:'acme'"),
    ("where", "GeoPt", "51.5, -0.12"),
    ("owner", "User", "ada@example.com (gmail.com)"),
    ("nothing", "Null", "null"),
])
def test_each_property_type_is_shown_with_its_type(page, gadget, prop, kind, text):
    page.goto("/datastore?kind=Gadget")
    columns = page.locator("table.entities thead th").all_inner_texts()
    cell = page.locator("table.entities tbody tr").first.locator("td").nth(columns.index(prop) - 1)
    assert cell.get_attribute("data-type") == kind
    assert cell.inner_text().strip() == text


def test_long_text_and_blobs_are_abbreviated_in_the_table_and_whole_on_the_entity_page(page, gadget):
    page.goto("/datastore?kind=Gadget")
    columns = page.locator("table.entities thead th").all_inner_texts()
    cells = page.locator("table.entities tbody tr").first.locator("td")
    notes = cells.nth(columns.index("notes") - 1).inner_text().strip()
    assert notes == "x" * 80 + "…"
    assert cells.nth(columns.index("raw") - 1).inner_text().startswith("40 bytes: 00 01 02")
    page.locator("table.entities tbody th a").first.click()
    expect(page.locator("h1")).to_have_text("Gadget:'g1'")
    assert page.locator("tr[data-property=notes] td").nth(1).inner_text().strip() == "x" * 300


def test_lists_embedded_entities_and_keys_are_shown_as_their_parts(page, gadget):
    page.goto("/datastore?kind=Gadget")
    page.locator("table.entities tbody th a").first.click()
    assert page.locator("tr[data-property=tags] .v-list li").all_inner_texts() == ["red", "blue"]
    assert page.locator("tr[data-property=part] .v-entity dt").all_inner_texts() == ["size"]
    assert page.locator("tr[data-property=notes] td").nth(2).inner_text() == "no"  # unindexed
    page.locator("tr[data-property=maker] a.v-key").click()  # a key is a link to its entity
    expect(page.locator(".notice.error")).to_contain_text("no entity Maker:'acme'")


def test_a_hostile_string_property_is_shown_as_text_and_never_run(page, services):
    services.put("Note", "hostile", {"body": ds.Value(string_value=HOSTILE)})
    page.goto("/datastore?kind=Note")
    cell = page.locator("table.entities tbody td").first
    assert cell.inner_text().strip() == HOSTILE
    page.locator("table.entities tbody th a").first.click()
    assert page.locator("tr[data-property=body] td").nth(1).inner_text().strip() == HOSTILE
    assert page.locator("main script, main img").count() == 0
    assert page.evaluate("window.pwned === undefined")


def test_namespaces_are_listed_and_show_their_own_kinds(page, services):
    services.put("Invoice", "i1", {"total": ds.Value(integer_value=7)}, namespace="shop")
    page.goto("/datastore")
    assert "shop" in page.locator("#ns option").all_inner_texts()
    page.select_option("#ns", "shop")
    page.get_by_role("button", name="Show").click()
    assert page.locator(".kind-list a").all_inner_texts() == ["Invoice"]
    page.get_by_role("link", name="Invoice").click()
    expect(page.locator("table.entities tbody th")).to_have_text(["Invoice:'i1'"])


def test_the_entity_table_pages_with_cursors_without_reloading(page, services):
    for i in range(25):
        services.put("Row", f"r{i:02d}", {"n": ds.Value(integer_value=i)})
    page.goto("/datastore?kind=Row")
    mark_document(page)
    first = page.locator("table.entities tbody th").all_inner_texts()
    assert len(first) == 20
    page.get_by_role("link", name="Next page").click()
    expect(page.locator("table.entities tbody th")).to_have_count(5)
    second = page.locator("table.entities tbody th").all_inner_texts()
    assert sorted(first + second) == sorted(f"Row:'r{i:02d}'" for i in range(25))
    assert not_reloaded(page)


def test_deleting_an_entity_asks_first_and_dismissing_keeps_it(page, services):
    key = services.put("Doomed", "kept", {"v": ds.Value(integer_value=1)})
    page.goto("/datastore?kind=Doomed")
    page.locator("table.entities tbody th a").first.click()
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete entity").click()
    expect(page.locator("h1")).to_have_text("Doomed:'kept'")
    assert services.get(key) is not None


def test_deleting_an_entity_after_confirming_removes_it_from_the_datastore(page, services):
    key = services.put("Doomed", "gone", {"v": ds.Value(integer_value=1)})
    page.goto("/datastore?kind=Doomed")
    page.get_by_role("link", name="Doomed:'gone'").click()
    messages: list[str] = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Delete entity").click()
    expect(page.locator(".notice.ok")).to_have_text("Deleted Doomed:'gone'.")
    assert messages == ["Delete Doomed:'gone'? This cannot be undone."]
    assert services.get(key) is None


def test_deleting_from_a_stale_page_says_the_entity_is_already_gone(page, services):
    key = services.put("Doomed", "stale", {"v": ds.Value(integer_value=1)})
    page.goto("/datastore?kind=Doomed")
    page.get_by_role("link", name="Doomed:'stale'").click()
    services.call(services.datastore.Delete, ds.DeleteRequest(keys=[key]))  # deleted elsewhere since
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete entity").click()
    expect(page.locator("#messages .notice.error")).to_have_text("no entity Doomed:'stale': it was already deleted")


# --- memcache ----------------------------------------------------------------------------------------------------


def _cached(services: AsApp, key: bytes, namespace: str = "") -> bytes | None:
    items = services.call(services.memcache.Get, mc.GetRequest(namespace=namespace, keys=[key])).items
    return items[0].value if items else None


def test_setting_a_key_stores_it_in_memcache(page, services):
    page.goto("/memcache")
    page.fill("#mc-set-key", "greeting")
    page.fill("#mc-set-value", "hello <em>there</em>")
    page.get_by_role("button", name="Set", exact=True).click()
    expect(page.locator(".notice.ok")).to_have_text("Set 'greeting'.")
    assert _cached(services, b"greeting") == b"hello <em>there</em>"


def test_looking_up_a_key_shows_its_type_and_value(page, services):
    services.call(services.memcache.Set, mc.SetRequest(items=[mc.Item(key=b"lookup", value=b"<i>v</i>", flags=1)]))
    page.goto("/memcache")
    page.fill("#mc-key", "lookup")
    page.get_by_role("button", name="Look up").click()
    expect(page.locator("#mc-value")).to_have_text("<i>v</i>")
    assert page.locator("#mc-type").inner_text() == "str"
    assert "key=lookup" in page.url


def test_deleting_a_key_removes_it_from_memcache(page, services):
    services.call(services.memcache.Set, mc.SetRequest(items=[mc.Item(key=b"doomed", value=b"x", flags=1)]))
    page.goto("/memcache?key=doomed")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete key").click()
    expect(page.locator(".notice.ok")).to_have_text("Deleted 'doomed'.")
    assert _cached(services, b"doomed") is None


def test_flushing_empties_the_cache_and_the_stats_say_so(page, services):
    services.call(services.memcache.Set, mc.SetRequest(items=[mc.Item(key=b"a", value=b"1", flags=1)]))
    page.goto("/memcache")
    assert int(page.locator("#mc-items").inner_text()) >= 1
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Flush cache").click()
    expect(page.locator(".notice.ok")).to_have_text("Flushed the cache: every key is gone.")
    expect(page.locator("#mc-items")).to_have_text("0")
    assert services.call(services.memcache.Stats, mc.StatsRequest()).items == 0


# --- cron --------------------------------------------------------------------------------------------------------


def test_the_cron_page_lists_each_job_with_its_schedule_and_runs(page, services):
    page.goto("/logs")
    page.get_by_role("link", name="Cron").click()
    row = page.locator("table.jobs tbody tr[data-url='/tasks/report']")
    expect(row).to_have_count(1)
    assert row.locator(".schedule").inner_text() == "every day 03:00 (Europe/Berlin)"
    assert row.locator("td").first.inner_text() == "nightly <b>report</b>"  # the description, escaped
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:00 UTC", row.locator(".next").inner_text())
    assert row.locator(".last").inner_text() == "never"


def test_cron_run_now_calls_the_jobs_handler_in_the_app_and_shows_the_run(page, services):
    page.goto("/cron")
    row = page.locator("table.jobs tbody tr[data-url='/tasks/report']")
    page.once("dialog", lambda dialog: dialog.accept())
    mark_document(page)
    row.get_by_role("button", name="Run now").click()
    expect(page.locator(".notice.ok")).to_have_text("Ran /tasks/report: status 200.")
    assert not_reloaded(page)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row.locator(".last").inner_text())
    assert row.locator(".status").inner_text() == "200"
    services.wait_for_logs({"/tasks/report"})
    found = services.call(services.logs.Query, logs_pb2.QueryRequest(app_id=services.app_id, page_size=1000,
                                                                     include_app_logs=True))
    [ran] = [r for r in found.logs if r.resource == "/tasks/report"]
    assert "served /tasks/report" in [line.message for line in ran.app_logs]  # the app's handler ran
