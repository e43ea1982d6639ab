"""A guestbook: greetings stored in the datastore under one guestbook entity.

Greetings are children of a ``Guestbook`` entity, so listing them is an
ancestor query, strongly consistent as App Engine's tutorial explains.
"""

import datetime
import html
import json
import urllib.parse

from kiln.api import datastore

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


def guestbook_key(name):
    return datastore.Key.from_path("Guestbook", name or "default")


def list_greetings(book):
    query = datastore.Query("Greeting").Ancestor(guestbook_key(book))
    return list(query.Run(limit=100))


def app(environ, start_response):
    params = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    book = params.get("guestbook", ["default"])[0]
    path = environ["PATH_INFO"]
    if path == "/sign" and environ["REQUEST_METHOD"] == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        form = urllib.parse.parse_qs(environ["wsgi.input"].read(size).decode("utf-8"))
        greeting = datastore.Entity("Greeting", parent=guestbook_key(book))
        greeting["content"] = form.get("content", [""])[0]
        greeting["date"] = datetime.datetime.now(datetime.timezone.utc)
        datastore.Put(greeting)
        start_response("302 Found", [("Location", "/?guestbook=" + urllib.parse.quote(book))])
        return [b""]
    if path == "/api/greetings":
        items = [{"id": g.key().id(), "content": g["content"]} for g in list_greetings(book)]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(items).encode()]
    if path == "/":
        items = "\n".join(f"<li>{html.escape(g['content'])}</li>" for g in list_greetings(book))
        body = PAGE.format(book=html.escape(book), book_q=urllib.parse.quote(book), items=items)
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body.encode("utf-8")]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"Not found\n"]
