"""The code samples of App Engine's Python runtime documentation, run as written (in Python 3 syntax) on kiln.

Each app below is a sample from the runtime's documentation pages ("App caching", "Requests and CGI", "The
environment", "Request logs", "The request timer", and the getting-started guestbook with ``users`` and
``db.GqlQuery``): Google's SDK (``google.appengine``) and webapp2 are what they import, as on App Engine.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.apps import request, running, sign_in

pytestmark = pytest.mark.nats

APP_YAML = """
runtime: python27
api_version: 1
threadsafe: false

libraries:
- name: webapp2
  version: "2.5.2"

handlers:
- url: /env.py
  script: env.py
- url: /cgi.py
  script: cgi_main.py
- url: /.*
  script: main.app
"""

MYMODULE = '''
counter = 0

def increment():
    global counter
    counter += 1
    return counter
'''

MAIN = '''
import os
import time

import webapp2
from google.appengine.api import users
from google.appengine.ext import db
from google.appengine.runtime import DeadlineExceededError

import mymodule


class Greeting(db.Model):
    author = db.UserProperty()
    content = db.StringProperty(multiline=True)
    date = db.DateTimeProperty(auto_now_add=True)


class Counter(webapp2.RequestHandler):
    def get(self):
        self.response.headers['Content-Type'] = 'text/plain'
        self.response.out.write('counter: %d' % mymodule.increment())


class LogId(webapp2.RequestHandler):
    def get(self):
        self.response.headers['Content-Type'] = 'text/plain'
        self.response.out.write(os.environ.get('REQUEST_LOG_ID'))


class Slow(webapp2.RequestHandler):
    def get(self):
        try:
            while True:
                time.sleep(30)
        except DeadlineExceededError:
            self.response.clear()
            self.response.set_status(500)
            self.response.out.write("This operation could not be completed in time...")


class MainPage(webapp2.RequestHandler):
    def get(self):
        self.response.out.write('<html><body>')
        greetings = db.GqlQuery("SELECT * FROM Greeting ORDER BY date DESC LIMIT 10")
        for greeting in greetings:
            if greeting.author:
                self.response.out.write('<b>%s</b> wrote:' % greeting.author.nickname())
            else:
                self.response.out.write('An anonymous person wrote:')
            self.response.out.write('<blockquote>%s</blockquote>' % greeting.content)
        if users.get_current_user():
            url = users.create_logout_url(self.request.uri)
            url_linktext = 'Logout'
        else:
            url = users.create_login_url(self.request.uri)
            url_linktext = 'Login'
        self.response.out.write('<a href="%s">%s</a></body></html>' % (url, url_linktext))


class Guestbook(webapp2.RequestHandler):
    def post(self):
        greeting = Greeting()
        if users.get_current_user():
            greeting.author = users.get_current_user()
        greeting.content = self.request.get('content')
        greeting.put()
        self.redirect('/')


app = webapp2.WSGIApplication([
    ('/', MainPage),
    ('/sign', Guestbook),
    ('/counter', Counter),
    ('/logid', LogId),
    ('/slow', Slow),
], debug=True)
'''

ENV = '''
import os
print('Content-Type: text/plain')
print('')
for name in os.environ.keys():
    print("%s = %s" % (name, os.environ[name]))
'''

CGI_MAIN = '''
import os

calls = 0

def main():
    global calls
    calls += 1
    print('Content-Type: text/plain')
    print('')
    print('Hello, world! call %d' % calls)

if __name__ == '__main__':
    main()
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    files = {"main.py": MAIN, "mymodule.py": MYMODULE, "env.py": ENV, "cgi_main.py": CGI_MAIN}
    with running(tmp_path_factory.mktemp("docsamples"), files, app_yaml=APP_YAML, request_deadline=3) as srv:
        yield srv


def test_app_caching_keeps_imported_modules_between_requests(server):
    first = int(request(server, "/counter")[2].split(b": ")[1])
    second = int(request(server, "/counter")[2].split(b": ")[1])
    assert second == first + 1


def test_cgi_script_with_main_is_cached_and_main_called_per_request(server):
    first = request(server, "/cgi.py")[2]
    second = request(server, "/cgi.py")[2]
    assert first.startswith(b"Hello, world! call ") and second.startswith(b"Hello, world! call ")
    assert int(second.split()[-1]) == int(first.split()[-1]) + 1


def test_environment_sample_lists_app_engine_variables(server):
    status, headers, body = request(server, "/env.py")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    env = dict(line.split(" = ", 1) for line in body.decode().splitlines() if " = " in line)
    assert env["APPLICATION_ID"] == server.app_id
    assert re.fullmatch(r"v1\.\d+", env["CURRENT_VERSION_ID"])
    for name in ("AUTH_DOMAIN", "INSTANCE_ID", "REQUEST_LOG_ID", "SERVER_SOFTWARE", "DEFAULT_VERSION_HOSTNAME",
                 "REQUEST_METHOD", "PATH_INFO", "SERVER_NAME"):
        assert env[name], name
    assert env["PATH_INFO"] == "/env.py"


def test_request_log_id_differs_per_request(server):
    first = request(server, "/logid")[2]
    second = request(server, "/logid")[2]
    assert first and second and first != second
    assert re.fullmatch(rb"[0-9a-f]+", first)


def test_deadline_exceeded_error_caught_by_the_handler_gives_its_answer(server):
    status, _, body = request(server, "/slow")
    assert (status, body) == (500, b"This operation could not be completed in time...")


def test_guestbook_with_users_and_gql_shows_the_signed_in_author(server):
    cookie = sign_in(server, "ada@gmail.com")  # nickname: the address without the auth domain
    status, headers, _ = request(server, "/sign", method="POST", body="content=Hello+from+the+docs",
                                 headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302 and headers["location"].endswith("/")
    status, _, page = request(server, "/", headers={"Cookie": cookie})
    assert status == 200
    assert b"<b>ada</b> wrote:<blockquote>Hello from the docs</blockquote>" in page
    assert b">Logout</a>" in page


def test_guestbook_anonymous_visitor_gets_a_login_link(server):
    request(server, "/sign", method="POST", body="content=anon",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
    status, _, page = request(server, "/")
    assert status == 200 and b"An anonymous person wrote:<blockquote>anon</blockquote>" in page
    assert b"/_ah/login" in page and b">Login</a>" in page
