"""Blobstore benchmark: uploads of 1 MB and 100 MB files through kiln against the same upload to a plain aiohttp
file server, and the router's memory during a 100 MB upload.

In one run on one machine, with the same client (``curl -F file=@…``, one request at a time):

- **kiln**: ``kiln dev`` (embedded storage) with a small app; each upload gets a fresh upload URL from the app
  (not timed), then curl posts the file to it: the router takes the URL, streams the multipart body into
  blobstore_svc's CreateBlob (which writes it to disk in chunks), then forwards the form to the app's success
  path, whose answer ends the request;
- **baseline**: a plain aiohttp server (a process of its own, started by this script) that reads the multipart
  body with aiohttp's MultipartReader and writes the file to disk as it arrives.

Rounds interleave kiln and baseline for each size; MB/s figures are medians (of ``--repeat`` uploads per round
for 1 MB, one for 100 MB), ratios are kiln/baseline per round, then their median. Also: CPU seconds per MB of
each process on kiln's path (router, blobstore_svc, the app's instance) and of the baseline server, from /proc
(utime+stime before/after); and the router's peak RSS increase over its RSS before each 100 MB upload
(/proc/<router>/status VmRSS sampled every 5 ms), which must stay under 64 MB.

Downloads (``X-AppEngine-BlobKey`` serving) will add their rows in :func:`download_rows` (left empty here).

Usage::

    .venv/bin/python bench/blobstore_bench.py [--rounds 3] [--repeat 5] [--sizes 1,100]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import _cpu_seconds  # noqa: E402
from deploy.dev import DevOptions, DevServer  # noqa: E402
from kiln_platform.supervisor import free_port, port_open  # noqa: E402

MB = 1024 * 1024
RSS_LIMIT_MB = 64

APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"
APP_MAIN = '''
from kiln.api import blobstore

def app(environ, start_response):
    if environ["PATH_INFO"] == "/url":
        body = blobstore.create_upload_url("/done")
    else:
        body = "stored %d" % len(blobstore.get_uploads(environ))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
'''


# --- the baseline: a plain aiohttp server writing uploaded files to disk ----------------------------------------

def serve_baseline(port: int, directory: pathlib.Path) -> None:
    """Run the baseline server: POST /upload stores each file part under ``directory`` as it arrives."""
    from aiohttp import BodyPartReader, web

    async def upload(request: web.Request) -> web.Response:
        reader = await request.multipart()
        stored = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.filename is None:
                continue
            path = directory / f"{os.getpid()}-{time.monotonic_ns()}"
            with path.open("wb") as out:
                while chunk := await part.read_chunk(256 * 1024):
                    out.write(chunk)
            path.unlink()  # written; the benchmark keeps no files
            stored += 1
        return web.Response(text=f"stored {stored}")

    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/upload", upload)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- measuring --------------------------------------------------------------------------------------------------

def curl_upload(url: str, host: str, path: pathlib.Path) -> float:
    """Post ``path`` as a form's file with curl; the seconds it took (fails on any status but 200)."""
    done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-H", "Expect:",
                           "-H", f"Host: {host}", "-F", f"file=@{path};type=application/octet-stream", url],
                          capture_output=True, text=True, check=True, timeout=600)
    status, seconds = done.stdout.split()
    if status != "200":
        raise RuntimeError(f"upload to {url} answered {status}")
    return float(seconds)


def vm_rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class PeakRss:
    """Samples a process's VmRSS every 5 ms while in use; ``peak_mb`` is the largest increase over the start."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._stop = threading.Event()
        self.start_kb = self.peak_kb = vm_rss_kb(pid)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_kb = max(self.peak_kb, vm_rss_kb(self._pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, vm_rss_kb(self._pid))

    @property
    def peak_mb(self) -> float:
        return (self.peak_kb - self.start_kb) / 1024


class Kiln:
    """kiln dev serving the upload app."""

    def __init__(self, directory: pathlib.Path) -> None:
        app = directory / "app"
        app.mkdir(parents=True)
        (app / "app.yaml").write_text(APP_YAML)
        (app / "main.py").write_text(APP_MAIN)
        self.server = DevServer(DevOptions(app_dir=app, port=0, data_dir=directory / "data"))
        self.server.start()
        self.address = self.server.addresses["router"]
        self.host = f"localhost:{self.address.rpartition(':')[2]}"
        self.new_url()  # the app's instance is up before anything is timed
        children = {c.name: c.proc.pid for c in self.server.supervisor.children}
        self.pids = {"router": children["router"], "blobstore_svc": children["blobstore_svc"]}
        (instance,) = self.server.instances().values()
        self.pids["instance"] = instance

    def new_url(self) -> str:
        req = urllib.request.Request(f"http://{self.address}/url", headers={"Host": self.host})
        with urllib.request.urlopen(req, timeout=60) as resp:
            url = resp.read().decode()
        return f"http://{self.address}{url.split(self.host, 1)[1]}"

    def prepare(self, count: int) -> None:
        """Make the next ``count`` uploads' URLs now, outside the timed and CPU-counted part."""
        self._urls = [self.new_url() for _ in range(count)]

    def upload(self, path: pathlib.Path) -> float:
        return curl_upload(self._urls.pop(), self.host, path)

    def stop(self) -> None:
        self.server.stop()


class Baseline:
    def __init__(self, directory: pathlib.Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/upload"
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-baseline", str(port), str(directory)])
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the baseline server did not start")
            time.sleep(0.05)
        self.pids = {"aiohttp": self.proc.pid}
        self.host = f"127.0.0.1:{port}"

    def prepare(self, count: int) -> None:
        pass

    def upload(self, path: pathlib.Path) -> float:
        return curl_upload(self.url, self.host, path)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def download_rows() -> list[str]:
    """Rows for downloads through kiln (X-AppEngine-BlobKey serving) against the same baseline: added with
    serving (BLOB-SERVE); none yet."""
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5, help="uploads per round of the small size")
    parser.add_argument("--sizes", default="1,100", help="file sizes in MB, comma-separated")
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), pathlib.Path(args.serve_baseline[1]))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="blobbench") as tmp:
        work = pathlib.Path(tmp)
        files = {}
        for size in sizes:
            files[size] = work / f"file-{size}mb.bin"
            with files[size].open("wb") as out:
                for _ in range(size):
                    out.write(os.urandom(MB))
        (work / "baseline").mkdir()
        baseline = Baseline(work / "baseline")
        try:
            kiln = Kiln(work / "kiln")
        except BaseException:
            baseline.stop()
            raise
        systems: dict[str, Kiln | Baseline] = {"kiln": kiln, "aiohttp": baseline}
        rates: dict[tuple[str, int], list[float]] = {}
        ratios: dict[int, list[float]] = {s: [] for s in sizes}
        cpu: dict[tuple[str, int], dict[str, list[float]]] = {}
        rss: list[float] = []
        try:
            for round_ in range(args.rounds):
                for size in sizes:
                    repeat = args.repeat if size < 10 else 1
                    medians = {}
                    for name, system in systems.items():
                        system.prepare(repeat)
                        before = {p: _cpu_seconds(pid) for p, pid in system.pids.items()}
                        times = []
                        for _ in range(repeat):
                            if name == "kiln" and size >= 10:
                                with PeakRss(kiln.pids["router"]) as peak:
                                    times.append(system.upload(files[size]))
                                rss.append(peak.peak_mb)
                            else:
                                times.append(system.upload(files[size]))
                        for proc, pid in system.pids.items():
                            per_mb = (_cpu_seconds(pid) - before[proc]) / (size * repeat)
                            cpu.setdefault((name, size), {}).setdefault(proc, []).append(per_mb)
                        medians[name] = size / statistics.median(times)
                        rates.setdefault((name, size), []).append(medians[name])
                    ratios[size].append(medians["kiln"] / medians["aiohttp"])
                    print(f"round {round_ + 1}, {size} MB: kiln {medians['kiln']:.1f} MB/s, aiohttp "
                          f"{medians['aiohttp']:.1f} MB/s, ratio {ratios[size][-1]:.2f}", flush=True)
        finally:
            kiln.stop()
            baseline.stop()
    print()
    print("| upload | kiln MB/s | aiohttp + disk MB/s | kiln/aiohttp (median of rounds, min-max) |")
    print("|---|---|---|---|")
    for size in sizes:
        r = ratios[size]
        print(f"| {size} MB | {statistics.median(rates[('kiln', size)]):.1f} | "
              f"{statistics.median(rates[('aiohttp', size)]):.1f} | {statistics.median(r):.2f} "
              f"({min(r):.2f}-{max(r):.2f}) |")
    for row in download_rows():
        print(row)
    print()
    print("CPU ms per MB uploaded (median of rounds):")
    for (name, size), procs in cpu.items():
        print(f"  {name} {size} MB: " + ", ".join(f"{p} {statistics.median(v) * 1000:.2f}" for p, v in procs.items()))
    if rss:
        print(f"router peak RSS increase during {max(s for s in sizes)} MB uploads: max {max(rss):.1f} MB "
              f"(limit {RSS_LIMIT_MB} MB), per upload {', '.join(f'{x:.1f}' for x in rss)}")
    return 0 if not rss or max(rss) < RSS_LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
