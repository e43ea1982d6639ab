"""Runtime benchmark: cold start, idle memory and the runtime's own cost per request.

In one run on one machine it prints:

- cold start: the time from starting a new instance process of a deployed
  version (router and NATS already running) until its first response reaches
  the client, for the hello-world app (aim: under 1 s) and a small Flask app
  (aim: under 2 s; needs ``pip install -e .[bench]``);
- the instance's resident memory at idle after that first request;
- the runtime's CPU per request under load (``wrk``, 32 connections): the
  instance process's CPU time (every thread: the event loop, the request
  threads, gRPC's) divided by the requests served, per round, with its
  event-loop thread's share; the hello-world app's own code is a few us of it;
- with ``--prototype DIR`` (a checkout of the team's stripped
  router -> NATS -> worker path), in the same run, interleaved round by round,
  the prototype worker's CPU per request under the same load: the floor of a
  nats-py subscriber calling the WSGI app with none of kiln's guarantees; the
  ratio is taken per round. The same prototype calling the app in a pool of 10
  threads is measured too: what the two thread hops alone cost (kiln runs app
  code on request threads only: the sandbox knows them by thread).

Usage::

    .venv/bin/python bench/runtime_bench.py [--rounds 5] [--cpu-rounds 3] [--seconds 8] [--prototype DIR]
        [--skip-cold-starts]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import wrk  # noqa: E402
from deploy.dev import DevOptions, DevServer  # noqa: E402
from kiln_platform.supervisor import free_port  # noqa: E402

APP = ROOT / "bench" / "hello"
FLASK_APP = ROOT / "bench" / "flaskapp"


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _thread_cpu_seconds(pid: int, tid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runtime_process(wrapper_pid: int) -> int:
    """The ``python -m runtime`` process at or below an instance's recorded pid (its wrapper, under isolation)."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo = [wrapper_pid]
    while todo:
        pid = todo.pop()
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:3] == [b"-m", b"runtime"]:
            return pid
        todo.extend(children.get(pid, []))
    raise RuntimeError(f"no runtime process below pid {wrapper_pid}")


def _voluntary_switches(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` so far (each is a thread going to sleep: a wait for
    work, for the interpreter lock, for I/O)."""
    total = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        total += int(status.split("\nvoluntary_ctxt_switches:", 1)[1].split()[0])
    return total


def loaded_cpu(url: str, pid: int, seconds: int, main_thread: bool = True,
               connections: int = 32) -> tuple[float, float, float, float]:
    """Load ``url``; (CPU us per request of process ``pid``, of its main thread, req/s, voluntary context switches
    per request)."""
    wrk(url, connections, 1)  # warm
    before, before_main = _cpu_seconds(pid), _thread_cpu_seconds(pid, pid) if main_thread else 0.0
    switches = _voluntary_switches(pid)
    result = wrk(url, connections, seconds)
    cpu, cpu_main = _cpu_seconds(pid) - before, (_thread_cpu_seconds(pid, pid) - before_main) if main_thread else 0.0
    requests = result["rps"] * seconds
    return (cpu / requests * 1e6, cpu_main / requests * 1e6, result["rps"],
            (_voluntary_switches(pid) - switches) / requests)


class Prototype:
    """The stripped router -> NATS -> worker path of ``DIR`` (nats-server, its aiohttp router, one uvloop worker)."""

    def __init__(self, directory: pathlib.Path, threads: int = 0) -> None:
        self.directory = directory
        self.threads = threads  # 0: the app is called on the worker's event loop; N: in a pool of N threads
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.worker_pid = 0

    def start(self) -> None:
        nats_port = free_port()
        nats = f"nats://127.0.0.1:{nats_port}"
        self._spawn([str(pathlib.Path(sys.executable).with_name("nats-server")), "-a", "127.0.0.1", "-p",
                     str(nats_port)])
        self._wait(nats_port)
        worker = self._spawn([sys.executable, "nats_path_proto/worker.py", "--nats", nats, "--uvloop",
                              "--threads", str(self.threads)])
        self.worker_pid = worker.pid
        self._spawn([sys.executable, "nats_path_proto/router.py", "--mode", "nats", "--nats", nats,
                     "--port", str(self.port)])
        self._wait(self.port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the worker subscribes after nats-server is up: wait for an answer
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError("the prototype did not answer")

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _wait(port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on port {port}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_rounds(args: argparse.Namespace, tmp: pathlib.Path) -> None:
    """The runtime's CPU per request at 32 connections, beside the prototype worker's when asked (interleaved)."""
    server = DevServer(DevOptions(app_dir=APP, port=0, data_dir=tmp / "cpu-data"))
    server.start()
    proto = Prototype(pathlib.Path(args.prototype)) if args.prototype else None
    # The same prototype calling the app in a thread pool (what a threadsafe app needs): the cost of the hops alone.
    threaded = Prototype(pathlib.Path(args.prototype), threads=10) if args.prototype else None
    kiln_rows, proto_rows, threaded_rows, ratios = [], [], [], []
    try:
        if proto is not None and threaded is not None:
            proto.start()
            threaded.start()
        (instance_pid,) = server.instances().values()
        runtime_pid = _runtime_process(instance_pid)
        configs = ["kiln", "proto", "threaded"]
        for n in range(args.cpu_rounds):
            order = configs[n % 3:] + configs[:n % 3]  # each configuration first in turn
            row: dict[str, tuple[float, float, float, float]] = {}
            for which in order:
                if which == "kiln":
                    row["kiln"] = loaded_cpu(server.url, runtime_pid, args.seconds)
                elif which == "proto" and proto is not None:
                    row["proto"] = loaded_cpu(proto.url, proto.worker_pid, args.seconds)
                elif which == "threaded" and threaded is not None:
                    row["threaded"] = loaded_cpu(threaded.url, threaded.worker_pid, args.seconds)
            kiln_rows.append(row["kiln"])
            line = (f"round {n + 1}: runtime {row['kiln'][0]:.0f} us/request (event loop thread {row['kiln'][1]:.0f}; "
                    f"{row['kiln'][3]:.2f} voluntary context switches/request) at {row['kiln'][2]:.0f} req/s")
            if "proto" in row:
                proto_rows.append(row["proto"])
                ratios.append(row["kiln"][0] / row["proto"][0])
                threaded_rows.append(row["threaded"])
                line += (f"; prototype worker {row['proto'][0]:.0f} us/request ({row['proto'][3]:.2f} switches) at "
                         f"{row['proto'][2]:.0f} req/s (ratio {ratios[-1]:.2f}); prototype worker with a thread pool "
                         f"{row['threaded'][0]:.0f} us/request ({row['threaded'][3]:.2f} switches) at "
                         f"{row['threaded'][2]:.0f} req/s")
            print(line, flush=True)
    finally:
        for started in (proto, threaded):
            if started is not None:
                started.stop()
        server.stop()
    print(f"runtime CPU per request at 32 connections: median {statistics.median(r[0] for r in kiln_rows):.0f} us "
          f"(min {min(r[0] for r in kiln_rows):.0f}, max {max(r[0] for r in kiln_rows):.0f}); event loop thread "
          f"{statistics.median(r[1] for r in kiln_rows):.0f} us; {statistics.median(r[3] for r in kiln_rows):.2f} "
          f"voluntary context switches/request; {statistics.median(r[2] for r in kiln_rows):.0f} "
          f"req/s (the hello-world app's own code is a few us of it)")
    if proto_rows:
        print(f"prototype worker CPU per request, same load, same run: median "
              f"{statistics.median(r[0] for r in proto_rows):.0f} us (min {min(r[0] for r in proto_rows):.0f}, "
              f"max {max(r[0] for r in proto_rows):.0f}); runtime / prototype per round: median "
              f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
        print(f"prototype worker calling the app in a pool of 10 threads (one hop there, one back), same run: median "
              f"{statistics.median(r[0] for r in threaded_rows):.0f} us (min {min(r[0] for r in threaded_rows):.0f}, "
              f"max {max(r[0] for r in threaded_rows):.0f}) at "
              f"{statistics.median(r[2] for r in threaded_rows):.0f} req/s")


def cold_start(server: DevServer) -> tuple[float, float]:
    """Replace the instance; return (seconds to the first 200, idle RSS MiB of the new instance)."""
    (old_pid,) = server.instances().values()
    started = time.monotonic()
    os.kill(old_pid, signal.SIGTERM)  # the instance manager starts a fresh instance
    while True:
        try:
            with urllib.request.urlopen(server.url, timeout=5) as resp:
                if resp.status == 200 and old_pid not in server.instances().values():
                    break
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.005)
    elapsed = time.monotonic() - started
    time.sleep(1)
    (new_pid,) = server.instances().values()
    return elapsed, _rss_mib(new_pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="cold starts to measure")
    parser.add_argument("--cpu-rounds", type=int, default=3, help="rounds of the load run (CPU per request)")
    parser.add_argument("--seconds", type=int, default=8, help="duration of each load run")
    parser.add_argument("--prototype", default="", help="directory of the stripped router -> NATS -> worker "
                                                        "prototype, measured beside the runtime in each round")
    parser.add_argument("--skip-cold-starts", action="store_true", help="only the CPU per request")
    args = parser.parse_args()
    print(f"runtime benchmark ({os.cpu_count()} CPUs; hello world); load average at start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-runtime-bench-"))
    cpu_rounds(args, tmp)
    if args.skip_cold_starts:
        return 0
    flask_starts = []
    flask = DevServer(DevOptions(app_dir=FLASK_APP, port=0, data_dir=tmp / "flask-data"))
    flask.start()
    try:
        for _ in range(args.rounds):
            flask_starts.append(cold_start(flask)[0])
    finally:
        flask.stop()
    server = DevServer(DevOptions(app_dir=APP, port=0, data_dir=tmp / "data"))
    server.start()
    try:
        starts, memory = [], []
        for _ in range(args.rounds):
            seconds, rss = cold_start(server)
            starts.append(seconds)
            memory.append(rss)
    finally:
        server.stop()
    print(f"cold start to first response ({args.rounds} starts): median {statistics.median(starts) * 1000:.0f} ms "
          f"(min {min(starts) * 1000:.0f}, max {max(starts) * 1000:.0f})  (aim < 1000 ms)")
    print(f"Flask app cold start to first response: median {statistics.median(flask_starts) * 1000:.0f} ms "
          f"(min {min(flask_starts) * 1000:.0f}, max {max(flask_starts) * 1000:.0f})  (aim < 2000 ms)")
    print(f"instance memory at idle: {statistics.median(memory):.1f} MiB RSS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
