"""Deploy benchmark: ``kiln deploy`` of a 1,000-file app to the control plane, first upload and an unchanged
re-upload, beside copying the same files locally.

In one run on one machine (a real nats-server and ``python -m deploy.control`` on loopback, embedded store):

- baseline: ``shutil.copytree`` of the app directory — the floor of putting the same bytes somewhere else
  on this disk, with no hashing, network or durability;
- first deploy: scan (skip_files), hash, ``MissingBlobs``, upload of every file (4 streams), ``CreateVersion``;
- unchanged re-deploy: the same directory again: scan, hash, ``MissingBlobs`` finds nothing to send,
  ``CreateVersion`` makes the next minor;
- the ratio of each to the baseline (how many times slower).

Usage::

    .venv/bin/python bench/deploy_bench.py [--files 1000] [--size 8192] [--storage embedded|cassandra]
        [--cassandra-hosts HOST:PORT]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from deploy import upload  # noqa: E402
from deploy.control import tokens  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402

ADMIN_SECRET = "bench-admin-secret"
APP = "bench"


def make_app(root: pathlib.Path, files: int, size: int) -> None:
    """``files`` files (app.yaml, main.py, the rest spread over directories of 100) of ``size`` bytes each."""
    root.mkdir(parents=True)
    (root / "app.yaml").write_text("runtime: python311\nhandlers:\n- url: /.*\n  script: auto\n")
    (root / "main.py").write_text("def app(environ, start_response):\n    return []\n")
    for i in range(files - 2):
        d = root / f"pkg{i // 100}"
        d.mkdir(exist_ok=True)
        (d / f"mod{i}.py").write_bytes(os.urandom(size // 2).hex().encode()[:size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=8192, help="bytes per file")
    parser.add_argument("--storage", choices=("embedded", "cassandra"), default="embedded")
    parser.add_argument("--cassandra-hosts", default="127.0.0.1:9042")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-deploy-bench-") as tmp:
        base = pathlib.Path(tmp)
        app = base / "app"
        make_app(app, args.files, args.size)
        total = sum(f.stat().st_size for f in app.rglob("*") if f.is_file())

        started = time.perf_counter()
        shutil.copytree(app, base / "copy")
        copy_s = time.perf_counter() - started

        sup = Supervisor(base / "run")
        try:
            nats = sup.start_nats(base / "nats")
            env = {**os.environ, "KILN_CONTROL_ADMIN_SECRET": ADMIN_SECRET, "KILN_CONTROL_SERVICE_SECRET": "bench"}
            extra = ["--storage", args.storage]
            if args.storage == "cassandra":
                extra += ["--cassandra-hosts", args.cassandra_hosts, "--cassandra-keyspace", "kiln_deploy_bench"]
            ready = base / "control.addr"
            control = sup.start("control", python_module(
                "deploy.control", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                "--nats-url", f"nats://{nats.address}", "--data-dir", str(base / "control"), *extra),
                env=env, ready_file=ready, timeout=120)
            token = tokens.mint(ADMIN_SECRET, APP, "admin", "bench")
            version = f"v{int(time.time())}"
            with grpc.insecure_channel(control.address) as channel:
                started = time.perf_counter()
                first = upload.deploy(channel, token, app, APP, version, promote=True, host_check=False)
                first_s = time.perf_counter() - started
                started = time.perf_counter()
                again = upload.deploy(channel, token, app, APP, version, promote=False, host_check=False)
                again_s = time.perf_counter() - started
        finally:
            sup.stop_all()
    mb = total / 1e6
    print(f"app: {args.files:,} files, {mb:.1f} MB; control plane storage: {args.storage}")
    print(f"baseline copytree:      {copy_s * 1000:8.0f} ms  ({mb / copy_s:7.1f} MB/s)")
    print(f"kiln deploy, first:     {first_s * 1000:8.0f} ms  ({mb / first_s:7.1f} MB/s, "
          f"{first.uploaded_files:,} files uploaded)  {first_s / copy_s:6.1f}x the baseline")
    print(f"kiln deploy, unchanged: {again_s * 1000:8.0f} ms  ({again.uploaded_files:,} files uploaded, "
          f"minor {again.version.minor})  {again_s / copy_s:6.1f}x the baseline")


if __name__ == "__main__":
    main()
