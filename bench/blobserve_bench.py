"""Blob download benchmark: a response carrying X-AppEngine-BlobKey served by kiln against a plain file server.

In one run on one machine, with the same client (``curl``, writing to /dev/null), it downloads a 1 MB and a
100 MB blob through kiln (``kiln dev`` on the embedded engine: router <- blobstore_svc's ReadBlob stream, the app
answering with the header) and the same bytes as files from a plain aiohttp file server (``web.FileResponse``,
sendfile) on the same machine. Rounds interleave kiln and the file server; per size it prints the median MB/s of
each, the ratio per round and the median of the ratios. It also prints:

- CPU per MB downloaded of each process on the path (kiln's router, blobstore_svc and the app's instance; the
  file server), from /proc (utime+stime before/after), which a shared machine disturbs far less than MB/s;
- a floor: the same bytes as a bare gRPC stream of 1 MB ``ReadBlobResponse`` messages from memory (no disk, no
  auth, no HTTP) read by a Python ``grpc.aio`` client that takes each message's ``data`` (what the router does
  before writing to the client): MB/s and CPU per MB of the sender and of the receiver (its process time);
- the router's peak RSS increase over its RSS before the download, during each 100 MB download (sampled from
  /proc/<pid>/status every 5 ms), and the largest over the run.

Usage::

    .venv/bin/python bench/blobserve_bench.py [--rounds 3] [--downloads 5]

Needs ``curl``.
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
from collections.abc import Iterator
from typing import Self

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc

from deploy.dev import DevOptions, DevServer
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln_platform import auth
from kiln_platform.supervisor import free_port, port_open

MB = 1024 * 1024
SIZES = {"1MB": 1 * MB, "100MB": 100 * MB}

APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"
APP_MAIN = '''
def app(environ, start_response):
    start_response("200 OK", [("X-AppEngine-BlobKey", environ["QUERY_STRING"])])
    return [b""]
'''

FILE_SERVER = '''
import sys
from aiohttp import web

root = sys.argv[1]

async def serve(request):
    return web.FileResponse(f"{root}/{request.match_info['name']}")

app = web.Application()
app.router.add_get("/{name}", serve)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
'''

# The floor: a gRPC server streaming 1 MB ReadBlobResponse messages made once, and a client reading them.
FLOOR_SERVER = '''
import asyncio, sys
import grpc
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb

CHUNK = pb.ReadBlobResponse(data=b"x" * (1 << 20)).SerializeToString()

async def read(request, context):
    yield pb.ReadBlobResponse(info=pb.BlobInfo(size=int(request)))
    for _ in range(int(request) >> 20):
        yield CHUNK

async def main():
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 8 << 20)])
    handler = grpc.unary_stream_rpc_method_handler(read, request_deserializer=bytes.decode,
                                                   response_serializer=lambda m: m if isinstance(m, bytes)
                                                   else m.SerializeToString())
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Floor", {"Read": handler})])
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
'''

FLOOR_CLIENT = '''
import asyncio, sys, time
import grpc
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.api import _rpc

async def main():
    async with grpc.aio.insecure_channel(sys.argv[1], options=list(_rpc.CHANNEL_OPTIONS)) as channel:
        read = channel.unary_stream("/floor.Floor/Read", request_serializer=str.encode,
                                    response_deserializer=pb.ReadBlobResponse.FromString)
        await channel.channel_ready()
        cpu, wall, got = time.process_time(), time.perf_counter(), 0
        async for message in read(sys.argv[2]):
            got += len(message.data)
        print(got, time.process_time() - cpu, time.perf_counter() - wall)

asyncio.run(main())
'''


def cpu_seconds(pid: int) -> float:
    """User + system CPU so far of a process and every process below it."""
    stats = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree = {pid}
    for _ in range(len(stats)):
        grown = tree | {p for p, (parent, _) in stats.items() if parent in tree}
        if grown == tree:
            break
        tree = grown
    return sum(stats[p][1] for p in tree if p in stats)


def rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """The largest VmRSS of a process while the block runs (sampled every 5 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self) -> Self:
        self.before = rss_kb(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def curl(url: str, host: str | None, expected: int) -> float:
    """Download ``url`` to /dev/null; seconds taken (curl's own timer)."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{http_code} %{time_total}", url]
    if host:
        args[1:1] = ["-H", f"Host: {host}"]
    size, code, seconds = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    if int(size) != expected or code != "200":
        raise RuntimeError(f"{url}: HTTP {code}, {size} bytes (expected {expected})")
    return float(seconds)


def put_blob(server: DevServer, data: bytes) -> str:
    channel = grpc.insecure_channel(server.addresses["blobstore_svc"],
                                    options=[("grpc.max_send_message_length", 8 * MB)])
    token = auth.mint_app_token(server.secrets["service"], server.app_id)

    def messages() -> Iterator[pb.CreateBlobRequest]:
        yield pb.CreateBlobRequest(content_type="application/octet-stream", data=data[:MB])
        for start in range(MB, len(data), MB):
            yield pb.CreateBlobRequest(data=data[start:start + MB])
    try:
        stub = blobstore_pb2_grpc.BlobstoreServiceStub(channel)
        return str(stub.CreateBlob(messages(), metadata=(("authorization", f"Bearer {token}"),),
                                   timeout=300).info.blob_key)
    finally:
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--downloads", type=int, default=5, help="downloads of each size per round and server (ten times as many of 1 MB)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="blobserve-bench-"))
    app_dir = tmp / "app"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text(APP_YAML)
    (app_dir / "main.py").write_text(APP_MAIN)
    files = tmp / "files"
    files.mkdir()
    server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=tmp / "data"))
    port = free_port()
    (tmp / "fileserver.py").write_text(FILE_SERVER)
    plain = subprocess.Popen([sys.executable, str(tmp / "fileserver.py"), str(files), str(port)])
    floor_port = free_port()
    (tmp / "floor_server.py").write_text(FLOOR_SERVER)
    (tmp / "floor_client.py").write_text(FLOOR_CLIENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    floor = subprocess.Popen([sys.executable, str(tmp / "floor_server.py"), str(floor_port)], env=env)
    server.start()
    try:
        keys = {}
        for name, size in SIZES.items():
            data = os.urandom(size)
            (files / name).write_bytes(data)
            keys[name] = put_blob(server, data)
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise RuntimeError("the file server did not start")
            time.sleep(0.05)
        router = server.addresses["router"]
        host = f"localhost:{router.rpartition(':')[2]}"
        children = {c.name: c.proc.pid for c in server.supervisor.children}
        curl(f"http://{router}/?{keys['1MB']}", host, MB)  # the instance starts
        (instance,) = server.instances().values()
        kiln_pids = {"router": children["router"], "blobstore_svc": children["blobstore_svc"], "instance": instance}
        rates: dict[str, dict[str, list[float]]] = {n: {"kiln": [], "plain": []} for n in SIZES}
        ratios: dict[str, list[float]] = {n: [] for n in SIZES}
        cpu: dict[str, dict[str, list[float]]] = {n: {} for n in SIZES}
        rss_extra: list[float] = []
        floor_rates: dict[str, list[float]] = {n: [] for n in SIZES}
        for round_no in range(1, args.rounds + 1):
            for name, size in SIZES.items():
                medians = {}
                count = args.downloads * (10 if size < 10 * MB else 1)  # small ones: enough CPU ticks to count
                floor_times, floor_client_cpu = [], 0.0
                floor_before = cpu_seconds(floor.pid)
                for _ in range(count):
                    done = subprocess.run([sys.executable, str(tmp / "floor_client.py"), f"127.0.0.1:{floor_port}",
                                           str(size)], env=env, capture_output=True, text=True, check=True)
                    got, client_cpu, seconds = done.stdout.split()
                    if int(got) != size:
                        raise RuntimeError(f"floor: {got} bytes, expected {size}")
                    floor_times.append(float(seconds))
                    floor_client_cpu += float(client_cpu)
                total_mb = size * count / MB
                cpu[name].setdefault("floor sender", []).append((cpu_seconds(floor.pid) - floor_before) / total_mb * 1000)
                cpu[name].setdefault("floor receiver", []).append(floor_client_cpu / total_mb * 1000)
                floor_rates[name].append(size / MB / statistics.median(floor_times))
                for who in ("kiln", "plain"):
                    pids = kiln_pids if who == "kiln" else {"file server": plain.pid}
                    before = {p: cpu_seconds(pid) for p, pid in pids.items()}
                    times = []
                    for _ in range(count):
                        if who == "kiln":
                            with PeakRss(kiln_pids["router"]) as rss:
                                times.append(curl(f"http://{router}/?{keys[name]}", host, size))
                            if size >= 100 * MB:
                                rss_extra.append((rss.peak - rss.before) / 1024)
                        else:
                            times.append(curl(f"http://127.0.0.1:{port}/{name}", None, size))
                    for p, pid in pids.items():
                        cpu[name].setdefault(p, []).append((cpu_seconds(pid) - before[p]) / total_mb * 1000)
                    medians[who] = size / MB / statistics.median(times)
                    rates[name][who].append(medians[who])
                ratios[name].append(medians["kiln"] / medians["plain"])
                print(f"round {round_no} {name}: kiln {medians['kiln']:.1f} MB/s, file server "
                      f"{medians['plain']:.1f} MB/s, ratio {ratios[name][-1]:.2f}; bare gRPC stream "
                      f"{floor_rates[name][-1]:.1f} MB/s")
        print()
        for name in SIZES:
            print(f"{name}: kiln {statistics.median(rates[name]['kiln']):.1f} MB/s, file server "
                  f"{statistics.median(rates[name]['plain']):.1f} MB/s; ratio median {statistics.median(ratios[name]):.2f} "
                  f"(min {min(ratios[name]):.2f}, max {max(ratios[name]):.2f})")
            print(f"  bare gRPC stream (floor): {statistics.median(floor_rates[name]):.1f} MB/s")
            print("  CPU ms per MB: " + ", ".join(f"{p} {statistics.median(v):.2f}" for p, v in cpu[name].items()))
        print(f"router peak RSS increase during a 100 MB download: median {statistics.median(rss_extra):.1f} MB, "
              f"max {max(rss_extra):.1f} MB")
    finally:
        server.stop()
        for child in (plain, floor):
            child.terminate()
            child.wait(10)


if __name__ == "__main__":
    main()
