"""What an instance's private network costs: the hello-world app with user isolation, its instance in a network
namespace of its own (NATS through two forwarders: the runtime's loopback relay and the manager's Unix socket),
against the same app with user isolation on the host's network.

Both run side by side (``kiln dev --isolation user``, one instance each), driven by ``wrk`` in interleaved
rounds; figures are medians, the ratio is private / shared per round.

Usage (as root, like user isolation itself)::

    .venv/bin/python bench/network_bench.py [--seconds 10] [--rounds 3]

Needs ``wrk`` (Debian package ``wrk``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import statistics
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import APP, wrk, wrk_args  # noqa: E402
from deploy.dev import DevOptions, DevServer  # noqa: E402


def main() -> int:
    args = wrk_args(__doc__)
    if args is None:
        return 2
    if os.geteuid() != 0:
        print("run as root: user isolation starts instances as the app's own user", file=sys.stderr)
        return 2
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-network-bench-"))
    servers = {name: DevServer(DevOptions(app_dir=APP, port=0, data_dir=tmp / name, isolation="user",
                                          network_isolation=setting))
               for name, setting in (("private", "on"), ("shared", "off"))}
    rounds = []
    try:
        for server in servers.values():
            server.start()
            wrk(server.url, 32, 2)  # warm up
        for _ in range(args.rounds):
            rounds.append({(name, c): wrk(server.url, c, args.seconds)
                           for c in (32, 1) for name, server in servers.items()})
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"Private network benchmark ({os.cpu_count()} CPUs, wrk {args.seconds}s runs, median of {args.rounds} "
          "rounds)")
    print(f"{'':36}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for connections in (32, 1):
        for name in ("private", "shared"):
            row = [statistics.median(r[(name, connections)][f] for r in rounds) for f in ("rps", "p50", "p99")]
            label = f"{name} network, {connections} connection{'s' if connections > 1 else ''}"
            print(f"{label:36}{row[0]:>10,.0f}{row[1]:>9.2f}{row[2]:>9.2f}")
        ratios = sorted(r[("private", connections)]["rps"] / r[("shared", connections)]["rps"] for r in rounds)
        added = statistics.median(r[("private", connections)]["p50"] - r[("shared", connections)]["p50"]
                                  for r in rounds)
        print(f"  private/shared req/s at {connections}: {statistics.median(ratios):.2f}x "
              f"({ratios[0]:.2f}-{ratios[-1]:.2f}); added p50 {added:+.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
