"""What the router's acknowledged request logs cost (``router/logship.py``), against the plain NATS publish it
replaced, on a nats-server started here: CPU of this process per record, three rounds of ``--records`` each.

Usage::

    .venv/bin/python bench/logship_bench.py [--records 5000] [--per-turn 4]
"""

from __future__ import annotations

import argparse
import asyncio
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


async def rounds(url: str, records: int, per_turn: int) -> None:
    nc = await nats.connect(url)
    await bus.ensure_log_stream(nc)
    for n in range(3):
        start = time.process_time()
        for _ in range(records):
            await nc.publish(bus.REQUEST_LOG_SUBJECT, RECORD)
        await nc.flush()
        plain = time.process_time() - start
        start = time.process_time()
        shipper = LogShipper(nc, bus.REQUEST_LOG_SUBJECT)
        for i in range(records):
            shipper.ship(f"round{n}-{i}", RECORD)
            if i % per_turn == per_turn - 1:
                await asyncio.sleep(0)  # the router's loop turns between requests
        while shipper.pending:
            await asyncio.sleep(0.001)
        shipped = time.process_time() - start
        print(f"round {n + 1}: plain publish {plain / records * 1e6:.1f} µs CPU per record; acknowledged batches "
              f"{shipped / records * 1e6:.1f} µs ({shipped / plain:.1f}×)")
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--per-turn", type=int, default=4,
                        help="records shipped per turn of the event loop (requests a loaded router finishes at once)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        supervisor = Supervisor(pathlib.Path(tmp) / "run")
        server = supervisor.start_nats(pathlib.Path(tmp) / "nats")
        try:
            asyncio.run(rounds(f"nats://{server.address}", args.records, args.per_turn))
        finally:
            supervisor.stop_all()


if __name__ == "__main__":
    main()
