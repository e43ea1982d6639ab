"""Exact instructions per hello request in a runtime instance, with callgrind (valgrind), for one or more source trees.

Timings on a shared 2-core machine are noisy; instruction counts are not. For each tree it runs
``bench/runtime_steps.py`` under ``valgrind --tool=callgrind`` twice, with ``--requests`` and with ``--requests`` +
``--extra`` requests, and divides the difference of the two totals by ``--extra``: what one more request costs, the
start-up and warm-up cancelled out. Two slices (every thread of the process counted):

- **serve**: ``Instance._serve`` on a request thread (``--serve-only``): the request thread's own work;
- **whole**: ``Instance.on_message`` to the answer handed to a stand-in of nats-py's ``respond``, 32 requests
  arriving per loop turn (``--whole-only``): the loop's work, the hand-over to request threads and back, and
  ``_serve``. nats-py's socket reads and writes are not in it (the prototype's worker pays them too).
- **nats**: the whole request as a running instance serves it (``--nats-only``): a real nats-server, the instance
  subscribed as ``runtime.app.serve`` subscribes it, another process (not counted) sending 32 requests at a time
  and waiting for their answers: nats-py reading each request and publishing its answer, and its subscription's
  way of handing a message to the instance, are in it.

``--tree DIR`` (repeatable) measures another checkout's code with this tree's script (``KILN_STEPS_TREE``), e.g.
``git archive main | tar -x -C /tmp/base`` for a same-run before/after.

Usage::

    apt-get install valgrind
    .venv/bin/python bench/runtime_instructions.py [--tree . --tree /tmp/base] [--requests 300] [--extra 300]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = ROOT / "bench" / "runtime_steps.py"


def _total(out: pathlib.Path) -> int:
    found = re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(errors="replace"), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no totals in {out}")
    return int(found.group(1))


def _count(tree: pathlib.Path, mode: str, requests: int, tmp: pathlib.Path) -> int:
    out = tmp / f"{tree.name}-{mode}-{requests}.cg"
    cmd = ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}", sys.executable, str(STEPS),
           f"--{mode}-only", str(requests)]
    env = {**os.environ, "KILN_STEPS_TREE": str(tree), "PYTHONHASHSEED": "0"}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return _total(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=pathlib.Path, default=None,
                        help="a checkout whose code is measured (default: this one); repeatable")
    parser.add_argument("--requests", type=int, default=320, help="requests of the first run (a multiple of 32)")
    parser.add_argument("--extra", type=int, default=320, help="requests more in the second run (a multiple of 32)")
    parser.add_argument("--mode", action="append", choices=("serve", "whole", "nats"), default=None)
    parser.add_argument("--jobs", type=int, default=2, help="valgrind runs at once")
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    modes = args.mode or ["serve", "whole", "nats"]
    with tempfile.TemporaryDirectory() as tmp_name, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        tmp = pathlib.Path(tmp_name)
        runs = {(tree, mode, n): pool.submit(_count, tree, mode, n, tmp)
                for tree in trees for mode in modes for n in (args.requests, args.requests + args.extra)}
        print(f"instructions per hello request (callgrind; {args.extra} requests beyond {args.requests}):")
        for tree in trees:
            for mode in modes:
                more = runs[(tree, mode, args.requests + args.extra)].result()
                base = runs[(tree, mode, args.requests)].result()
                print(f"  {tree!s:40} {mode:6} {(more - base) / args.extra:12,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
