"""Requests in flight on an instance, as its manager knows them: an instance that dies fails them at once.

App Engine answered every request an instance held with a 500 the moment the
instance died ("A problem was encountered with the process that handled this
request, causing it to exit"), whatever killed it. A kiln instance's own
watchdog answers its requests before it stops for memory, but when the kernel
(OOM in its cgroup), a signal, a crash in a C extension or ``os._exit`` ends
it, nothing in the instance runs any more and the router would wait for its
request timeout. The instance manager sees the death at once (pidfd), so it
answers instead; to know what to answer it keeps, per instance, the NATS reply
subjects of the requests the instance has received and not yet answered.

The instance tells it over a pipe the manager creates and the instance inherits
(``--inflight-fd``): one line per event, ``+SUBJECT`` when a request arrives and
``-SUBJECT`` once it is answered. A write of a few dozen bytes to a pipe is one
system call, atomic, and lands in the kernel before anything can kill the
process, so the manager reads every line the instance wrote, even after a
SIGKILL.

What is trusted: the instance's process runs the app's code, which could write
anything into the pipe. The manager therefore only answers subjects shaped as
the router's reply inboxes (``_INBOX.<id>.<token>``, never an app's own
``_INBOX_<app>`` or any other subject), keeps at most :data:`MAX_HELD` per
instance, and sends only its fixed 500 envelope; the worst a hostile app can do
is answer, with that 500, a request of the router whose inbox token it guessed,
at the price of its own instance.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import select
from collections.abc import Iterable

from kiln.pb.logs.v1 import logs_pb2
from kiln.pb.runtime.v1 import http_pb2

log = logging.getLogger(__name__)

# Reply subjects of request-reply from NATS clients' shared inboxes: ``_INBOX.<nuid>.<token>`` (nats-py, Go) or
# ``_INBOX.<nuid>`` (one inbox per request). An app's own inboxes (``_INBOX_<app>``) do not match.
REPLY_SUBJECT = re.compile(rb"_INBOX\.[A-Za-z0-9]{1,64}(?:\.[A-Za-z0-9]{1,64})?")
# Requests one instance may hold as far as its manager cares: far above what one instance queues, bounded so a
# hostile app cannot grow its manager's memory or make it publish without end.
MAX_HELD = 10_000
# The pipe's capacity (Linux allows up to /proc/sys/fs/pipe-max-size, 1 MiB by default, to anyone): ~20,000 lines.
# The manager reads it every quarter second (runtime.manager: Manager.tick), far more than an instance serves
# meanwhile; even the default 64 KiB holds ~1,400 lines.
PIPE_BYTES = 1 << 20
_STARTED, _FINISHED = b"+", b"-"

# What App Engine logged for a request whose instance died under it (the client saw a plain 500 page).
EXITED_MESSAGE = ("A problem was encountered with the process that handled this request, causing it to exit. "
                  "This is likely to cause a new process to be used for the next request to your application. "
                  "(Error code 204)")
OUT_OF_MEMORY_MESSAGE = ("While handling this request, the process that handled this request was found to be using "
                         "too much memory and was terminated. This is likely to cause a new process to be used for "
                         "the next request to your application. If you see this message frequently, you may have a "
                         "memory leak in your application or may be using an instance with insufficient memory. "
                         "Consider setting a larger instance class in app.yaml.")


class Reporter:
    """The instance's side: one line into the manager's pipe when a request arrives and when it is answered (the
    lines of requests that arrive, or are answered, in one turn of the instance's event loop share a write).

    With no pipe (``fd`` < 0: an instance started by hand) it does nothing. A full pipe (a manager that stopped
    reading) never blocks the instance: the line is dropped, and said once in the log.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._dropped = False
        if fd >= 0:
            os.set_inheritable(fd, False)  # nothing the instance starts gets it
            os.set_blocking(fd, False)

    def started(self, reply: str) -> None:
        self._write(_STARTED, (reply,))

    def finished(self, reply: str) -> None:
        self._write(_FINISHED, (reply,))

    def started_all(self, replies: Iterable[str]) -> None:
        """Several requests arrived (one event-loop turn's): their lines in as few writes as the pipe allows."""
        self._write(_STARTED, replies)

    def finished_all(self, replies: Iterable[str]) -> None:
        """Several requests were answered: their lines in as few writes as the pipe allows."""
        self._write(_FINISHED, replies)

    def _write(self, kind: bytes, replies: Iterable[str]) -> None:
        if self._fd < 0:
            return
        lines = [kind + reply.encode() + b"\n" for reply in replies if reply]
        try:
            # Each write holds whole lines and at most PIPE_BUF bytes: atomic, so the manager never sees half a line
            # from a write that failed, and lines of several writers never interleave.
            start = 0
            while start < len(lines):
                end, size = start, 0
                while end < len(lines) and (end == start or size + len(lines[end]) <= select.PIPE_BUF):
                    size += len(lines[end])
                    end += 1
                os.write(self._fd, b"".join(lines[start:end]))
                start = end
        except OSError as exc:
            if not self._dropped:
                self._dropped = True
                log.warning("the instance manager was not told of a request (%s): should this instance die, "
                            "such requests wait for the router's timeout", exc)


class Tracker:
    """The manager's side for one instance: the pipe it inherits, and the reply subjects of the requests it holds."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        with contextlib.suppress(OSError):  # best effort: the default 64 KiB still works, with less slack
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._held: dict[bytes, None] = {}  # ordered: answered in the order they arrived
        self._partial = b""
        self.refused = 0  # lines that were not a start or end of a router's request (app code writing into the pipe)

    def spawned(self) -> None:
        """The instance holds its end now: close the manager's copy."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def feed(self) -> bool:
        """Read every line the instance has written so far; False once no writer is left (or the pipe is closed)."""
        while self.read_fd >= 0:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return True
            except OSError as exc:
                log.warning("could not read an instance's requests: %s", exc)
                return False
            if not chunk:
                return False
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            if len(self._partial) > 256:  # no subject is this long: a writer that is not the runtime
                self._partial = b""
                self.refused += 1
            for line in lines:
                self._apply(line)
        return False

    def _apply(self, line: bytes) -> None:
        kind, subject = line[:1], line[1:]
        if not REPLY_SUBJECT.fullmatch(subject):
            self.refused += 1
        elif kind == _FINISHED:
            self._held.pop(subject, None)
        elif kind == _STARTED and len(self._held) < MAX_HELD:
            self._held[subject] = None
        elif kind != _STARTED:
            self.refused += 1

    def held(self) -> list[str]:
        """The reply subjects of the requests received and not answered."""
        return [s.decode() for s in self._held]

    def close(self) -> list[str]:
        """Read what is left, close the pipe; the requests still held."""
        self.feed()
        self.spawned()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1
        held = self.held()
        self._held.clear()
        return held


def error_response(status: int, reason: str, instance_id: str, public: str | None = None) -> http_pb2.HttpResponse:
    """The page an instance (or its manager, for it) answers with when the app could not: ``reason`` goes to the
    request's log (``runtime_error``), never to the client."""
    body = public or {400: "Bad Request", 500: "Internal Server Error"}.get(status, "Error")
    resp = http_pb2.HttpResponse(status=status, body=f"<html><body><h1>{status} {body}</h1></body></html>".encode(),
                                 runtime_error=reason, instance_id=instance_id)
    resp.headers.add(name="Content-Type", value=b"text/html; charset=utf-8")
    return resp


def exited_response(instance_id: str, *, out_of_memory: bool, reason: str) -> http_pb2.HttpResponse:
    """The 500 the manager sends for each request an instance held when it died.

    ``reason`` (how the instance ended: "was killed by SIGKILL") goes to ``runtime_error``; App Engine's message goes to the request's log.
    """
    resp = error_response(500, f"the instance that handled the request {reason}", instance_id)
    line = resp.app_logs.add(level=logs_pb2.LOG_LEVEL_CRITICAL if out_of_memory else logs_pb2.LOG_LEVEL_ERROR,
                             message=OUT_OF_MEMORY_MESSAGE if out_of_memory else EXITED_MESSAGE)
    line.time.GetCurrentTime()
    return resp
