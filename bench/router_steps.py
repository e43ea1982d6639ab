"""The router's own work for one hello request, step by step, in one process (no sockets, no NATS).

Each step of :meth:`router.app.Router.handle` is timed alone on the request
``bench/http_bench.py`` sends (wrk's ``GET /`` with ``Host``), the app's
answer as the runtime encodes it, many times over, best of ``--repeat``: CPU
microseconds per step with nothing else on the path. ``handle`` is then timed
whole, with NATS replaced by the canned answer (the requester) and the request
log taken in place (the shipper), so what it adds to the steps is the glue
between them. What is not here (aiohttp reading and writing the connection,
nats-py's request and reply, the log's publish and PING) is what a router on
sockets spends beyond this, measured with ``bench/router_profile.py`` and
``bench/http_bench.py`` (the prototype router is aiohttp plus a nats-py request
and nothing else).

Usage::

    .venv/bin/python bench/router_steps.py [--number 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import make_mocked_request  # noqa: E402
from multidict import CIMultiDict, CIMultiDictProxy  # noqa: E402

from kiln.pb.runtime.v1 import http_pb2  # noqa: E402
from kiln_platform.config import Secret  # noqa: E402
from router import app as router_app, headers, hosts, paths, responses  # noqa: E402
from router.config import RouterConfig  # noqa: E402

APP = ROOT / "bench" / "hello"


class _Reply:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.headers = None


class _CannedRequester:
    """Answers every request with the runtime's encoded answer, at once."""

    def __init__(self, data: bytes) -> None:
        self.reply = _Reply(data)

    async def request(self, subject: str, data: bytes, *, timeout: float) -> _Reply:
        return self.reply


class _TakingShipper:
    """Takes the serialized request log, as LogShipper.ship does before it queues it."""

    def __init__(self) -> None:
        self.taken = 0

    def ship(self, request_id: str, record: bytes) -> None:
        self.taken += 1


class _NoNats:
    """What the steps ask of the NATS connection: its message size limit."""

    max_payload = 1024 * 1024
    is_connected = True


def _answer() -> bytes:
    resp = http_pb2.HttpResponse(status=200, body=b"Hello world!", instance_id="bench-instance", cpu_micros=100)
    resp.headers.add(name="Content-Type", value=b"text/plain")
    resp.headers.add(name="Content-Length", value=b"12")
    return resp.SerializeToString()


def _request() -> web.Request:
    raw = ((b"Host", b"127.0.0.1:8080"),)  # what wrk sends
    request = make_mocked_request("GET", "/", headers=CIMultiDictProxy(CIMultiDict({"Host": "127.0.0.1:8080"})))
    request._message = request._message._replace(raw_headers=raw)
    return request


def _time(step: Callable[[], Any], number: int, repeat: int) -> float:
    """Best per-call µs of ``step`` over ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            step()
        best = min(best, time.process_time() - start)
    return best / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cfg = RouterConfig(nats_url="nats://unused", dev_app="hello=v1", app_dirs=f"hello/v1={APP}",
                       session_secret=Secret("s" * 32))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    router = router_app.Router(cfg, _NoNats())  # type: ignore[arg-type]  # the steps never reach NATS
    answer = _answer()
    router.replies = _CannedRequester(answer)  # type: ignore[assignment]
    shipper = router.logs = _TakingShipper()  # type: ignore[assignment]
    request = _request()
    url = paths.parse_target(request.raw_path)
    host = hosts.request_host(request.headers.getall("Host", []), url.authority)
    fields = headers.received(request.raw_headers)
    target = hosts.resolve(host.name, domain=cfg.domain, versions=router.versions, dev_app=router.dev_app)
    assert target is not None
    version = loop.run_until_complete(router.local.get(target.app_id, target.version_id))
    assert version is not None
    request_id = router._ids.next()
    client_ip, scheme = router._client(request)
    env, encoded = router._envelope(request, fields, url, target, request_id, host, b"", time.time(), client_ip,
                                    scheme, None)
    encoded[0] = env.SerializeToString()
    resp = http_pb2.HttpResponse.FromString(answer)
    out = responses.build(resp, request, max_bytes=cfg.max_response_bytes)
    started = time.time()

    def run(coro_fn: Callable[[], Any]) -> Callable[[], Any]:
        def step() -> Any:
            coro = coro_fn()
            try:
                coro.send(None)
            except StopIteration as stop:
                return stop.value
            raise RuntimeError("the step waited")
        return step

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("request target (paths.parse_target, cached)", lambda: paths.parse_target(request.raw_path)),
        ("Host (hosts.request_host)", lambda: hosts.request_host(request.headers.getall("Host", []), url.authority)),
        ("header lines as text (headers.received)", lambda: headers.received(request.raw_headers)),
        ("one-value fields (headers.repeated_single)", lambda: headers.repeated_single(fields)),
        ("request id", router._ids.next),
        ("app and version from Host (hosts.resolve)",
         lambda: hosts.resolve(host.name, domain=cfg.domain, versions=router.versions, dev_app=router.dev_app)),
        ("client address and scheme", lambda: router._client(request)),
        ("session cookie (none sent)", lambda: router.sessions.user(request, app=target.app_id, secure=False)),
        ("platform signature (none sent)", lambda: router._platform_caller(request, host)),
        ("version lookup (await)", run(lambda: router.local.get(target.app_id, target.version_id))),
        ("handler match, secure, login (await)",
         run(lambda: router._apply_handler(request, url, host, version, scheme, None, None))),
        ("envelope and header rules (_envelope)",
         lambda: router._envelope(request, fields, url, target, request_id, host, b"", started, client_ip, scheme,
                                  None)),
        ("envelope serialized and joined", lambda: env.SerializeToString() + b"".join(encoded[1:])),
        ("reply parsed (HttpResponse.FromString)", lambda: http_pb2.HttpResponse.FromString(answer)),
        ("response headers (responses.build)", lambda: responses.build(resp, request, max_bytes=cfg.max_response_bytes)),
        ("request log record built and serialized (_publish_log)",
         lambda: router._publish_log(env, resp, started, out.content_length or 0, url, fields)),
    ]
    print(f"router steps for the hello request, CPU µs per call (best of {args.repeat} x {args.number}):")
    total = 0.0
    for label, step in steps:
        took = _time(step, args.number, args.repeat)
        total += took
        print(f"  {label:58}{took:8.2f}")
    print(f"  {'sum of the steps':58}{total:8.2f}")

    async def handle_all(requests: list[web.Request]) -> None:
        for one in requests:
            await router.handle(one)

    taken = shipper.taken
    loop.run_until_complete(handle_all([_request()]))
    assert shipper.taken == taken + 1, "the request was not answered by the app"
    count, best = args.number // 4, float("inf")
    for _ in range(args.repeat):
        requests = [_request() for _ in range(count)]  # made beforehand: only handle is timed
        start = time.process_time()
        loop.run_until_complete(handle_all(requests))
        best = min(best, time.process_time() - start)
    print(f"  {'Router.handle whole (NATS and log stubbed; mocked request)':58}{best / count * 1e6:8.2f}")
    loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
