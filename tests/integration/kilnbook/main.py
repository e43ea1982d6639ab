"""A guestbook written against kiln's own API (``kiln.ext.db``): the end-to-end tests' app.

(The bundled example, ``examples/guestbook``, is App Engine's canonical guestbook on Google's SDK.)

Greetings are ``db.Model`` entities, children of one guestbook key, so listing
them is an ancestor query: strongly consistent, as App Engine's tutorial
explains. The listing is GQL sorted by date, which needs the composite index in
``index.yaml`` (``kiln dev`` would have added it there automatically).
"""

import html
import json
import urllib.parse

from kiln.ext import db

PAGE = """<!doctype html>
<html><head><title>Guestbook</title></head><body>
<h1>Guestbook {book}</h1>
<form method="post" action="/sign?guestbook={book_q}">
  <textarea name="content" rows="3" cols="60"></textarea>
  <button type="submit">Sign</button>
</form>
<ul>
{items}
</ul>
</body></html>
"""


class Greeting(db.Model):
    """One signed message."""

    content = db.StringProperty(multiline=True)
    date = db.DateTimeProperty(auto_now_add=True)


def guestbook_key(name):
    return db.Key.from_path("Guestbook", name or "default")


def list_greetings(book):
    return db.GqlQuery("SELECT * FROM Greeting WHERE ANCESTOR IS :1 ORDER BY date DESC LIMIT 100",
                       guestbook_key(book)).fetch(100)


def app(environ, start_response):
    params = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    book = params.get("guestbook", ["default"])[0]
    path = environ["PATH_INFO"]
    if path == "/sign" and environ["REQUEST_METHOD"] == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        form = urllib.parse.parse_qs(environ["wsgi.input"].read(size).decode("utf-8"))
        Greeting(parent=guestbook_key(book), content=form.get("content", [""])[0]).put()
        start_response("302 Found", [("Location", "/?guestbook=" + urllib.parse.quote(book))])
        return [b""]
    if path == "/api/greetings":
        items = [{"id": g.key().id(), "content": g.content} for g in list_greetings(book)]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(items).encode()]
    if path == "/":
        items = "\n".join(f"<li>{html.escape(g.content)}</li>" for g in list_greetings(book))
        body = PAGE.format(book=html.escape(book), book_q=urllib.parse.quote(book), items=items)
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body.encode("utf-8")]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"Not found\n"]
