"""What the router's acknowledged request logs cost (``router/logship.py``), against the plain NATS publish it
replaced, on a nats-server started here: CPU of this process per record, three rounds of ``--records`` each;
with ``--baseline DIR`` (another checkout of kiln), that checkout's ``router/logship.py`` too, in the same rounds.

Usage::

    .venv/bin/python bench/logship_bench.py [--records 5000] [--per-turn 4] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

from kiln_platform import bus  # noqa: E402
from kiln_platform.supervisor import Supervisor  # noqa: E402
from router.logship import LogShipper  # noqa: E402

RECORD = b"x" * 400  # about a request log's size


def _shipper_class(tree: pathlib.Path) -> type[LogShipper]:
    """``LogShipper`` as another checkout of kiln has it."""
    spec = importlib.util.spec_from_file_location("baseline_logship", tree / "router" / "logship.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LogShipper  # type: ignore[no-any-return]


async def _shipped(nc: nats.NATS, shipper_class: type[LogShipper], records: int, per_turn: int, tag: str) -> float:
    """CPU seconds of this process to ship ``records`` and have them all acknowledged."""
    start = time.process_time()
    shipper = shipper_class(nc, bus.REQUEST_LOG_SUBJECT)
    for i in range(records):
        shipper.ship(f"{tag}-{i}", RECORD)
        if i % per_turn == per_turn - 1:
            await asyncio.sleep(0)  # the router's loop turns between requests
    while shipper.pending:
        await asyncio.sleep(0.001)
    return time.process_time() - start


async def rounds(url: str, records: int, per_turn: int, baseline: pathlib.Path | None) -> None:
    nc = await nats.connect(url)
    await bus.ensure_log_stream(nc)
    ratios = []
    for n in range(3):
        start = time.process_time()
        for _ in range(records):
            await nc.publish(bus.REQUEST_LOG_SUBJECT, RECORD)
        await nc.flush()
        plain = time.process_time() - start
        shipped = await _shipped(nc, LogShipper, records, per_turn, f"round{n}")
        line = (f"round {n + 1}: plain publish {plain / records * 1e6:.1f} µs CPU per record; acknowledged batches "
                f"{shipped / records * 1e6:.1f} µs ({shipped / plain:.1f}×)")
        if baseline is not None:
            before = await _shipped(nc, _shipper_class(baseline), records, per_turn, f"baseline{n}")
            ratios.append(shipped / before)
            line += f"; baseline's {before / records * 1e6:.1f} µs (this/baseline {shipped / before:.2f})"
        print(line, flush=True)
    if ratios:
        print(f"this/baseline CPU per record: median {statistics.median(ratios):.2f} "
              f"(rounds: {' '.join(f'{r:.2f}' for r in ratios)})")
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--per-turn", type=int, default=4,
                        help="records shipped per turn of the event loop (requests a loaded router finishes at once)")
    parser.add_argument("--baseline", type=pathlib.Path, default=None,
                        help="another checkout of kiln whose router/logship.py to measure in the same rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        supervisor = Supervisor(pathlib.Path(tmp) / "run")
        server = supervisor.start_nats(pathlib.Path(tmp) / "nats")
        try:
            asyncio.run(rounds(f"nats://{server.address}", args.records, args.per_turn, args.baseline))
        finally:
            supervisor.stop_all()


if __name__ == "__main__":
    main()
