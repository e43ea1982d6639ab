"""Exact instructions per memcache get on each side, with callgrind (valgrind), beside a bare grpcio call.

Timings on a shared 2-core machine are noisy; instruction counts are not. For each side it runs the process under
``valgrind --tool=callgrind`` twice, with ``--calls`` and with ``--calls`` + ``--extra`` single-key gets, and divides
the difference of the two totals by ``--extra``: what one more call costs, start-up and warm-up cancelled out.

- **server**: ``python -m memcache_svc`` (kiln) and the bare grpcio server of ``bench/memcache_bench.py`` run under
  callgrind; the client (this process, not under callgrind) calls them.
- **client**: this script's ``--client-only`` mode runs under callgrind, calling servers that run normally:
  ``kiln.api.memcache.get`` (kiln) and the bare call as ``bench/memcache_bench.py`` makes it.

Usage::

    apt-get install valgrind; .venv/bin/python bench/memcache_instructions.py [--calls 200] [--extra 1000]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = ROOT / "bench" / "memcache_bench.py"
SECRET = "bench-secret"
VALUE = b"v" * 100


def _wait_for(path: pathlib.Path, proc: subprocess.Popen[bytes], seconds: float = 900.0) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError("server not ready in time")
        time.sleep(0.05)
    return path.read_text().strip()


def _total(out: pathlib.Path) -> int:
    text = out.read_text(errors="replace")
    found = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no totals in {out}")
    return int(found.group(1))


def _valgrind(out: pathlib.Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}"]


def _server_cmd(kind: str, ready: pathlib.Path) -> list[str]:
    if kind == "kiln":
        return [sys.executable, "-m", "memcache_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready)]
    return [sys.executable, str(BENCH), "--bare-server", str(ready)]


def _env() -> dict[str, str]:
    return {**os.environ, "KILN_MEMCACHE_SERVICE_SECRET": SECRET, "PYTHONHASHSEED": "0",
            "PYTHONPATH": str(ROOT)}


def _start(kind: str, tmp: pathlib.Path, wrap: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    ready = tmp / f"{kind}-{time.monotonic_ns()}.addr"
    proc = subprocess.Popen([*wrap, *_server_cmd(kind, ready)], env=_env(), cwd=ROOT)
    return proc, _wait_for(ready, proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _client_calls(kind: str, address: str, calls: int) -> None:
    """``calls`` single-key gets after 50 of warm-up, as memcache_bench.py makes them."""
    from kiln.api import _rpc, memcache
    from kiln_platform import auth
    os.environ.update(KILN_MEMCACHE_ADDR=address, KILN_APP_TOKEN=auth.mint_app_token(SECRET, "bench"))
    memcache.reset()
    memcache.CALL_TIMEOUT = 120.0  # a server under callgrind runs ~50 times slower; a timed-out get would be a miss
    if kind == "kiln":
        assert memcache.set("key1", VALUE), "the first set failed"

        def op() -> object:
            found = memcache.get("key1")
            assert found == VALUE, found
            return found
    else:
        sys.path.insert(0, str(BENCH.parent))
        import memcache_bench
        request = memcache_bench._messages()[0]["one"]
        call = _rpc.channel(address).unary_unary(memcache_bench.BARE_METHOD)

        def op() -> object:
            return call(request, timeout=memcache.CALL_TIMEOUT, metadata=_rpc.metadata())
    for _ in range(50 + calls):
        op()


def server_side(kind: str, calls: int, extra: int, tmp: pathlib.Path) -> float:
    totals = []
    for n in (calls, calls + extra):
        out = tmp / f"server-{kind}-{n}.out"
        proc, address = _start(kind, tmp, _valgrind(out))
        try:
            _client_calls(kind, address, n)
        finally:
            _stop(proc)
        totals.append(_total(out))
    return (totals[1] - totals[0]) / extra


def client_side(kind: str, calls: int, extra: int, tmp: pathlib.Path) -> float:
    proc, address = _start(kind, tmp, [])
    totals = []
    try:
        for n in (calls, calls + extra):
            out = tmp / f"client-{kind}-{n}.out"
            subprocess.run([*_valgrind(out), sys.executable, str(pathlib.Path(__file__).resolve()), "--client-only",
                            kind, address, str(n)], env=_env(), cwd=ROOT, check=True)
            totals.append(_total(out))
    finally:
        _stop(proc)
    return (totals[1] - totals[0]) / extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--extra", type=int, default=1000)
    parser.add_argument("--side", choices=("client", "server", "both"), default="both")
    parser.add_argument("--client-only", nargs=3, metavar=("KIND", "ADDRESS", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_only:
        kind, address, calls = args.client_only
        _client_calls(kind, address, int(calls))
        return 0
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-memcache-cg-"))
    print(f"instructions per single-key get (callgrind; {args.extra} calls beyond {args.calls}):")
    for side, fn in (("server", server_side), ("client", client_side)):
        if args.side not in (side, "both"):
            continue
        figures = {kind: fn(kind, args.calls, args.extra, tmp) for kind in ("bare", "kiln")}
        print(f"  {side}: kiln {figures['kiln'] / 1000:,.1f}k, bare grpcio {figures['bare'] / 1000:,.1f}k, "
              f"kiln ÷ bare {figures['kiln'] / figures['bare']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
