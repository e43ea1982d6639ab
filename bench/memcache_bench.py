"""Memcache benchmark: kiln's memcache (kiln.api.memcache → memcache_svc over gRPC) beside its floors.

In one run, round by round (the configurations interleaved within each round), one call at a time, 100-byte values:

- **kiln**: ``kiln.api.memcache`` as an app calls it (its token, the shard choice, protobuf) against
  ``python -m memcache_svc``;
- **bare grpcio**: the floor any Python gRPC service reaches here — a minimal server of the kind kiln's services
  are (``grpc.aio`` on uvloop, the same server options) with one method taking and returning bytes of the sizes
  kiln's request and response have, called as kiln's client calls (a blocking call on a channel with
  ``kiln.api._rpc``'s options, a deadline and the app's token as metadata; nothing checks it);
- **memcached**: pymemcache against Debian's memcached (``noreply=False`` for sets).

Within a round the configurations take turns in slices (``--slices``), so a burst of load on a shared machine
falls on all of them alike. For each: p50/p99 and CPU µs per call of the client (this process, all its threads) and of the server process
(utime+stime from /proc). It prints the medians over rounds, each round's ratios, and the median of the ratios:
get p50 kiln ÷ bare grpcio (aim ≤ 1.2×), get_multi(100) p50 kiln ÷ memcached get_many(100) (aim ≤ 2×).

Usage::

    apt-get install memcached; .venv/bin/python bench/memcache_bench.py [--rounds 5] [--ops 1000]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from pymemcache.client.base import Client as TextClient  # noqa: E402

from kiln.api import _rpc, memcache  # noqa: E402
from kiln.pb.memcache.v1 import memcache_pb2 as pb  # noqa: E402
from bench import grpcfloor  # noqa: E402
from kiln_platform import auth  # noqa: E402
from kiln_platform.supervisor import Supervisor, free_port, python_module  # noqa: E402

SECRET = "bench-secret"
VALUE = b"v" * 100
KEYS = [f"key{i}" for i in range(100)]
BARE_METHOD = "/kiln.bench.Bare/Get"
TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ the bare grpcio server (a child process)

async def _bare_server(ready: pathlib.Path, response_bytes: dict[int, bytes]) -> None:
    """Answer each request with the bytes of the size kiln answers a request of that size with."""
    async def get(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return response_bytes[len(request)]

    await grpcfloor.serve(ready, BARE_METHOD.split("/")[1], {"Get": get})


def _messages() -> tuple[dict[str, bytes], dict[int, bytes]]:
    """kiln's Get request and response bytes for one key and for 100 keys (requests by name, responses by request
    size)."""
    one = pb.GetRequest(namespace="", keys=[b"key1"]).SerializeToString()
    multi = pb.GetRequest(namespace="", keys=[k.encode() for k in KEYS]).SerializeToString()
    items = [pb.Item(key=k.encode(), value=VALUE, flags=memcache.TYPE_BYTES) for k in KEYS]
    return ({"one": one, "multi": multi},
            {len(one): pb.GetResponse(items=items[1:2]).SerializeToString(),
             len(multi): pb.GetResponse(items=items).SerializeToString()})


# ------------------------------------------------------------------ measuring

def _cpu(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class _Tally:
    """One configuration's samples and CPU over the slices of a round."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.client = self.server = 0.0

    def run(self, start: int, n: int, op: Callable[[int], object], server_pid: int) -> None:
        client0, server0 = _cpu(os.getpid()), _cpu(server_pid)
        for i in range(start, start + n):
            begin = time.perf_counter()
            op(i)
            self.samples.append(time.perf_counter() - begin)
        self.client += _cpu(os.getpid()) - client0
        self.server += _cpu(server_pid) - server0

    def figures(self) -> dict[str, float]:
        """p50/p99 (ms) and client/server CPU µs per call."""
        n = len(self.samples)
        samples = sorted(self.samples)
        return {"p50": samples[n // 2] * 1000, "p99": samples[min(n - 1, int(0.99 * n))] * 1000,
                "client_us": self.client * 1e6 / n, "server_us": self.server * 1e6 / n}


def measure_round(configs: list[tuple[str, int, Callable[[int], object], int]],
                  slices: int) -> dict[str, dict[str, float]]:
    """One round: each configuration's calls in ``slices`` slices, the configurations taking turns slice by slice,
    so a burst of load on the shared machine falls on all of them alike rather than on one."""
    tallies = {name: _Tally() for name, _, _, _ in configs}
    for k in range(slices):
        for name, count, op, pid in configs:
            per = max(1, count // slices)
            tallies[name].run(k * per, per, op, pid)
    return {name: tally.figures() for name, tally in tallies.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=1000, help="single-key calls per configuration per round "
                        "(get_multi runs a tenth as many)")
    parser.add_argument("--slices", type=int, default=6, help="each round's calls of a configuration are made in "
                        "this many slices, the configurations taking turns (default 6)")
    parser.add_argument("--bare-server", type=pathlib.Path, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.bare_server:
        grpcfloor.run(_bare_server(args.bare_server, _messages()[1]))
        return 0
    binary = shutil.which("memcached")
    if binary is None:
        print("memcached is not installed: apt-get install memcached", file=sys.stderr)
        return 2
    load = os.getloadavg()
    sup = Supervisor(pathlib.Path(tempfile.mkdtemp(prefix="kiln-memcache-bench-")))
    port = free_port()
    daemon = subprocess.Popen([binary, "-l", "127.0.0.1", "-p", str(port), "-t", "2", "-m", "256", "-U", "0",
                               "-u", "root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        ready = sup.run_dir / "memcache.addr"
        svc = sup.start("memcache_svc", python_module("memcache_svc", "--listen", "127.0.0.1:0", "--ready-file",
                                                      str(ready)),
                        env={**os.environ, "KILN_MEMCACHE_SERVICE_SECRET": SECRET}, ready_file=ready)
        bare_ready = sup.run_dir / "bare.addr"
        bare = sup.start("bare-grpcio", [sys.executable, str(pathlib.Path(__file__).resolve()), "--bare-server",
                                         str(bare_ready)], ready_file=bare_ready)
        os.environ.update(KILN_MEMCACHE_ADDR=svc.address, KILN_APP_TOKEN=auth.mint_app_token(SECRET, "bench"))
        memcache.reset()
        requests = _messages()[0]
        bare_call = _rpc.channel(bare.address).unary_unary(BARE_METHOD)

        def bare_get(kind: str) -> Callable[[int], object]:
            request = requests[kind]
            return lambda i: bare_call(request, timeout=memcache.CALL_TIMEOUT, metadata=_rpc.metadata())

        text = TextClient(("127.0.0.1", port), default_noreply=False)
        memcache.set_multi({k: VALUE for k in KEYS})
        text.set_many({k: VALUE for k in KEYS})
        assert memcache.get_multi(KEYS) == text.get_many(KEYS) == {k: VALUE for k in KEYS}
        n = args.ops
        configs: list[tuple[str, int, Callable[[int], object], int]] = [
            ("kiln get", n, lambda i: memcache.get(KEYS[i % 100]), svc.proc.pid),
            ("bare grpcio get", n, bare_get("one"), bare.proc.pid),
            ("memcached get", n, lambda i: text.get(KEYS[i % 100]), daemon.pid),
            ("kiln get_multi(100)", n // 10, lambda i: memcache.get_multi(KEYS), svc.proc.pid),
            ("bare grpcio get_multi(100)", n // 10, bare_get("multi"), bare.proc.pid),
            ("memcached get_many(100)", n // 10, lambda i: text.get_many(KEYS), daemon.pid),
            ("kiln set", n, lambda i: memcache.set(KEYS[i % 100], VALUE), svc.proc.pid),
            ("memcached set", n, lambda i: text.set(KEYS[i % 100], VALUE), daemon.pid),
        ]
        for _, _, op, _ in configs:  # warm up: channels, connections, caches
            for i in range(50):
                op(i)
        for _ in range(args.rounds):
            rounds.append(measure_round(configs, args.slices))
    finally:
        daemon.terminate()
        daemon.wait()
        sup.stop_all()
    print(f"memcache benchmark: {os.cpu_count()} CPUs, load average at start {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; 100-byte values, one call at a time; {args.rounds} interleaved rounds of {args.ops} calls "
          f"({args.ops // 10} for 100 keys), in {args.slices} slices taking turns; medians over rounds")
    for name in rounds[0]:
        med = {k: statistics.median(r[name][k] for r in rounds) for k in ("p50", "p99", "client_us", "server_us")}
        print(f"  {name:28} p50 {med['p50']:6.3f} ms  p99 {med['p99']:6.3f} ms  ({1000 / med['p50']:6,.0f}/s)  "
              f"CPU/call client {med['client_us']:5.0f} µs, server {med['server_us']:5.0f} µs")
    ratios = [("get p50, kiln ÷ bare grpcio (aim ≤ 1.2×)", "kiln get", "bare grpcio get"),
              ("get p50, kiln ÷ memcached", "kiln get", "memcached get"),
              ("get_multi(100) p50, kiln ÷ memcached get_many(100) (aim ≤ 2×)", "kiln get_multi(100)",
               "memcached get_many(100)"),
              ("get_multi(100) p50, kiln ÷ bare grpcio of the same sizes", "kiln get_multi(100)",
               "bare grpcio get_multi(100)"),
              ("get_multi(100) p50 ÷ kiln get p50", "kiln get_multi(100)", "kiln get"),
              ("set p50, kiln ÷ memcached", "kiln set", "memcached set")]
    for label, top, bottom in ratios:
        per_round = [r[top]["p50"] / r[bottom]["p50"] for r in rounds]
        print(f"  {label}: median {statistics.median(per_round):.2f}×  (rounds: "
              f"{', '.join(f'{x:.2f}' for x in per_round)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
