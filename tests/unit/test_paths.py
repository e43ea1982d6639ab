"""router.paths: the request target, normalised once for every decision."""

import pytest

from router.paths import BadPathError, parse_target


@pytest.mark.parametrize(("raw", "path"), [
    ("/admin/panel", "/admin/panel"),
    ("//admin/panel", "/admin/panel"),
    ("///admin//panel", "/admin/panel"),
    ("/./admin/panel", "/admin/panel"),
    ("/x/../admin/panel", "/admin/panel"),
    ("/../../admin/panel", "/admin/panel"),
    ("/%2e%2e/admin/panel", "/admin/panel"),
    ("/x/%2E%2E/admin/panel", "/admin/panel"),
    ("/x%2F..%2Fadmin/panel", "/admin/panel"),
    ("/%2Fadmin/panel", "/admin/panel"),
    ("/admin/%2e/panel", "/admin/panel"),
    ("/admin/x/..", "/admin/"),
    ("/admin/.", "/admin/"),
    ("/admin/", "/admin/"),
    ("/", "/"),
])
def test_dot_segments_and_repeated_slashes_are_resolved_after_decoding(raw, path):
    assert parse_target(raw).path == path


@pytest.mark.parametrize("raw", ["/admin;x/panel", "/ADMIN/panel", "/Admin/Panel", "/admin..;/panel", "/%25zz"])
def test_case_path_parameters_and_other_characters_are_data(raw):
    target = parse_target(raw)
    assert target.path == raw.replace("%25", "%")


@pytest.mark.parametrize("raw", ["/a b/%2e%2e/c", "/caf%C3%A9/x", "/%25252e", "/a%3Fb", "/%ff%fe"])
def test_the_wire_path_decodes_back_to_the_path_once(raw):
    import urllib.parse
    target = parse_target(raw.replace(" ", "%20"))
    assert urllib.parse.unquote(target.wire_path) == target.path


@pytest.mark.parametrize("raw", ["/admin\\panel", "/x\\..\\admin/panel", "/%5c..%5cadmin/panel", "/admin%00/panel",
                                 "/admin/%0d%0aX: y", "/a%7f", "/admin#frag", "*", "admin/panel", "/caf\u00e9",
                                 "ftp://host/x", "http:///x", "http://user@host/x"])
def test_targets_no_browser_sends_are_refused(raw):
    with pytest.raises(BadPathError):
        parse_target(raw)


def test_the_query_is_kept_as_sent():
    target = parse_target("/x/../y?a=%26b&c=d+e")
    assert (target.path, target.query) == ("/y", "a=%26b&c=d+e")


def test_an_absolute_form_target_gives_its_path_and_authority():
    target = parse_target("http://Other.Test:81//x/../admin/panel?q=1")
    assert (target.path, target.query, target.authority) == ("/admin/panel", "q=1", "Other.Test:81")


def test_a_target_is_parsed_once_and_a_refused_one_every_time():
    parse_target.cache_clear()
    first = parse_target("/cached/../path?q=1")
    assert parse_target("/cached/../path?q=1") is first
    for _ in range(2):
        with pytest.raises(BadPathError):
            parse_target("/a\\b")
    info = parse_target.cache_info()
    assert (info.hits, info.currsize) == (1, 1)
