"""The runtime's own work for one hello request, step by step, in one process (no sockets, no NATS server).

Each step an instance (:mod:`runtime.app`) takes for the hello request of
``bench/http_bench.py`` is timed alone, many times over, best of ``--repeat``:
CPU microseconds per step. The envelope is the one the router builds for wrk's
``GET /`` (``router.app.Router._envelope``); the app is ``bench/hello``; the
instance is set up as ``python -m runtime`` sets it up (its environment, the
request scope, the sandbox's audit hook), so the request-thread steps run on a
thread named as request threads are and pay the sandbox's hook as they do.

Then the request is timed whole, still in one process: ``Instance.on_message``
with a stand-in for nats-py's ``Msg`` (its ``respond`` takes the bytes), through
the real request threads and back to the loop's ``publish_answers``, one
request in flight at a time and 32 arriving in one turn of the loop. What is
not here (nats-py reading the message off the socket and writing the reply,
the instance's heartbeats) the prototype worker spends too. The runtime ships
no request log: the app's log lines ride in the answer, the router ships the
record (``bench/router_steps.py``).

Usage::

    .venv/bin/python bench/runtime_steps.py [--number 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import pathlib
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

# KILN_STEPS_TREE: another checkout's code measured by this script (bench/runtime_instructions.py compares trees).
ROOT = pathlib.Path(os.environ.get("KILN_STEPS_TREE") or pathlib.Path(__file__).resolve().parents[1]).resolve()
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import make_mocked_request  # noqa: E402
from multidict import CIMultiDict, CIMultiDictProxy  # noqa: E402

from kiln import runtime as kiln_runtime  # noqa: E402
from kiln.pb.runtime.v1 import http_pb2  # noqa: E402
from kiln.sdk import tickets  # noqa: E402
from kiln_platform import appyaml, requestscope  # noqa: E402
from kiln_platform.config import Secret  # noqa: E402
from kiln_platform.log import app_id as app_id_var  # noqa: E402
from kiln_platform.log import request_id as request_id_var  # noqa: E402
from router import app as router_app, headers, hosts, paths  # noqa: E402
from router.config import RouterConfig  # noqa: E402
from runtime import app as runtime_app, sandbox  # noqa: E402
from runtime.config import RuntimeConfig  # noqa: E402
from runtime.wsgi import build_environ, call_app  # noqa: E402

APP = ROOT / "bench" / "hello"


class _NoNats:
    max_payload = 1024 * 1024
    is_connected = True


class _Msg:
    """What the instance asks of nats-py's Msg: the data, the reply subject, and ``respond``."""

    __slots__ = ("data", "reply", "sink")

    def __init__(self, data: bytes, reply: str, sink: list[bytes]) -> None:
        self.data, self.reply, self.sink = data, reply, sink

    async def respond(self, data: bytes) -> None:
        self.sink.append(data)


def _envelope() -> bytes:
    """The router's envelope for wrk's ``GET /`` with ``Host`` (as bench/router_steps.py builds it)."""
    cfg = RouterConfig(nats_url="nats://unused", dev_app="hello=v1", app_dirs=f"hello/v1={APP}",
                       session_secret=Secret("s" * 32))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    router = router_app.Router(cfg, _NoNats())  # type: ignore[arg-type]  # the envelope never reaches NATS
    request = make_mocked_request("GET", "/", headers=CIMultiDictProxy(CIMultiDict({"Host": "127.0.0.1:8080"})))
    request._message = request._message._replace(raw_headers=((b"Host", b"127.0.0.1:8080"),))
    url = paths.parse_target(request.raw_path)
    host = hosts.request_host(request.headers.getall("Host", []), url.authority)
    fields = headers.received(request.raw_headers)
    target = hosts.resolve(host.name, domain=cfg.domain, versions=router.versions, dev_app=router.dev_app)
    assert target is not None
    client_ip, scheme = router._client(request)
    env, encoded = router._envelope(request, fields, url, target, router._ids.next(), host, b"", time.time(),
                                    client_ip, scheme, None)
    data = env.SerializeToString() + b"".join(encoded[1:])
    loop.close()
    asyncio.set_event_loop(None)
    return data


def _time(step: Callable[[], Any], number: int, repeat: int) -> float:
    """Best per-call CPU µs of ``step`` over ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            step()
        best = min(best, time.process_time() - start)
    return best / number * 1e6


def _on_app_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a thread named as the runtime's request threads are (the sandbox treats it as one)."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), name=f"{sandbox.APP_THREADS}_steps")
    thread.start()
    thread.join()
    return out[0]


# The other process of --nats-only: sends the envelope N times on the version's subject, 32 at a time, and waits for
# the 32 answers before the next 32 (its instructions are not the instance's: callgrind traces only this process).
_REQUESTER = """
import asyncio, sys
import nats

async def main(url, subject, count, data):
    nc = await nats.connect(url)
    for _ in range(count // 32):
        answers = await asyncio.gather(*(nc.request(subject, data, timeout=30) for _ in range(32)))
        assert all(answer.data for answer in answers)
    await nc.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.stdin.buffer.read()))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _through_nats(instance: Any, data: bytes, count: int, read_fd: int, drain: Callable[[], None]) -> None:
    """Serve ``count`` requests that come through a real nats-server, as a running instance does: nats-py reads
    them, the instance's subscriptions hand them over, the answers are published back."""
    import nats  # noqa: PLC0415 - only this mode needs it

    from kiln_platform import bus  # noqa: PLC0415

    server = shutil.which("nats-server", path=str(pathlib.Path(sys.executable).parent)) or "nats-server"
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    nats_server = subprocess.Popen([server, "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                nc = await nats.connect(url, allow_reconnect=False)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        instance._bind_loop().add_reader(read_fd, drain)  # the in-flight pipe, as the manager reads it
        publisher = asyncio.create_task(instance.publish_answers())
        if hasattr(runtime_app, "subscribe_requests"):
            await runtime_app.subscribe_requests(nc, instance)
        else:  # a tree from before it: nats-py's queue and task per subscription
            await nc.subscribe(bus.http_subject(instance.app_id, instance.version_id), queue=bus.RUNTIME_QUEUE,
                               cb=instance.on_message)
        await nc.flush()
        requester = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _REQUESTER, url, bus.http_subject(instance.app_id, instance.version_id),
            str(count), stdin=subprocess.PIPE)
        await requester.communicate(data)
        assert requester.returncode == 0, "the requester failed"
        publisher.cancel()
        await nc.close()
    finally:
        nats_server.terminate()
        nats_server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--whole", type=int, default=20000, help="requests per run of the whole-request timings")
    parser.add_argument("--serve-only", type=int, default=0, metavar="N",
                        help="only run Instance._serve N times on a request thread (a slice for callgrind)")
    parser.add_argument("--whole-only", type=int, default=0, metavar="N",
                        help="only run N whole requests, 32 arriving per loop turn (a slice for callgrind)")
    parser.add_argument("--nats-only", type=int, default=0, metavar="N",
                        help="only serve N requests through a real nats-server, subscribed as runtime.app.serve "
                             "subscribes, 32 sent at a time by another process (a slice for callgrind)")
    args = parser.parse_args()
    sys.setswitchinterval(0.0005)  # as runtime.app.serve sets it
    number, repeat = args.number, args.repeat
    data = _envelope()
    req0 = http_pb2.HttpRequest.FromString(data)
    app_config = appyaml.load(APP / "app.yaml")
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)  # the in-flight pipe, drained as the manager does
    cfg = RuntimeConfig(app_dir=APP, app_id=req0.app_id, version_id=req0.version_id, nats_url="nats://unused",
                        app_token=Secret("t" * 40), inflight_fd=write_fd, private_dirs=tempfile.gettempdir())
    instance = runtime_app.Instance(cfg, app_config)
    instance.export_environment()  # the request scope and the sandbox, as python -m runtime installs them

    def drain() -> None:
        try:
            while os.read(read_fd, 1 << 20):
                pass
        except BlockingIOError:
            pass

    reply = "_INBOX.AbCdEfGhIjKlMnOpQrStUv.AbCdEfGh"
    sink: list[bytes] = []
    msg = _Msg(data, reply, sink)
    rows: list[tuple[str, float, str]] = []

    def row(label: str, step: Callable[[], Any], kind: str) -> None:
        rows.append((label, _time(step, number, repeat), kind))

    # --- on the event loop's thread, as on_message / _dispatch / publish_answers do it
    def arrive() -> None:
        state = runtime_app._Request(msg, time.monotonic())  # type: ignore[arg-type]
        instance._arrived(state)
        key = state.key if hasattr(state, "key") else id(state)  # id() in older trees
        instance._waiting.pop(key, None)
        instance._queued.pop(key, None)

    row("request record and bookkeeping (_Request, _arrived, pops)", arrive, "guarantee: replace/stop, pending")
    row("envelope parsed (HttpRequest.FromString)", lambda: http_pb2.HttpRequest.FromString(data), "floor")
    row("app and version checked", lambda: req0.app_id != instance.app_id or req0.version_id != instance.version_id,
        "guarantee")
    counter = [0]

    def inflight_pair() -> None:
        instance.inflight.started_all([reply])
        instance.inflight.finished_all([reply])
        counter[0] += 1
        if counter[0] % 1000 == 0:
            drain()

    row("in-flight record: +line and -line, one write each (1/turn)", inflight_pair, "guarantee: dead-instance 500s")
    row("memory check after answers (pread statm)", instance._check_soft_memory, "guarantee: soft memory limit")

    # --- on a request thread, as _work / _serve / _timed / _call do it
    app = instance._loader.resolve(urllib.parse.unquote(req0.path))
    assert app is not None
    environ0 = build_environ(req0, instance.info)
    resp0 = call_app(app, environ0)  # type: ignore[arg-type]
    state0 = runtime_app._Request(msg, time.monotonic(), req0)  # type: ignore[arg-type]
    key0 = state0.key if hasattr(state0, "key") else id(state0)  # its key in the request timer (id() in older trees)

    if args.serve_only:
        def serve_n() -> None:
            for _ in range(args.serve_only):
                instance._serve(runtime_app._Request(msg, time.monotonic(), req0))  # type: ignore[arg-type]
        _on_app_thread(serve_n)
        return 0

    def app_side() -> list[tuple[str, float, str]]:
        out: list[tuple[str, float, str]] = []

        def r(label: str, step: Callable[[], Any], kind: str) -> None:
            out.append((label, _time(step, number, repeat), kind))

        r("context variables (request id, app id)",
          lambda: (request_id_var.set(req0.request_id), app_id_var.set(instance.app_id)), "log correlation")
        r("deadline length (task flag from the environ's header pass)", lambda: instance._deadline_seconds(False),
          "guarantee: task deadline")

        def timer_pair() -> None:
            with instance._running_lock:
                state0.running = True
                at = instance._timer.start(key0, 60.0, state0)
                state0.deadline = kiln_runtime._Deadline(at, at + 1.0)
            with instance._running_lock:
                state0.running = False
                instance._timer.stop(key0, 60.0)
                runtime_app._SET_ASYNC_EXC(runtime_app.ctypes.c_ulong(threading.get_ident()), None)

        r("request timer filed and taken back, async exc cleared", timer_pair, "guarantee: deadline")

        def timer_only() -> None:
            at = instance._timer.start(key0, 60.0, state0)
            state0.deadline = kiln_runtime._Deadline(at, at + 1.0)
            instance._timer.stop(key0, 60.0)

        r("  of which: RequestTimer.start/stop and _Deadline", timer_only, "")
        ident = threading.get_ident()
        r("  of which: PyThreadState_SetAsyncExc(ident, NULL) via ctypes",
          lambda: runtime_app._SET_ASYNC_EXC(runtime_app.ctypes.c_ulong(ident), None), "")
        r("handler lookup (per-path cache of unquote, Matcher, app)",
          lambda: instance._loader.for_target(req0.path), "")
        r("WSGI environ (build_environ)", lambda: build_environ(req0, instance.info), "guarantee: App Engine CGI")
        environ = build_environ(req0, instance.info)

        def ticket() -> None:
            with tickets.opened(instance.app_id, environ, expires_at=time.monotonic() + 61):
                pass

        r("API ticket opened and closed (tickets.opened)", ticket, "guarantee: API cancel at deadline")

        def scope() -> None:
            with requestscope.serving(environ, [], state0.deadline):
                pass

        r("request scope entered and left (requestscope.serving)", scope, "guarantee: sandbox, env, threads, logs")
        r("calling the app, response built (call_app)", lambda: call_app(app, environ),  # type: ignore[arg-type]
          "floor: the app")
        r("CPU clock read twice (cpu_micros)", lambda: (time.thread_time(), time.thread_time()), "guarantee: log")
        r("answer encoded (SerializeToString)", resp0.SerializeToString, "floor")

        def serve() -> None:
            state = runtime_app._Request(msg, time.monotonic(), req0)  # type: ignore[arg-type]
            instance._serve(state)

        r("  = Instance._serve whole (the request thread's own work)", serve, "")
        return out

    # --- the whole request through the real instance, request threads and loop; respond() only takes the bytes
    async def whole(batch: int, count: int) -> float:
        instance._bind_loop()
        publisher = asyncio.create_task(instance.publish_answers())
        best = float("inf")
        msgs = [_Msg(data, f"{reply}{i}", sink) for i in range(batch)]
        for _ in range(repeat):
            start = time.process_time()
            for _ in range(count // batch):
                sink.clear()
                for one in msgs:
                    arrived = instance.on_message(one)  # type: ignore[arg-type, func-returns-value]
                    if inspect.isawaitable(arrived):  # a tree from before on_message was a plain function
                        await arrived
                while len(sink) < batch:
                    await asyncio.sleep(0)
                    if len(sink) < batch:
                        await instance._idle.wait()
                drain()
            best = min(best, time.process_time() - start)
        publisher.cancel()
        assert http_pb2.HttpResponse.FromString(sink[0]).body == b"Hello world!"
        return best / count * 1e6

    async def both() -> list[float]:
        took = [await whole(batch, args.whole) for batch in (1, 32)]
        # The same path with the request thread's work replaced by a canned answer: what the hops and the loop's
        # glue cost alone (the thread still wakes, runs _work and hands the answer back).
        canned = resp0.SerializeToString()
        instance._serve = lambda state: http_pb2.HttpResponse.FromString(canned)  # type: ignore[method-assign]
        return took + [await whole(batch, args.whole) for batch in (1, 32)]

    if args.nats_only:
        _on_app_thread(lambda: instance._serve(state0))
        asyncio.run(_through_nats(instance, data, args.nats_only, read_fd, drain))
        instance._threads.stop()
        return 0
    if args.whole_only:
        repeat = 1
        _on_app_thread(lambda: instance._serve(state0))  # the loading request, as the steps above serve it first
        asyncio.run(whole(32, args.whole_only))
        instance._threads.stop()  # request threads are not daemons: the process ends once they have
        return 0
    rows.extend(_on_app_thread(app_side))
    print(f"runtime steps for the hello request, CPU µs per call (best of {repeat} x {number}):")
    total = 0.0
    for label, took, kind in rows:
        if not label.startswith("  "):
            total += took
        print(f"  {label:62}{took:8.2f}   {kind}")
    print(f"  {'sum of the steps (not the = line)':62}{total:8.2f}")

    print("whole request in one process (nats-py's socket work not included), CPU µs per request, every thread:")
    labels = [f"on_message to respond, {batch} arriving per loop turn" for batch in (1, 32)]
    labels += [f"  the same, _serve canned (hops and loop glue), {batch} per turn" for batch in (1, 32)]
    for label, took in zip(labels, asyncio.run(both()), strict=True):
        print(f"  {label:62}{took:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
