"""CPU per request of an instance writing one Cloud Logging entry, against the same app printing one line.

One app under ``kiln dev`` (python313, google-cloud-logging 3.5.0 from Google's Django Blobstore sample's
requirements) answers ``/noop``, ``/print`` (one ``print()``: a line of the request log, the cheapest way) and
``/log_text`` (``logger.log_text``: google-cloud-logging → requests → urllib3 → the runtime's in-process
``entries:write``). Each round runs ``--requests`` requests of each, interleaved, and reads the instance process's
utime+stime from /proc before and after: CPU per request, and per round the ratio log_text/print and the CPU a
``log_text`` adds over ``/noop``. Run: ``.venv/bin/python -m bench.cloudlogging_bench --rounds 3 --requests 200``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import textwrap

from tests.integration.apps import request, running

REQUIREMENTS = (pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "google_samples" / "blobstore"
                / "django" / "requirements.txt")
MAIN = textwrap.dedent('''
    from google.cloud import logging

    logger = logging.Client().logger("bench")

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/print":
            print("bench: one line")
        elif path == "/log_text":
            logger.log_text("one line")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
''')
PATHS = ("/noop", "/print", "/log_text")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    print("load average at start:", " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3]))
    app_dir = pathlib.Path(tempfile.mkdtemp(prefix="cloudloggingbench"))
    try:
        shutil.copy(REQUIREMENTS, app_dir / "requirements.txt")
        with running(app_dir, {"main.py": MAIN}, app_yaml="runtime: python313\n") as srv:
            for path in PATHS:
                assert request(srv, path)[0] == 200  # warm: the app imported, a token fetched, pools open
            pid = int(subprocess.check_output(["pgrep", "-n", "-f", f"runtime.*{app_dir.name}"]).split()[0])
            per: dict[str, list[float]] = {p: [] for p in PATHS}
            ratios, added = [], []
            for n in range(args.rounds):
                for path in PATHS:
                    before = cpu_seconds(pid)
                    for _ in range(args.requests):
                        assert request(srv, path)[0] == 200
                    per[path].append((cpu_seconds(pid) - before) / args.requests * 1e3)
                ratios.append(per["/log_text"][-1] / per["/print"][-1])
                added.append(per["/log_text"][-1] - per["/noop"][-1])
                print(f"round {n + 1}: " + ", ".join(f"{p} {per[p][-1]:.2f}" for p in PATHS)
                      + f" ms CPU/request; log_text/print {ratios[-1]:.2f}x; log_text adds {added[-1]:.2f} ms")
            print("median: " + ", ".join(f"{p} {statistics.median(per[p]):.2f}" for p in PATHS)
                  + f" ms CPU/request; median log_text/print {statistics.median(ratios):.2f}x; "
                  f"log_text adds {statistics.median(added):.2f} ms")
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
