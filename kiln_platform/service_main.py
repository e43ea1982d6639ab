"""The shared ``__main__`` body of every gRPC service: config, logging, run."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from kiln_platform import config, handover, log
from kiln.errors import KilnError

C = TypeVar("C")


def run(name: str, cls: type[C], serve: Callable[[C], Awaitable[None]], argv: list[str] | None = None) -> int:
    """Load ``cls`` from flags and its environment variables (``KILN_<cls.env_prefix>_*``), set up logging, and run
    ``serve`` until SIGTERM."""
    os.umask(0o077)  # what a service writes (its data, logs, sockets) is readable by the platform's user alone
    try:
        # Secrets a parent handed over through a pipe (kiln_platform.handover) join the environment here, in memory only.
        cfg = config.load(cls, prefix=config.env_prefix(cls), argv=sys.argv[1:] if argv is None else argv,
                          env=handover.receive(os.environ), description=f"kiln {name}")
    except (KilnError, ValueError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    log.setup(level=getattr(cfg, "log_level", "INFO"), fmt=getattr(cfg, "log_format", "text"), component=name)
    try:
        import uvloop
        runner: Callable[..., object] = uvloop.run
    except ImportError:  # uvloop is optional on platforms without it
        runner = asyncio.run
    try:
        runner(serve(cfg))
    except KilnError as exc:
        logging.getLogger(name).error("%s", exc)
        return 1
    return 0
