"""How the console's indexes page shows each state of a composite index (console/datastore.py and indexes.html):
real protobufs rendered by the real template, no sockets. A building or failed index cannot be held in that state
deterministically against a running datastore, so each state's rendering is checked here."""

from __future__ import annotations

import html.parser

import pytest

from console import datastore, render
from kiln.pb.datastore.v1 import datastore_pb2 as ds


def _index(state: int, error: str = "") -> ds.CompositeIndex:
    return ds.CompositeIndex(kind="Album", ancestor=True, state=state, error=error, properties=[
        ds.PropertyOrder(property=ds.PropertyReference(name="year"), direction=ds.PropertyOrder.DIRECTION_DESCENDING),
        ds.PropertyOrder(property=ds.PropertyReference(name="title"))])


class _Cells(html.parser.HTMLParser):
    """The text of each element with a class, by class (what a reader sees in each cell)."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open.append(dict(attrs).get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        self._open.pop()

    def handle_data(self, data: str) -> None:
        for name in self._open:
            if name:
                self.text[name] = self.text.get(name, "") + data


def _rendered(*indexes: ds.CompositeIndex) -> str:
    return render.ENV.get_template("indexes.html").render(
        request_path="/datastore/indexes", csrf_token="t", pages=render.PAGES, app_id="app", htmx=render.HTMX, signed_in=None,
        indexes=[datastore.shown_index(i) for i in indexes])


def _cells(page: str) -> dict[str, str]:
    parser = _Cells()
    start = page.index('<table class="indexes"')
    parser.feed(page[start:page.index("</table>", start) + len("</table>")])
    return parser.text


@pytest.mark.parametrize(("state", "shown"), [(ds.CompositeIndex.STATE_BUILDING, "building"),
                                              (ds.CompositeIndex.STATE_SERVING, "serving"),
                                              (ds.CompositeIndex.STATE_DELETING, "deleting")])
def test_each_state_is_shown_by_its_name(state, shown):
    assert _cells(_rendered(_index(state)))[f"badge {shown}"] == shown


def test_a_failed_index_shows_error_and_its_reason():
    cells = _cells(_rendered(_index(ds.CompositeIndex.STATE_ERROR, "value too large for an index row")))
    assert cells["badge error"] == "error"
    assert cells["reason"] == "value too large for an index row"


def test_an_index_shows_its_kind_ancestor_and_properties_in_index_order_with_directions():
    shown = datastore.shown_index(_index(ds.CompositeIndex.STATE_SERVING))
    assert (shown.kind, shown.ancestor, shown.properties) == ("Album", True, (("year", "desc"), ("title", "asc")))


def test_a_state_from_a_newer_service_is_shown_as_unknown():
    assert datastore.shown_index(_index(99)).state == "unknown"


def test_a_hostile_kind_and_reason_are_escaped():
    index = _index(ds.CompositeIndex.STATE_ERROR, "<script>x()</script>")
    index.kind = "<img src=x onerror=y()>"
    page = _rendered(index)
    assert "<script>x()" not in page and "<img src=x" not in page
    assert "&lt;script&gt;x()&lt;/script&gt;" in page


def test_no_indexes_says_so():
    assert "No composite indexes" in _rendered()
