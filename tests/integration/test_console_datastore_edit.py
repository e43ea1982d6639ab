"""Editing and creating entities and the GQL console, in Debian's Chromium (Playwright) against a real ``kiln dev``;
each effect is checked in datastore_svc itself. The index a query needs is checked against a datastore that does
not add indexes by itself (as in a cluster), over plain HTTP."""

from __future__ import annotations

import datetime
import http.client
import urllib.parse
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from console import forms, values
from deploy.dev import DevServer
from kiln.pb.datastore.v1 import datastore_pb2 as ds
from kiln_platform.supervisor import python_module
from tests.integration.apps import wait_for
from tests.integration.conftest import SECRET, service_env
from tests.integration.consolekit import (AsApp, browser, console_dev, console_request,  # noqa: F401 - fixtures
                                          mark_document, not_reloaded, page, timestamp)

pytestmark = [pytest.mark.nats, pytest.mark.browser]

HOSTILE = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2">'


# The app declares one composite index (the indexes page lists it with its state).
INDEX_YAML = """indexes:
- kind: Album
  ancestor: yes
  properties:
  - name: year
    direction: desc
  - name: title
"""


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Iterator[DevServer]:
    app_dir = tmp_path_factory.mktemp("console-edit") / "app"
    app_dir.mkdir()
    (app_dir / "index.yaml").write_text(INDEX_YAML)
    with console_dev(app_dir) as server:
        yield server


@pytest.fixture(scope="module")
def services(dev) -> Iterator[AsApp]:
    calls = AsApp(dev)
    yield calls
    calls.close()


def _open(page: Page, kind: str, name: str) -> None:
    page.goto(f"/datastore?kind={kind}")
    page.get_by_role("link", name=f"{kind}:'{name}'", exact=True).click()
    expect(page.locator("h1")).to_have_text(f"{kind}:'{name}'")


def _field(page: Page, name: str, part: str = "textarea"):
    return page.locator(f"#entity-form tr[data-field={name!r}] {part}")


def _query(services: AsApp, kind: str, namespace: str = "") -> list[ds.Entity]:
    answer = services.call(services.datastore.RunQuery, ds.RunQueryRequest(
        partition_id=ds.PartitionId(namespace=namespace), query=ds.Query(kind=kind)))
    return [r.entity for r in answer.batch.entity_results]


# --- edit --------------------------------------------------------------------------------------------------------


def test_editing_with_a_wrong_type_shows_the_error_by_the_field_then_the_fix_is_saved(page, services):
    when = datetime.datetime(2026, 5, 17, 8, 30, 15, tzinfo=datetime.UTC)
    key = services.put("Widget", "w1", {
        "count": ds.Value(integer_value=1),
        "notes": ds.Value(string_value="long words", meaning=ds.MEANING_TEXT, exclude_from_indexes=True),
        "contact": ds.Value(string_value="ada@example.com", meaning=ds.MEANING_EMAIL),
        "made": timestamp(when),
    })
    before = services.get(key)
    _open(page, "Widget", "w1")
    _field(page, "count").fill("forty-two")
    page.get_by_role("button", name="Save").click()
    expect(_field(page, "count", ".field-error")).to_have_text("expected an integer, got 'forty-two'")
    assert _field(page, "count").get_attribute("aria-invalid") == "true"
    assert services.get(key) == before  # nothing written
    _field(page, "count").fill("42")
    _field(page, "made").fill("2027-01-02T03:04:05Z")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".notice.ok")).to_have_text("Saved.")
    stored = services.get(key)
    assert stored is not None
    assert stored.properties["count"] == ds.Value(integer_value=42)
    assert stored.properties["made"].timestamp_value.ToDatetime(datetime.UTC) == datetime.datetime(
        2027, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert stored.properties["notes"] == before.properties["notes"]  # untouched: Text, unindexed
    assert stored.properties["contact"] == before.properties["contact"]  # kept as it is: an Email


def test_changing_a_type_adding_a_list_and_removing_a_property_are_saved_in_one_put(page, services):
    key = services.put("Widget", "w2", {"size": ds.Value(integer_value=3), "old": ds.Value(boolean_value=True)})
    _open(page, "Widget", "w2")
    _field(page, "size", "select").select_option("float")
    _field(page, "size").fill("3.5")
    _field(page, "old", "input[type=checkbox][name$='.remove']").check()
    page.locator("#entity-form tr[data-field^='new-'] input[name$='.name']").first.fill("tags")
    page.locator("#entity-form tr[data-field^='new-'] select").first.select_option("list:string")
    page.locator("#entity-form tr[data-field^='new-'] textarea").first.fill('["red", "blue"]')
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".notice.ok")).to_have_text("Saved.")
    stored = services.get(key)
    assert stored is not None
    assert sorted(stored.properties) == ["size", "tags"]
    assert stored.properties["size"].double_value == 3.5
    assert [v.string_value for v in stored.properties["tags"].array_value.values] == ["red", "blue"]


def test_saving_a_stale_page_of_an_entity_deleted_meanwhile_says_so_and_does_not_recreate_it(page, services):
    key = services.put("Widget", "gone", {"count": ds.Value(integer_value=1)})
    _open(page, "Widget", "gone")
    services.call(services.datastore.Delete, ds.DeleteRequest(keys=[key]))  # deleted elsewhere since
    _field(page, "count").fill("2")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#messages .notice.error")).to_have_text(
        "no entity Widget:'gone': it was deleted since this page was loaded; nothing was saved")
    assert services.get(key) is None


def test_saving_a_stale_page_of_an_entity_changed_meanwhile_keeps_the_change(page, services):
    key = services.put("Widget", "raced", {"count": ds.Value(integer_value=1)})
    _open(page, "Widget", "raced")
    services.put("Widget", "raced", {"count": ds.Value(integer_value=7)})  # changed elsewhere since
    _field(page, "count").fill("2")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#messages .notice.error")).to_contain_text("Widget:'raced' changed since this page was "
                                                                    "loaded; nothing was saved")
    stored = services.get(key)
    assert stored is not None and stored.properties["count"].integer_value == 7


def test_hostile_names_and_values_are_escaped_in_the_edit_form(page, services):
    services.put("Note", "edit-hostile", {HOSTILE: ds.Value(string_value=HOSTILE),
                                          "body": ds.Value(string_value=HOSTILE)})
    _open(page, "Note", "edit-hostile")
    assert _field(page, "body").input_value() == HOSTILE
    assert page.locator(f"#entity-form tr[data-field={HOSTILE!r}] th").inner_text().strip() == HOSTILE
    assert page.locator("main script, main img").count() == 0
    assert page.evaluate("window.pwned === undefined")


# --- create ------------------------------------------------------------------------------------------------------


def _new_row(page: Page, index: int, name: str, type_: str, text: str) -> None:
    row = page.locator(f"#entity-form tr[data-field='new-{index}']")
    row.locator("input[name$='.name']").fill(name)
    row.locator("select").select_option(type_)
    row.locator("textarea").fill(text)


def test_creating_an_entity_with_a_name_in_a_namespace_stores_its_typed_values(page, services):
    page.goto("/datastore")
    page.get_by_role("link", name="New entity").click()
    page.locator("input[name=ns]").fill("shop")
    page.locator("#new-kind").fill("Product")
    page.locator("#new-name").fill("p1")
    _new_row(page, 0, "price", "float", "oops")
    _new_row(page, 1, "where", "geopt", "51.5, -0.12")
    page.get_by_role("button", name="Create entity").click()
    expect(page.locator("#entity-form tr[data-field='new-0'] .field-error")).to_have_text(
        "expected a number, got 'oops'")
    assert _query(services, "Product", "shop") == []  # nothing written
    page.locator("#entity-form tr[data-field='new-0'] textarea").fill("9.5")
    page.get_by_role("button", name="Create entity").click()
    expect(page.locator("h1")).to_have_text("Product:'p1'")
    [stored] = _query(services, "Product", "shop")
    assert stored.key.path[-1].name == "p1"
    assert stored.properties["price"] == ds.Value(double_value=9.5)
    assert stored.properties["where"] == ds.Value(geo_point_value=ds.GeoPoint(latitude=51.5, longitude=-0.12))


def test_creating_an_entity_without_a_name_allocates_a_numeric_id(page, services):
    page.goto("/datastore/new?kind=Counter")
    _new_row(page, 0, "n", "integer", "5")
    page.get_by_role("button", name="Create entity").click()
    expect(page.locator(".notice.ok")).to_have_text("Saved.")
    [stored] = _query(services, "Counter")
    assert stored.key.path[-1].id > 0
    assert page.locator("h1").inner_text() == f"Counter:{stored.key.path[-1].id}"
    assert stored.properties["n"] == ds.Value(integer_value=5)


def test_creating_an_entity_whose_key_exists_is_refused_and_keeps_the_existing_one(page, services):
    key = services.put("Product", "taken", {"v": ds.Value(integer_value=1)})
    page.goto("/datastore/new?kind=Product")
    page.locator("#new-name").fill("taken")
    _new_row(page, 0, "v", "integer", "2")
    page.get_by_role("button", name="Create entity").click()
    expect(page.locator("#messages .notice.error")).to_have_text(
        "Product:'taken' already exists; nothing was written (open it to edit it)")
    stored = services.get(key)
    assert stored is not None and stored.properties["v"].integer_value == 1


def test_creating_an_entity_without_a_kind_says_so_by_the_field_and_writes_nothing(page, services):
    page.goto("/datastore/new?ns=nokind")
    _new_row(page, 0, "v", "integer", "1")
    page.get_by_role("button", name="Create entity").click()
    expect(page.locator("#kind-error")).to_have_text("a new entity needs a kind")
    kinds = services.call(services.datastore.RunQuery, ds.RunQueryRequest(
        partition_id=ds.PartitionId(namespace="nokind"), query=ds.Query(kind="__kind__", keys_only=True)))
    assert list(kinds.batch.entity_results) == []


# --- GQL ---------------------------------------------------------------------------------------------------------


def test_a_gql_query_shows_its_results_in_the_entity_table(page, services):
    for i in range(5):
        services.put("Score", f"s{i}", {"points": ds.Value(integer_value=i * 10)})
    page.goto("/datastore/gql")
    page.locator("#gql-q").fill("SELECT * FROM Score WHERE points >= 20 ORDER BY points DESC")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("table.entities tbody th")).to_have_text(["Score:'s4'", "Score:'s3'", "Score:'s2'"])
    answer = services.call(services.datastore.RunQuery, ds.RunQueryRequest(gql_query=ds.GqlQuery(
        query_string="SELECT * FROM Score WHERE points >= 20 ORDER BY points DESC")))
    assert [r.entity.key.path[-1].name for r in answer.batch.entity_results] == ["s4", "s3", "s2"]
    assert page.locator("table.entities tbody td").all_inner_texts() == ["40", "30", "20"]


def test_a_gql_syntax_error_shows_the_parsers_message(page):
    page.goto("/datastore/gql")
    page.locator("#gql-q").fill("SELECT * FROM Score ORDERR BY points")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#gql-error")).to_have_text("GQL: unexpected token 'ORDERR' at position 20")


def test_a_hostile_gql_query_is_shown_as_text(page):
    page.goto("/datastore/gql?" + urllib.parse.urlencode({"q": HOSTILE}))
    assert page.locator("#gql-q").input_value() == HOSTILE
    assert page.locator("main script, main img").count() == 0
    assert page.evaluate("window.pwned === undefined")


@pytest.fixture(scope="module")
def many(services) -> list[str]:
    """120 entities of kind Many, numbered 0 to 119 by ``n``; their keys as the table shows them, in that order."""
    services.call(services.datastore.Put, ds.PutRequest(entities=[
        ds.Entity(key=ds.Key(path=[ds.PathElement(kind="Many", name=f"m{i:03d}")]),
                  properties={"n": ds.Value(integer_value=i)}) for i in range(120)]))
    return [f"Many:'m{i:03d}'" for i in range(120)]


def _shown_keys(page: Page) -> list[str]:
    return page.locator("#gql-results table.entities tbody th").all_inner_texts()


def test_gql_results_page_by_cursor_without_reloading_with_no_duplicates_or_gaps(page, many):
    page.goto("/datastore/gql")
    page.locator("#gql-q").fill("SELECT * FROM Many ORDER BY n")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#gql-count")).to_have_text("Results 1–50")
    mark_document(page)
    shown = _shown_keys(page)
    for count in ("Results 51–100", "Results 101–120"):
        page.get_by_role("link", name="Next page").click()
        expect(page.locator("#gql-count")).to_have_text(count)
        shown += _shown_keys(page)
    assert shown == many
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    assert not_reloaded(page)
    page.get_by_role("link", name="First page").click()
    expect(page.locator("#gql-count")).to_have_text("Results 1–50")


def test_gql_paging_keeps_the_querys_limit_and_offset(page, many):
    page.goto("/datastore/gql?" + urllib.parse.urlencode({"q": "SELECT * FROM Many ORDER BY n LIMIT 60 OFFSET 5"}))
    expect(page.locator("#gql-count")).to_have_text("Results 1–50")
    shown = _shown_keys(page)
    page.get_by_role("link", name="Next page").click()
    expect(page.locator("#gql-count")).to_have_text("Results 51–60")
    shown += _shown_keys(page)
    assert shown == many[5:65]
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)


def test_a_tampered_gql_cursor_is_refused_with_a_message(page, dev, many):
    page.goto("/datastore/gql?" + urllib.parse.urlencode({"q": "SELECT * FROM Many ORDER BY n"}))
    target = page.get_by_role("link", name="Next page").get_attribute("href")
    assert target is not None
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    cursor = params["cursor"][0]
    forged = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    for changed in ({"cursor": forged}, {"q": "SELECT * FROM Many ORDER BY n DESC"}):
        status, _, body = console_request(dev, "GET", "/datastore/gql?" + urllib.parse.urlencode(
            {k: v[0] for k, v in params.items()} | changed))
        assert status == 400
        assert "cursor: not a page of this query (it was changed, or the console restarted)" in body
    page.goto("/datastore/gql?" + urllib.parse.urlencode({k: v[0] for k, v in params.items()} | {"cursor": forged}))
    expect(page.locator("main")).to_contain_text("cursor: not a page of this query")
    expect(page.locator("table.entities")).to_have_count(0)


# --- indexes -----------------------------------------------------------------------------------------------------


def _states(services: AsApp) -> dict[str, int]:
    answer = services.call(services.datastore.ListIndexes, ds.ListIndexesRequest())
    return {i.kind: i.state for i in answer.indexes}


def test_an_index_declared_in_index_yaml_is_listed_serving_with_its_properties(page, services):
    wait_for(lambda: _states(services).get("Album") == ds.CompositeIndex.STATE_SERVING, 60)  # built in the background
    page.goto("/datastore")
    page.get_by_role("link", name="Indexes").click()
    row = page.locator("table.indexes tbody tr", has=page.locator("th", has_text="Album"))
    expect(row.locator(".ancestor")).to_have_text("yes")
    expect(row.locator(".props li")).to_have_text(["year desc", "title asc"])
    expect(row.locator(".state")).to_have_text("serving")


def test_an_index_kiln_dev_added_for_a_gql_query_is_listed_serving(page, services):
    services.put("Track", "t1", {"album": ds.Value(string_value="a"), "length": ds.Value(integer_value=3)})
    page.goto("/datastore/gql")
    page.locator("#gql-q").fill("SELECT * FROM Track WHERE album = 'a' ORDER BY length DESC")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("table.entities tbody th")).to_have_text(["Track:'t1'"])
    assert _states(services)["Track"] == ds.CompositeIndex.STATE_SERVING
    page.goto("/datastore/indexes")
    row = page.locator("table.indexes tbody tr", has=page.locator("th", has_text="Track"))
    expect(row.locator(".ancestor")).to_have_text("no")
    expect(row.locator(".props li")).to_have_text(["album asc", "length desc"])
    expect(row.locator(".state")).to_have_text("serving")


# --- the index a query needs (a datastore that does not add indexes itself, as in a cluster) -----------------------


@pytest.fixture(scope="module")
def cluster_console(supervisor, datastore_addr) -> str:
    run = supervisor.run_dir
    env = service_env() | {"KILN_CONSOLE_SERVICE_SECRET": SECRET}
    child = supervisor.start("console-need-index", python_module(
        "console", "--listen", "127.0.0.1:0", "--app-id", "console-index-app", "--datastore-addr", datastore_addr,
        "--ready-file", str(run / "console-need-index.addr")), env=env, ready_file=run / "console-need-index.addr")
    return child.address


def test_a_query_needing_a_composite_index_shows_the_index_yaml_entry(cluster_console):
    host, _, port = cluster_console.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    query = "SELECT * FROM Score WHERE level = 1 ORDER BY points DESC"
    try:
        conn.request("GET", "/datastore/gql?" + urllib.parse.urlencode({"q": query}))
        resp = conn.getresponse()
        html = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 200
    assert "this query needs a composite index; add it to index.yaml:" in html
    entry = html.split('<pre class="yaml" id="gql-index">', 1)[1].split("</pre>", 1)[0]
    assert entry.startswith("indexes:\n- kind: Score\n")
    assert "name: level" in entry and "name: points" in entry and "direction: desc" in entry


def test_a_save_without_the_pages_token_is_refused_and_writes_nothing(dev, services):
    key = services.put("Widget", "guarded", {"count": ds.Value(integer_value=1)})
    before = services.get(key)
    assert before is not None
    body = urllib.parse.urlencode({"key": values.encode_key(key), "version": forms.fingerprint(before), "rows": "1",
                                   "p0.name": "count", "p0.type": "integer", "p0.value": "2", "p0.indexed": "on"})
    host, _, port = dev.addresses["console"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/datastore/save", body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status == 403
    assert services.get(key) == before
