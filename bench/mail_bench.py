"""Mail benchmark: messages per second accepted by kiln's mail service and delivered to a local SMTP server,
beside the same messages sent straight to that server with smtplib.

In one run on one machine, against one aiosmtpd server on loopback (plain SMTP, no TLS or AUTH, so the figures
are kiln's pipeline rather than cryptography):

- baseline: smtplib sends N messages straight to the server over ``--connections`` kept-open connections
  (one thread each) — what an app that talks SMTP itself would get, with no queue and no durability;
- kiln accepted: N ``send_mail`` calls (kiln.api.mail → mail_svc over gRPC, checked, rendered, stored on
  JetStream) from ``--clients`` threads; the rate at which calls return, and their latency;
- kiln delivered: from the first call until the server has every message (mail_svc's workers take them off
  the queue, deliver over ``--connections`` relay connections, record each delivery and acknowledge it);
- the ratios of both rates to the baseline;
- with ``--nats-sync always``: the same with nats-server fsyncing every JetStream write;
- with ``--window``: SMTP's own window, how long after the relay's ``250`` each delivery's record was stored
  (mail_svc logs it at DEBUG) — a crash of mail_svc inside it is the one way a mail goes out twice.

Usage::

    .venv/bin/python bench/mail_bench.py [--messages 1000] [--clients 8] [--connections 4] [--window]
        [--nats-sync always]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import pathlib
import re
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiosmtpd.smtp import SMTP, Envelope, Session  # noqa: E402

from kiln_platform import auth  # noqa: E402
from kiln.api import _rpc, mail  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402

SECRET = "bench-secret"
APP = "bench"
RECORDED = re.compile(r"recorded ([0-9.]+) ms after the relay accepted it")
BODY = ("A line of an ordinary notification message, about sixty chars.\n" * 30)  # ~2 KB


class CountingServer:
    """aiosmtpd on loopback in its own thread, counting the messages it accepts."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        with self.lock:
            self.count += 1
        return "250 OK"

    def start(self) -> None:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            self.loop.create_server(lambda: SMTP(self, hostname="bench.relay"), "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def wait_count(self, target: int, timeout: float = 600.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.count >= target:
                    return time.perf_counter()
            time.sleep(0.005)
        raise SystemExit(f"the SMTP server got {self.count} of {target} messages within {timeout:.0f}s")


def baseline(port: int, n: int, connections: int) -> float:
    """Messages/s sent straight to the server with smtplib over kept-open connections."""
    share = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]

    def worker(count: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for i in range(count):
                client.sendmail("robot@bench.mail.localhost", ["friend@example.org"],
                                (f"From: robot@bench.mail.localhost\r\nTo: friend@example.org\r\n"
                                 f"Subject: baseline {i}\r\n\r\n{BODY}"))  # str: smtplib sends CRLF lines

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        list(pool.map(worker, share))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8, help="threads calling send_mail at once")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections (baseline) and mail_svc workers")
    parser.add_argument("--window", action="store_true",
                        help="also measure the time from the relay's 250 to the stored record (mail_svc at DEBUG)")
    parser.add_argument("--nats-sync", default="", metavar="INTERVAL",
                        help="nats-server's jetstream sync_interval (e.g. 'always': fsync every write; default: "
                             "nats-server's own, 2 min)")
    args = parser.parse_args()
    windows: list[float] = []

    server = CountingServer()
    server.start()
    with tempfile.TemporaryDirectory() as tmp:
        sup = Supervisor(pathlib.Path(tmp) / "run")
        try:
            nats = sup.start_nats(pathlib.Path(tmp) / "nats", config={"jetstream": {"sync_interval": args.nats_sync}}
                                  if args.nats_sync else None)
            ready = pathlib.Path(tmp) / "run" / "mail.addr"
            env = {**os.environ, "KILN_MAIL_SERVICE_SECRET": SECRET}
            svc = sup.start("mail_svc", python_module(
                "mail_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url",
                f"nats://{nats.address}", "--relay", f"127.0.0.1:{server.port}", "--relay-security", "none",
                "--workers", str(args.connections), "--log-level", "DEBUG" if args.window else "WARNING"), env=env,
                ready_file=ready)

            direct = baseline(server.port, args.messages, args.connections)
            before = server.count

            os.environ["KILN_MAIL_ADDR"] = svc.address
            os.environ["KILN_APP_TOKEN"] = auth.mint_app_token(SECRET, APP)
            _rpc.reset()
            for i in range(20):  # warm up the channel and the service
                mail.send_mail("robot@bench.mail.localhost", "friend@example.org", f"warm {i}", BODY)
            server.wait_count(before + 20)
            before = server.count

            latencies: list[float] = []
            lock = threading.Lock()

            def send(i: int) -> None:
                t0 = time.perf_counter()
                mail.send_mail("robot@bench.mail.localhost", "friend@example.org", f"kiln {i}", BODY)
                with lock:
                    latencies.append(time.perf_counter() - t0)

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(send, range(args.messages)))
            accepted_at = time.perf_counter()
            delivered_at = server.wait_count(before + args.messages)
            if args.window:
                sup.stop_all()
                windows = sorted(float(ms) for ms in RECORDED.findall(svc.log_path.read_text(errors="replace")))
        finally:
            sup.stop_all()
            server.loop.call_soon_threadsafe(server.loop.stop)

    accepted = args.messages / (accepted_at - start)
    delivered = args.messages / (delivered_at - start)
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"mail benchmark: {args.messages} messages of {len(BODY)} bytes, {args.clients} sending threads, "
          f"{args.connections} SMTP connections, {os.cpu_count()} CPUs, "
          f"nats-server sync_interval {args.nats_sync or 'default'}")
    print(f"  baseline smtplib -> SMTP server directly : {direct:8.0f} msgs/s")
    print(f"  kiln send_mail accepted (queued durably) : {accepted:8.0f} msgs/s  "
          f"(p50 {p50:.2f} ms, p99 {p99:.2f} ms per call)  ratio {accepted / direct:.2f}x")
    print(f"  kiln delivered to the SMTP server        : {delivered:8.0f} msgs/s  ratio {delivered / direct:.2f}x")
    if windows:
        print(f"  relay's 250 -> delivery recorded         : p50 {statistics.median(windows):.2f} ms, "
              f"p99 {windows[int(len(windows) * 0.99) - 1]:.2f} ms, max {windows[-1]:.2f} ms "
              f"({len(windows)} deliveries)")


if __name__ == "__main__":
    main()
