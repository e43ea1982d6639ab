"""The task queue's events in ``kiln dev``'s own output: a task dropped after its retry limits is printed as a line
of kiln dev, with the queue, the task and its last answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from tests.integration.test_first_run import ROOT

pytestmark = pytest.mark.nats

APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"
QUEUE_YAML = textwrap.dedent("""\
    queue:
    - name: doomed
      rate: 10/s
      retry_parameters:
        task_retry_limit: 1
        min_backoff_seconds: 0.1
""")
MAIN = textwrap.dedent('''
    from kiln.api import taskqueue

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/enqueue":
            taskqueue.add(name="never-works", url="/fails", queue_name="doomed")
            start_response("200 OK", [])
            return [b"added"]
        start_response("500 Internal Server Error", [])
        return [b"no"]
''')


def read_until(proc: subprocess.Popen[str], text: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while True:
        assert time.monotonic() < deadline and proc.poll() is None, f"kiln dev never printed {text!r}"
        line = proc.stdout.readline()
        if text in line:
            return line


def test_kiln_dev_prints_a_line_when_a_task_is_dropped_after_its_retry_limit(tmp_path):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    for name, text in {"app.yaml": APP_YAML, "queue.yaml": QUEUE_YAML, "main.py": MAIN}.items():
        (app_dir / name).write_text(text)
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "dev", str(app_dir), "--console-port", "0",
                                 "--data-dir", str(tmp_path / "data"), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=err,
                                text=True, start_new_session=True, cwd=ROOT)
    try:
        url = read_until(proc, "serving app", 120).split(" at ")[-1].strip()
        with urllib.request.urlopen(url + "enqueue", timeout=30) as resp:
            assert resp.read() == b"added"
        line = read_until(proc, "dropped after its retry limits", 60)
        assert line.startswith("kiln dev: taskqueue ")
        assert "/doomed: task never-works (POST /fails) failed 2 times (last answer 500)" in line
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=90)
