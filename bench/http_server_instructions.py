"""The router's HTTP layer alone: exact instructions per request of the front door, against an httptools floor.

Each server answers every request with the bytes the router sends for the benchmark's hello app (same status
line, headers and body), with no NATS, rules or log behind it, so what is counted is the HTTP server:

- ``aiohttp``: the router's own front door exactly as ``router.app.serve`` wires it — aiohttp's low-level
  server, :class:`router.connections.Connection` (header deadline, body rate), :func:`router.app.front_door`
  (``Expect``, connection tracking, ``Server``, session renewal) — around a handler that returns the
  ``web.Response`` :func:`router.responses.build` makes for hello;
- ``httptools``: the floor of a replacement: a plain ``asyncio.Protocol`` on httptools (llhttp, as uvicorn),
  a task per request (the router's handler awaits NATS), the response written as one ``bytes``.

Each runs under ``valgrind --tool=callgrind`` with instrumentation off until warmed up; then counters are
zeroed, ``--requests`` sequential requests are sent on one kept-alive connection, and the dump's instructions
per request are printed. Both use uvloop, as the router does.

Usage::

    .venv/bin/python bench/http_server_instructions.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln_platform.supervisor import free_port, port_open  # noqa: E402

AIOHTTP = r"""
import asyncio, sys
import uvloop
from aiohttp import web
from kiln.pb.runtime.v1 import http_pb2
from router import app, connections, responses

async def main(port):
    resp = http_pb2.HttpResponse(status=200, body=b"Hello world!")
    resp.headers.add(name="Content-Type", value=b"text/plain")

    async def handle(request):
        return responses.build(resp, request, max_bytes=1 << 20)

    loop = asyncio.get_running_loop()

    def make_request(message, payload, protocol, writer, task):
        return web.Request(message, payload, protocol, writer, task, loop, client_max_size=1 << 20)

    runner = web.ServerRunner(web.Server(app.front_door(handle), request_factory=make_request), handle_signals=False)
    await runner.setup()
    rate = connections.BodyRate(grace_seconds=20, min_bytes_per_second=500)
    await connections.listen(runner, "127.0.0.1", port, header_timeout=20, body_rate=rate, access_log=None,
                             keepalive_timeout=75)
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1])))
"""

AIOHTTP_PLAIN = r"""
import asyncio, sys
import uvloop
from aiohttp import web

async def main(port):
    async def handle(request):
        return web.Response(body=b"Hello world!", headers=[("Content-Type", "text/plain"),
                            ("Cache-Control", "private"), ("Vary", "Accept-Encoding"), ("Server", "kiln")])

    runner = web.ServerRunner(web.Server(handle), handle_signals=False)
    await runner.setup()
    await asyncio.get_running_loop().create_server(runner.server, "127.0.0.1", port, reuse_address=True)
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1])))
"""

HTTPTOOLS = r"""
import asyncio, sys
import httptools, uvloop
from router import responses

BODY = b"Hello world!"


def head():
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: private\r\nVary: Accept-Encoding\r\n"
            b"Server: kiln\r\nDate: " + responses.http_date().encode() + b"\r\nContent-Length: 12\r\n\r\n")


class Protocol(asyncio.Protocol):
    def __init__(self):
        self.parser = httptools.HttpRequestParser(self)
        self.headers = []
        self.url = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_message_complete(self):
        headers, self.headers, self.url = self.headers, [], b""
        asyncio.get_running_loop().create_task(self.answer(headers, self.parser.should_keep_alive()))

    async def answer(self, headers, keep_alive):
        self.transport.write(head() + BODY)
        if not keep_alive:
            self.transport.close()


async def main(port):
    loop = asyncio.get_running_loop()
    await loop.create_server(Protocol, "127.0.0.1", port, reuse_address=True)
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1])))
"""


def _sequential(port: int, count: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        conn.request("GET", "/", headers={"User-Agent": "bench", "Accept": "*/*"})
        resp = conn.getresponse()
        if resp.read() != b"Hello world!" or resp.status != 200:
            raise RuntimeError(f"unexpected answer {resp.status}")
    conn.close()


def _count(name: str, code: str, requests: int, tmp: pathlib.Path) -> float:
    port = free_port()
    out = tmp / f"{name}.cg"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                             sys.executable, "-c", code, str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 300
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{name} server did not start")
            time.sleep(0.1)
        pid = str(proc.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        _sequential(port, 200)  # warm up
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        _sequential(port, requests)
        before = set(tmp.glob(f"{name}.cg.*"))
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        (dump,) = set(tmp.glob(f"{name}.cg.*")) - before
        match = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
        return int(match.group(1)) / requests if match else 0.0
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests counted")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-http-server-") as tmp:
        found = {name: _count(name, code, args.requests, pathlib.Path(tmp))
                 for name, code in (("aiohttp", AIOHTTP), ("aiohttp-plain", AIOHTTP_PLAIN),
                                         ("httptools", HTTPTOOLS))}
    for name, value in found.items():
        print(f"{name}: {value / 1e3:.1f} k instructions per request ({args.requests} sequential, one connection)")
    print(f"aiohttp front door over the httptools floor: {(found['aiohttp'] - found['httptools']) / 1e3:.1f} k")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
