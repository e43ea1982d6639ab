"""The guestbook: App Engine's canonical first app, as its Python tutorial built it.

Each greeting is an ndb entity whose parent is its guestbook's key, so the page's
query is an ancestor query: strongly consistent, newest ten first (index.yaml
declares its index). The signed-in user, if any, is the greeting's author; the
page links to sign in or out. It runs on kiln as written for App Engine: webapp2
and Jinja2 come from app.yaml's ``libraries:``, ``google.appengine`` from
Google's SDK, whose calls kiln serves.
"""

import os
import urllib.parse

import jinja2
import webapp2
from google.appengine.api import users
from google.appengine.ext import ndb

DEFAULT_GUESTBOOK = "default_guestbook"
PAGE_SIZE = 10

TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.dirname(__file__)), autoescape=True)


def guestbook_key(name=DEFAULT_GUESTBOOK):
    """The key every greeting of guestbook ``name`` has as its parent (one entity group per guestbook)."""
    return ndb.Key("Guestbook", name)


class Author(ndb.Model):
    """Who signed: the user's id and email address."""

    identity = ndb.StringProperty(indexed=False)
    email = ndb.StringProperty(indexed=False)


class Greeting(ndb.Model):
    """One signed message."""

    author = ndb.StructuredProperty(Author)
    content = ndb.StringProperty(indexed=False)
    date = ndb.DateTimeProperty(auto_now_add=True)


class MainPage(webapp2.RequestHandler):
    """The guestbook: the form, and its newest greetings."""

    def get(self):
        self.show_page(self.request.get("guestbook_name", DEFAULT_GUESTBOOK))

    def show_page(self, guestbook_name, error=None):
        greetings = Greeting.query(ancestor=guestbook_key(guestbook_name)).order(-Greeting.date).fetch(PAGE_SIZE)
        user = users.get_current_user()
        if user:
            sign_url, sign_text = users.create_logout_url(self.request.uri), "Sign out"
        else:
            sign_url, sign_text = users.create_login_url(self.request.uri), "Sign in"
        page = TEMPLATES.get_template("index.html").render({
            "user": user,
            "greetings": greetings,
            "guestbook_name": guestbook_name,
            "sign_url": sign_url,
            "sign_text": sign_text,
            "error": error,
        })
        self.response.write(page)


class Sign(MainPage):
    """Stores a greeting in the guestbook named by the query string, then shows the guestbook again."""

    def post(self):
        guestbook_name = self.request.get("guestbook_name", DEFAULT_GUESTBOOK)
        content = self.request.get("content").strip()
        if not content:
            self.response.status_int = 400
            self.show_page(guestbook_name, error="A greeting needs some words: nothing was signed.")
            return
        greeting = Greeting(parent=guestbook_key(guestbook_name), content=content)
        user = users.get_current_user()
        if user:
            greeting.author = Author(identity=user.user_id(), email=user.email())
        greeting.put()
        self.redirect("/?" + urllib.parse.urlencode({"guestbook_name": guestbook_name}))


app = webapp2.WSGIApplication([
    ("/", MainPage),
    ("/sign", Sign),
])
