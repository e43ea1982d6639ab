"""The bundled example, App Engine's canonical guestbook (examples/guestbook), runs unchanged under ``kiln dev``:
webapp2 and Jinja2 from ``libraries:``, ndb and users from Google's SDK (installed by kiln for python27 apps and
served by kiln's API proxy), the stylesheet from a static handler. Through the router, NATS, the instance manager
and a real instance, signed in with kiln dev's sign-in page."""

from __future__ import annotations

import datetime
import html
import re
import shutil
import urllib.parse

import pytest

from tests.integration import apps
from tests.integration.apps import running, sign_in
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.nats

EXAMPLE = ROOT / "examples" / "guestbook"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A copy: kiln dev may add indexes to the app's index.yaml, and the example in the repository stays as written.
    app_dir = tmp_path_factory.mktemp("example") / "guestbook"
    shutil.copytree(EXAMPLE, app_dir)
    app_yaml = (app_dir / "app.yaml").read_text()
    with running(app_dir, {}, app_yaml=app_yaml) as srv:
        yield srv


def request(server, path, *, method="GET", cookie=None, form=None):
    """One request through the router: status, headers (lower-case names), body as text."""
    headers = {"Cookie": cookie} if cookie else {}
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    status, found, raw = apps.request(server, path, method=method, headers=headers, body=body)
    return status, found, raw.decode("utf-8", "replace")


def sign(server, content, *, book="default_guestbook", cookie=None):
    return request(server, "/sign?" + urllib.parse.urlencode({"guestbook_name": book}), method="POST",
                   cookie=cookie, form={"content": content})


def greetings(server, *, book="default_guestbook", cookie=None):
    """The greetings the page shows, in its order: (author line, content)."""
    status, _, page = request(server, "/?" + urllib.parse.urlencode({"guestbook_name": book}), cookie=cookie)
    assert status == 200, page
    found = re.findall(r'<p class="author">(.*?)</p>\s*<blockquote>(.*?)</blockquote>', page, re.DOTALL)
    return [(" ".join(html.unescape(re.sub(r"<[^>]+>", "", a)).split()), html.unescape(c)) for a, c in found]


def test_the_page_links_to_sign_in_and_its_stylesheet(server):
    status, headers, page = request(server, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert re.search(r'<a class="sign" href="[^"]*/_ah/login\?[^"]*">Sign in</a>', page)
    assert '<link type="text/css" rel="stylesheet" href="/stylesheets/main.css">' in page


def test_a_signed_in_user_sees_a_sign_out_link(server):
    cookie = sign_in(server, "reader@example.com")
    _, _, page = request(server, "/", cookie=cookie)
    assert re.search(r'<a class="sign" href="[^"]*">Sign out</a>', page)
    # The SDK's nickname: the email address, less the deployment's auth domain when it is that domain.
    assert re.search(r'<span class="user">reader(@example\.com)?</span>', page)


def test_a_greeting_is_shown_with_its_author_and_date(server):
    cookie = sign_in(server, "ann@example.com")
    status, headers, _ = sign(server, "Hello <kiln> & friends", book="authored", cookie=cookie)
    assert status == 302
    assert headers["location"].endswith("/?guestbook_name=authored")
    [(author, content)] = greetings(server, book="authored", cookie=cookie)
    assert content == "Hello <kiln> & friends"
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert re.fullmatch(rf"ann@example\.com \(you\) wrote on {today} \d\d:\d\d UTC:", author), author


def test_a_greeting_signed_anonymously_says_so(server):
    assert sign(server, "nobody here", book="anonymous")[0] == 302
    [(author, content)] = greetings(server, book="anonymous")
    assert author.startswith("An anonymous person wrote on ")
    assert content == "nobody here"


def test_the_page_shows_the_newest_ten_greetings_first(server):
    for n in range(12):
        assert sign(server, f"greeting {n}", book="many")[0] == 302
    assert [content for _, content in greetings(server, book="many")] == [f"greeting {n}" for n in range(11, 1, -1)]


def test_each_guestbook_shows_only_its_own_greetings(server):
    sign(server, "in the red book", book="red")
    sign(server, "in the blue book", book="blue")
    assert [c for _, c in greetings(server, book="red")] == ["in the red book"]
    assert [c for _, c in greetings(server, book="blue")] == ["in the blue book"]


@pytest.mark.parametrize("content", ["", "   ", "\n\t"])
def test_an_empty_greeting_is_refused_with_a_message_and_nothing_is_stored(server, content):
    book = f"empty-{len(content)}"
    status, _, page = sign(server, content, book=book)
    assert status == 400
    assert '<p class="error" role="alert">A greeting needs some words: nothing was signed.</p>' in page
    assert greetings(server, book=book) == []


def test_the_stylesheet_is_served_by_the_static_handler_with_its_content_type(server):
    status, headers, body = request(server, "/stylesheets/main.css")
    assert status == 200
    assert headers["content-type"].startswith("text/css")
    assert body == (EXAMPLE / "stylesheets" / "main.css").read_text()
