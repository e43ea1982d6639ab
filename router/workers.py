"""``router --workers N``: N router processes sharing one listening port, so the router uses every core.

The process given ``--workers N`` (N > 1) serves no HTTP itself: it is a small
parent that

1. reserves the listening address: it binds a socket with ``SO_REUSEPORT``
   but never listens on it, so the port (also one the system picked for
   ``--listen host:0``) stays the router's while workers come and go, and a
   port already taken fails here, at once, as a single router's would;
2. starts N workers, each a plain ``python -m router`` with the parent's
   settings (handed over through a pipe, :mod:`kiln_platform.handover`, as
   they may hold secrets), ``worker`` set to its number (1..N) and
   ``listen`` set to the reserved port. Each worker listens there with
   ``SO_REUSEPORT`` (the kernel spreads new connections over them) and has
   its own NATS connection. Workers die with the parent
   (``PR_SET_PDEATHSIG``, :mod:`kiln_platform.diewithparent`);
3. writes ``--ready-file`` once every worker serves;
4. replaces a worker that exits while the router serves (killed, crashed):
   the new one takes the same number. A replacement that cannot start
   (it exits, or is not serving within :data:`START_SECONDS`) stops the
   router: the other workers are stopped and the parent exits with status 1,
   so its own supervisor sees the failure instead of a router running
   short of workers forever;
5. on SIGTERM or SIGINT sends SIGTERM to every worker, each of which stops
   as a single router does (stops accepting, finishes the requests under
   way, drains NATS), and exits when they have.

Clients see the same router whichever worker answers; only the health path
(``/_ah/kiln/healthz``) says which worker it reached (a number, not a pid),
for tests and operators.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
import signal
import socket
import sys
import tempfile
import typing

from kiln.errors import KilnError
from kiln_platform import grpcserver, handover
from kiln_platform.config import HostPort, Secret
from router.config import RouterConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "KILN_ROUTER_"
START_SECONDS = 60.0
STOP_SECONDS = 30.0  # a worker's graceful stop (requests under way finish) before it is killed
_DIE_WITH_PARENT = pathlib.Path(grpcserver.__file__).with_name("diewithparent.py")


class WorkerStartError(KilnError):
    """A worker did not start; the router stops rather than serve with fewer workers than asked."""


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` that never listens: the workers' port, kept."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def worker_settings(cfg: RouterConfig, *, worker: int, port: int, ready_file: pathlib.Path) -> dict[str, str]:
    """Every setting of ``cfg`` as ``KILN_ROUTER_*`` text, for worker number ``worker`` on ``port``."""
    chosen = dataclasses.replace(cfg, workers=1, worker=worker, listen=type(cfg.listen)(cfg.listen.host, port),
                                 ready_file=ready_file)
    out = {}
    for f in dataclasses.fields(chosen):
        out[ENV_PREFIX + f.name.upper()] = _text(getattr(chosen, f.name))
    return out


def _text(value: object) -> str:
    """A setting as :func:`kiln_platform.config.load` reads it back from the environment."""
    if value is None:
        return ""
    if isinstance(value, Secret):
        return value.get()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(_text(v) for v in value)
    return str(value)  # numbers, paths, host:port


class _Worker:
    """One worker process (slot ``number``)."""

    def __init__(self, number: int, proc: asyncio.subprocess.Process, ready_file: pathlib.Path) -> None:
        self.number = number
        self.proc = proc
        self.ready_file = ready_file


async def _start(cfg: RouterConfig, number: int, port: int, run_dir: pathlib.Path) -> _Worker:
    ready_file = run_dir / f"worker-{number}.addr"
    ready_file.unlink(missing_ok=True)
    fd = handover.pipe(worker_settings(cfg, worker=number, port=port, ready_file=ready_file))
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[handover.FD_VARIABLE] = str(fd)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(_DIE_WITH_PARENT), str(os.getpid()), "--", sys.executable, "-m", "router",
            env=env, pass_fds=(fd,), stdin=asyncio.subprocess.DEVNULL)
    finally:
        os.close(fd)
    return _Worker(number, proc, ready_file)


async def _ready(worker: _Worker) -> None:
    """Wait until ``worker`` serves, or raise :class:`WorkerStartError`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_SECONDS
    while not worker.ready_file.exists():
        if worker.proc.returncode is not None:
            raise WorkerStartError(f"router worker {worker.number} exited with status {worker.proc.returncode} "
                                   "before serving")
        if loop.time() > deadline:
            raise WorkerStartError(f"router worker {worker.number} did not serve within {START_SECONDS:.0f}s")
        await asyncio.sleep(0.05)


async def _stop(workers: typing.Iterable[_Worker]) -> None:
    """SIGTERM every worker; SIGKILL one that has not stopped within :data:`STOP_SECONDS`."""
    running = [w for w in workers if w.proc.returncode is None]
    for w in running:
        w.proc.send_signal(signal.SIGTERM)
    for w in running:
        try:
            await asyncio.wait_for(w.proc.wait(), STOP_SECONDS)
        except TimeoutError:
            log.warning("router worker %d did not stop within %.0fs; killing it", w.number, STOP_SECONDS)
            w.proc.kill()
            await w.proc.wait()


async def supervise(cfg: RouterConfig) -> None:
    """Run ``cfg.workers`` router workers until SIGTERM (see module docstring)."""
    reserved = reserve(cfg.listen.host, cfg.listen.port)
    port = reserved.getsockname()[1]
    workers: dict[int, _Worker] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        with tempfile.TemporaryDirectory(prefix="kiln-router-") as tmp:
            run_dir = pathlib.Path(tmp)
            for number in range(1, cfg.workers + 1):
                workers[number] = await _start(cfg, number, port, run_dir)
            await _first_of(asyncio.gather(*(_ready(w) for w in workers.values())), stop)
            if stop.is_set():
                return
            address = str(HostPort(cfg.listen.host, port))
            log.info("router serving HTTP on %s with %d workers", address, cfg.workers)
            if cfg.ready_file:
                grpcserver.write_ready_file(cfg.ready_file, address)
            while not stop.is_set():
                exits = {asyncio.ensure_future(w.proc.wait()): w for w in workers.values()}
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait([*exits, stopping], return_when=asyncio.FIRST_COMPLETED)
                for waiter in [*exits, stopping]:
                    if waiter not in done:
                        waiter.cancel()
                if stop.is_set():
                    break
                for waiter in done:
                    gone = exits[waiter]
                    log.warning("router worker %d exited with status %s; starting another", gone.number,
                                gone.proc.returncode)
                    workers[gone.number] = await _start(cfg, gone.number, port, run_dir)
                    await _first_of(_ready(workers[gone.number]), stop)
    finally:
        log.info("stopping %d router workers", len(workers))
        await _stop(workers.values())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        reserved.close()
        log.info("stopped")


async def _first_of(work: typing.Awaitable[object], stop: asyncio.Event) -> None:
    """Await ``work`` unless ``stop`` is set first (then ``work`` is cancelled); ``work``'s error is raised."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return
    task.result()
