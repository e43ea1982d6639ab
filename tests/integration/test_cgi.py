"""CGI handlers (``script: file.py``) and App Engine's app caching, through router, NATS and runtime."""

from __future__ import annotations


import pytest

from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

APP_YAML = """
runtime: python27
api_version: 1
threadsafe: false
handlers:
- url: /cached.*
  script: cached.py
- url: /rerun.*
  script: rerun.py
- url: /garbage
  script: garbage.py
- url: /.*
  script: echo.py
"""

CACHED = '''
import os
LOADS = globals().get("LOADS", 0) + 1
CALLS = []

def main():
    CALLS.append(1)
    print("Content-Type: text/plain")
    print("")
    print(f"loads={LOADS} calls={len(CALLS)}", end="")

if __name__ == "__main__":
    main()
'''

RERUN = '''
import sys
counter = sys.modules.setdefault("rerun_counter", type(sys)("rerun_counter"))
counter.runs = getattr(counter, "runs", 0) + 1
print("Content-Type: text/plain")
print()
print(f"runs={counter.runs}", end="")
'''

ECHO = '''
import os, sys
body = sys.stdin.read()
print("Status: 201 Created")
print("Content-Type: text/plain")
print("X-Path: " + os.environ["PATH_INFO"])
print()
print(f"{os.environ['REQUEST_METHOD']} {body}", end="")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    files = {"cached.py": CACHED, "rerun.py": RERUN, "echo.py": ECHO,
             "garbage.py": 'print("this is not a CGI response")\n'}
    with running(tmp_path_factory.mktemp("cgi"), files, app_yaml=APP_YAML) as srv:
        yield srv


def test_cgi_output_is_the_response_with_status_and_headers(server):
    status, headers, body = fetch(server, "/echo/x", data=b"hello")
    assert status == 201 and body == b"POST hello"
    assert headers["X-Path"] == "/echo/x" and headers["Content-Type"] == "text/plain"


def test_cgi_script_with_main_is_cached_and_main_is_called_again(server):
    assert fetch(server, "/cached")[2] == b"loads=1 calls=1"
    assert fetch(server, "/cached")[2] == b"loads=1 calls=2"


def test_cgi_script_without_main_runs_again_each_time(server):
    first = int(fetch(server, "/rerun")[2].split(b"=")[1])
    assert fetch(server, "/rerun")[2] == f"runs={first + 1}".encode()


def test_garbage_cgi_output_gives_500_and_the_instance_keeps_serving(server):
    status, _, body = fetch(server, "/garbage")
    assert status == 500 and b"not a CGI response" not in body
    assert fetch(server, "/echo/ok", data=b"x")[0] == 201
