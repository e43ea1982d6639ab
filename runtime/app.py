"""A runtime instance: loads one app version and serves its requests from NATS.

The instance subscribes to ``kiln.http.<app>.<version>`` in the queue group
``runtime`` (so adding instances adds capacity with no router change) and to
its own ``kiln.instance.<id>`` subject. Each request runs the WSGI app on a
worker thread; at most ``max_concurrent_requests`` run at once (1 when the app
is not ``threadsafe``). On SIGTERM the instance stops taking requests, lets the
ones in flight finish, then drains its NATS connection.

**One hop each way.** Waking another thread costs tens of microseconds on a
small machine, more than the rest of a small request's work, so a request
crosses threads exactly twice: the event loop hands the message to a request
thread (:class:`RequestThreads`), and the request thread, having run the app
and encoded the answer, hands the bytes back to be published. Both hops are
shared by the requests that make them together: the requests one turn of the
loop reads are told to the instance manager in one write and handed over at
the end of the turn (:meth:`Instance._dispatch`), and the answers request
threads finish while the loop is busy share one wake-up of the loop
(:meth:`Instance._hand_back`), one write to the manager and one memory check.
Nothing on the loop waits for the app: no task, future or timer per request.
The request timer is one watcher for all requests (:mod:`runtime.timer`); the
request thread files its deadline when the handler starts and takes it back
when it ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import dataclasses
import importlib
import itertools
import logging
import os
import pathlib
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Collection
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import DEFAULT_SUB_PENDING_BYTES_LIMIT, DEFAULT_SUB_PENDING_MSGS_LIMIT, Subscription

from kiln_platform import appyaml, bus, entrypoint, forward, grpcserver, natsinline, requestscope, tracing
from kiln import runtime as kiln_runtime
from kiln_platform.auth import TASK_REQUEST_DEADLINE_SECONDS
from kiln_platform.handlers import Matcher
from kiln_platform.log import app_id as app_id_var
from kiln_platform.log import request_id as request_id_var
from kiln.pb.logs.v1 import logs_pb2
from kiln.pb.runtime.v1 import events_pb2, http_pb2
from kiln.api import _rpc
from kiln.sdk import tickets
from runtime import appengine, httpfetch, inflight, isolation, sandbox, timer
from runtime.config import RuntimeConfig
from runtime.wsgi import (BadResponseHeaderError, CgiScript, InstanceInfo, WsgiApp, call_app, request_environ,
                          string_variables)

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT = 10
# Request paths whose handler an instance remembers (AppLoader.for_target).
MAX_CACHED_TARGETS = 1024
# Requests an instance holds (received, not answered: queued for a thread or running) and their envelopes' bytes:
# past either a request is refused with 503. nats-py's slow-consumer limits for a subscription's queue, which the
# requests no longer pass through (kiln_platform.natsinline).
MAX_HELD_REQUESTS = DEFAULT_SUB_PENDING_MSGS_LIMIT
MAX_HELD_BYTES = DEFAULT_SUB_PENDING_BYTES_LIMIT
# Looked up once, here: the sandbox refuses ctypes symbol lookups on request threads, where it is also called.
_SET_ASYNC_EXC = ctypes.pythonapi.PyThreadState_SetAsyncExc


class AppLoader:
    """Finds the handler for a path and imports its WSGI app once (app caching)."""

    def __init__(self, app_dir: str, config: appyaml.AppConfig) -> None:
        self._app_dir = app_dir
        self._target = config.wsgi_target  # Python 3 runtimes: what script: auto serves
        self._matcher = Matcher(config)
        self._apps: dict[str, WsgiApp] = {}
        self._scripts: dict[str, CgiScript] = {}
        self._lock = threading.Lock()
        # Request target (as the router sent it, still %-encoded) -> what serves it: the matching is the same for
        # every request of the version. Bounded: emptied when full, so one-off paths cannot grow it without end.
        self._by_target: dict[str, WsgiApp | CgiScript | None] = {}

    def for_target(self, raw_path: str) -> WsgiApp | CgiScript | None:
        """:meth:`resolve` for the %-encoded request path, remembered per path once its handler has been found (a
        handler whose app fails to import is looked up again on the next request)."""
        try:
            return self._by_target[raw_path]
        except KeyError:
            pass
        found = self.resolve(urllib.parse.unquote(raw_path))
        if len(self._by_target) >= MAX_CACHED_TARGETS:
            self._by_target.clear()
        self._by_target[raw_path] = found
        return found

    def resolve(self, path: str) -> WsgiApp | CgiScript | None:
        """The WSGI app or CGI script for ``path``, or ``None`` when no script handler matches."""
        found = self._matcher.match(path)
        if found is None or found.handler.script is None:
            return None  # static handlers are served by the router
        if found.handler.is_cgi:
            return self._cgi(found.handler.script)
        return self._load(found.handler.script)

    def _cgi(self, script: str) -> CgiScript:
        with self._lock:
            found = self._scripts.get(script)
            if found is None:
                found = self._scripts[script] = CgiScript(os.path.join(self._app_dir, script))
            return found

    def _load(self, script: str) -> WsgiApp:
        with self._lock:
            app = self._apps.get(script)
            if app is None and script == appyaml.AUTO_SCRIPT and self._target is not None:
                app = self._apps[script] = entrypoint.load(self._target)
            elif app is None:
                module_name, _, attr = script.rpartition(".")
                module = importlib.import_module(module_name)
                app = getattr(module, attr)
                self._apps[script] = app
            return app


class _Parked:
    """An idle request thread's place: the lock it sleeps on (held, so acquiring it waits) and the request that
    wakes it."""

    __slots__ = ("lock", "state")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.state: _Request | None = None


class RequestThreads:
    """The threads that run app code: at most ``limit``, serving requests in the order they arrived.

    Each idle thread sleeps on a lock of its own, so handing over a request wakes exactly one thread, the one
    that went idle last (its memory is the likeliest to be in cache). A shared queue wakes more: CPython's
    ``SimpleQueue`` (which ``ThreadPoolExecutor`` uses) releases its one lock again after each ``get``, waking a
    second sleeping thread that finds nothing, takes the interpreter from the others and goes back to sleep — a
    wasted wake-up per request, measured at one connection. A thread that finishes its request takes the next one
    waiting without sleeping. Nothing is made per request (no future, no work item). Threads start when a request
    finds none idle, up to ``limit``, named for the sandbox (:data:`runtime.sandbox.APP_THREADS`). They are not
    daemons: a thread inherits its starter's daemon flag, and the threads a request starts must be joined before
    the request ends (:func:`kiln_platform.requestscope.serving` leaves daemon threads alone, as libraries start
    those to outlive requests), so request threads that were daemons made every app thread one, never joined.
    """

    def __init__(self, limit: int, work: Any) -> None:
        if limit < 1:
            raise ValueError(f"an instance needs at least one request thread, got {limit}")
        self.limit = limit
        self._work = work
        # Guards the fields below; held for a few operations at a time, never while a thread sleeps or runs app code.
        self._mutex = threading.Lock()
        self._waiting: collections.deque[_Request] = collections.deque()  # requests no thread has taken yet
        self._idle: list[_Parked] = []  # idle threads, the last one to go idle at the end
        self._waking = False  # a thread was handed a request and has not started running yet
        self._stopped = False
        self._threads: list[threading.Thread] = []

    def submit(self, state: _Request) -> None:
        """On the event loop's thread: queue a request; wake an idle thread for it unless one is waking already.

        Requests that arrive together wake their threads one after the other (each woken thread wakes the next,
        :meth:`_hand_next`), not all at once: threads woken together only take the interpreter from each other, each
        waiting in turn.
        """
        with self._mutex:
            if self._stopped:
                raise RuntimeError("the instance's request threads have stopped")
            self._waiting.append(state)
            wake = self._hand_next()
        if wake is not None:
            wake()

    def _hand_next(self) -> Callable[[], None] | None:
        """Under the mutex, unless a thread is waking already and while requests wait: hand the first to the thread
        that went idle last, or, with none idle, make a new thread (up to the limit). Returns what wakes that thread,
        to be called once the mutex is released.

        What this keeps true after every step under the mutex: a request waits only while a thread is waking (it
        will call this again) or while every thread the limit allows is busy (each takes the next when it ends).
        """
        if self._waking or not self._waiting:
            return None
        if self._idle:
            parked = self._idle.pop()
            parked.state = self._waiting.popleft()
            self._waking = True
            return parked.lock.release  # wakes that thread alone
        if len(self._threads) < self.limit:
            thread = threading.Thread(target=self._run, name=f"{sandbox.APP_THREADS}_{len(self._threads)}",
                                      daemon=False)  # see the class docstring
            self._threads.append(thread)
            self._waking = True
            return thread.start
        return None

    def _run(self) -> None:
        parked, work, mutex = _Parked(), self._work, self._mutex
        with mutex:  # started for a waiting request: take it, and let the next thread wake
            self._waking = False
            state = self._waiting.popleft() if self._waiting else None
            wake = self._hand_next()
        if wake is not None:
            wake()
        while True:
            if state is None:
                with mutex:
                    if self._stopped:
                        return
                    state = self._waiting.popleft() if self._waiting else None
                    if state is None:
                        self._idle.append(parked)
                if state is None:
                    parked.lock.acquire()  # until a request (or stop()) is handed to this thread
                    with mutex:
                        self._waking = False
                        state, parked.state = parked.state, None
                        wake = self._hand_next()  # more arrived meanwhile: the next thread wakes while this one runs
                    if wake is not None:
                        wake()
                    if state is None:
                        return  # stop()
            work(state)
            state = None

    def stop(self) -> None:
        """Take no more requests; each thread ends after its current one (requests still waiting are dropped)."""
        with self._mutex:
            self._stopped = True
            self._waiting.clear()
            idle, self._idle = self._idle, []
        for parked in idle:
            parked.lock.release()

    @property
    def threads(self) -> list[threading.Thread]:
        """The threads started so far."""
        return list(self._threads)


# Exit status of an instance that must be replaced (a handler ignored its deadline, or memory ran over).
EXIT_REPLACE = 75
# Past the memory limit times this, the instance stops at once (App Engine's hard limit), failing its requests.
HARD_MEMORY_FACTOR = isolation.HARD_MEMORY_FACTOR
MEMORY_CHECK_SECONDS = 0.1
# What one request may log (App Engine kept a request's app logs bounded too).
MAX_LOG_LINES = requestscope.MAX_LOG_LINES
MAX_LOG_LINE_CHARS = requestscope.MAX_LOG_LINE_CHARS
_LEVELS = {logging.DEBUG: logs_pb2.LOG_LEVEL_DEBUG, logging.INFO: logs_pb2.LOG_LEVEL_INFO,
           logging.WARNING: logs_pb2.LOG_LEVEL_WARNING, logging.ERROR: logs_pb2.LOG_LEVEL_ERROR,
           logging.CRITICAL: logs_pb2.LOG_LEVEL_CRITICAL, 0: logs_pb2.LOG_LEVEL_DEBUG}


_REQUEST_KEYS = itertools.count()  # _Request.key (next() of a count is one step: safe from any thread)


@dataclasses.dataclass(eq=False, slots=True)
class _Request:
    """One request from its arrival until it is answered; what the request timer needs to interrupt it."""

    msg: Msg | None  # None: the instance's own warmup request
    arrived: float  # time.monotonic() when it arrived
    req: http_pb2.HttpRequest | None = None
    done: asyncio.Future[http_pb2.HttpResponse] | None = None  # the warmup request's answer
    ident: int = 0  # the thread running it
    running: bool = False  # its app code may be running (read and written under Instance._running_lock)
    deadline: kiln_runtime._Deadline | None = None
    seconds: float = 0.0  # the length of its deadline
    environ: dict[str, Any] = dataclasses.field(default_factory=dict)  # its WSGI environ (read only if it overruns)
    answered: bool = False  # set on the event loop by the one answer it gets
    span: Any = None  # its span, when the instance traces (kiln_platform/tracing.py): made and ended on the loop
    traceparent: str | None = None  # that span's context, for the request's API calls (kiln.api._rpc)
    status: int = 0  # the status it was answered with (set only when it has a span)
    size: int = 0  # its envelope's size in bytes (what the instance holds: MAX_HELD_BYTES)
    # Its key in the instance's tables and the request timer: a number, not id(), which is an audit event that the
    # sandbox's hook examines (on request threads, and with a walk of the stack on the loop's).
    key: int = dataclasses.field(default_factory=_REQUEST_KEYS.__next__)


class Instance:
    """One running instance (see module docstring)."""

    def __init__(self, cfg: RuntimeConfig, app_config: appyaml.AppConfig) -> None:
        self.cfg = cfg
        self.app_config = app_config
        self.app_id = cfg.app_id or app_config.application or cfg.app_dir.resolve().name
        self.version_id = cfg.version_id or app_config.version or "v1"
        env_vars = dict(app_config.env_variables)
        self.info = InstanceInfo(
            app_id=self.app_id, version_id=self.version_id, minor_version=cfg.minor_version,
            instance_id=cfg.instance_id, auth_domain=cfg.auth_domain, default_hostname=cfg.default_hostname,
            dev=cfg.dev, env_variables=env_vars)
        limit = cfg.max_concurrent_requests or _app_concurrency(app_config)
        self._bodies: bus.BodyStore | None = None
        self._nc: Client | None = None
        self.subscriptions: list[Subscription] = []
        # Request threads run app code: the sandbox knows them by name, from the moment they start. At most
        # `limit` run at once; their queue holds the rest in the order they arrived.
        self._threads = RequestThreads(limit, self._work)
        self._loader = AppLoader(str(cfg.app_dir.resolve()), app_config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # the few requests that need the loop (large bodies)
        self._loaded = False
        self.served = 0
        self.latency_total = 0.0  # seconds from arrival to answer, summed over the requests served
        # The request timer: every running request's deadline (runtime.timer); the shortest is the configured one.
        self._timer: timer.RequestTimer[_Request] = timer.RequestTimer(cfg.request_deadline_seconds)
        self._running_lock = threading.Lock()  # a request's `running` flag and the timer's exception go together
        # Requests received in this turn of the loop, handed to the request threads at its end (see _dispatch).
        self._arriving: list[_Request] = []
        self._unreported: list[str] = []  # their reply subjects, not yet told to the instance manager
        # What request threads hand back to the loop (see _hand_back): (callback, its arguments), in order.
        self._handed_back: collections.deque[tuple[Any, tuple[Any, ...]]] = collections.deque()
        self._wake_scheduled = False  # a call of _take_handed_back is scheduled and has not started yet
        self._memory_check_due = False  # answers were handed back: check memory once they are published
        # Answers encoded by request threads, published by the loop in arrival order of the answers.
        self._outbox: collections.deque[tuple[Msg, bytes]] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._idle = asyncio.Event()  # set while every request received has been answered
        self._idle.set()
        self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)  # read after each request
        # Set when a handler ignored DeadlineExceededError or memory ran over: the instance must be replaced.
        self.doomed = asyncio.Event()
        self.memory_limit_mb = cfg.memory_limit_mb or isolation.instance_memory_mb(app_config)
        self.out_of_memory = False  # an allocation failed in the app (RLIMIT_AS): replace the instance
        self._waiting: dict[int, _Request] = {}  # requests not answered yet, to fail if the instance must stop
        self._held_bytes = 0  # their envelopes' sizes (changed only on the loop)
        self._queued: dict[int, float] = {}  # requests waiting for a free slot -> when they arrived
        self.inflight = inflight.Reporter(cfg.inflight_fd)  # the manager answers these if this process dies
        self.tracing: tracing.Tracing | None = None  # the instance's tracer (otlp_endpoint), set by serve(); None: off

    def export_environment(self) -> None:
        """Process-wide variables the app's SDK reads: service addresses and its identity token."""
        appengine.drop_cloud_datastore_switches()
        os.environ.update(appengine.process_variables(
            app_id=self.app_id, version_id=self.version_id, minor_version=self.cfg.minor_version,
            instance_id=self.cfg.instance_id, memory_mb=self.memory_limit_mb, config=self.app_config))
        os.environ.update(self.info.env_variables)
        os.environ.update({
            "AUTH_DOMAIN": self.cfg.auth_domain,
            "KILN_APP_TOKEN": self.cfg.app_token.get(),
            "KILN_DATASTORE_ADDR": self.cfg.datastore_addr,
            "KILN_MEMCACHE_ADDR": self.cfg.memcache_addr,
            "KILN_URLFETCH_ADDR": self.cfg.urlfetch_addr,
            "KILN_MAIL_ADDR": self.cfg.mail_addr,
            "KILN_IMAGES_ADDR": self.cfg.images_addr,
            "KILN_IDENTITY_ADDR": self.cfg.identity_addr,
            "KILN_TASKQUEUE_ADDR": self.cfg.taskqueue_addr,
            "KILN_BLOBSTORE_ADDR": self.cfg.blobstore_addr,
        })
        if self.cfg.modules_addr:  # else the SDK's modules service answers from this version alone (kiln dev)
            os.environ["KILN_MODULES_ADDR"] = self.cfg.modules_addr
        os.environ.pop("KILN_RUNTIME_APP_TOKEN", None)  # the SDK reads KILN_APP_TOKEN
        os.environ.update(_entrypoint_environment(self.app_config))
        # The app's code first, then its requirements, then the libraries it selected (App Engine's order).
        app_dirs = [self.cfg.app_dir.resolve()]
        target = self.app_config.wsgi_target  # the entrypoint's --pythonpath/--chdir come first, as its server does
        app_dirs[0:0] = [app_dirs[0] / p for p in (target.paths if target else ()) if p != "."]
        if self.cfg.requirements_path:
            app_dirs.append(pathlib.Path(self.cfg.requirements_path).resolve())
        library_dirs = [pathlib.Path(p).resolve() for p in self.cfg.library_path.split(os.pathsep) if p]
        sys.path[0:0] = [str(p) for p in [*app_dirs, *library_dirs] if str(p) not in sys.path]
        # From here on each request thread sees its own CGI variables in os.environ,
        # and app code runs under the sandbox's rules.
        requestscope.install([str(p) for p in [*app_dirs, *library_dirs]])
        requestscope.allow_background_threads(
            self.app_config.manual_scaling is not None or self.app_config.basic_scaling is not None)
        httpfetch.install()  # urllib and http.client go through URL Fetch, as on App Engine
        # Google's SDK, where the app has it: before the app's code, with kiln's proxy. Without the control plane's
        # address (kiln dev) its modules service describes the one version this instance runs.
        appengine.load_sdk(self.app_id, local=None if self.cfg.modules_addr else appengine.local_modules(
            self.version_id, self.app_config))
        sandbox.install(app_dirs, library_dirs,
                        [pathlib.Path(p) for p in self.cfg.private_dirs.split(os.pathsep) if p])

    async def warm_up(self) -> None:
        """App Engine's warmup request: ``GET /_ah/warmup`` before the instance takes traffic."""
        req = http_pb2.HttpRequest(request_id=uuid.uuid4().hex, app_id=self.app_id, version_id=self.version_id,
                                   method="GET", scheme="http", host=self.cfg.default_hostname.split(":")[0],
                                   path="/_ah/warmup", protocol="HTTP/1.1", remote_addr="0.1.0.3")
        req.headers.add(name="X-AppEngine-Request-Log-Id", value=req.request_id.encode())
        loop = self._bind_loop()
        state = _Request(None, time.monotonic(), req, done=loop.create_future())
        self._arrived(state)
        self._threads.submit(state)
        resp = await state.done  # type: ignore[misc]  # set just above
        log.info("warmup request answered %d", resp.status)

    def use_bus(self, nc: Client) -> None:
        """The NATS connection large bodies travel through (JetStream object store)."""
        self._bodies = bus.BodyStore(nc, self.app_id, create=False)
        self._nc = nc

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def on_message(self, msg: Msg) -> None:
        """Called where nats-py reads a request (:func:`kiln_platform.natsinline.subscribe_inline`): hand it to a
        request thread (no task, no wait: requests overlap)."""
        loop = self._bind_loop()
        if not self._arriving and not self._unreported:
            loop.call_soon(self._dispatch)  # after the other messages this turn of the loop delivers
        self._unreported.append(msg.reply)
        state = _Request(msg, time.monotonic(), size=len(msg.data))
        self._arrived(state)
        if len(self._waiting) > MAX_HELD_REQUESTS or self._held_bytes > MAX_HELD_BYTES:
            # What nats-py's slow-consumer limits bounded before the subscription handed requests over inline.
            log.warning("refusing a request: the instance holds %d requests (%d bytes) not yet answered",
                        len(self._waiting) - 1, self._held_bytes - state.size)
            self._answer_now(state, _error(503, "the instance holds too many requests", self.cfg.instance_id,
                                           public="Service Unavailable"))
            return
        try:
            state.req = http_pb2.HttpRequest.FromString(msg.data)
        except Exception:  # noqa: BLE001 - a malformed envelope must not kill the instance
            log.warning("dropping a malformed HttpRequest envelope (%d bytes)", len(msg.data))
            self._answer_now(state, _error(400, "malformed request envelope", self.cfg.instance_id))
            return
        req = state.req
        if req.app_id != self.app_id or req.version_id != self.version_id:
            # Addressed by instance id, but the host named another app or version.
            self._answer_now(state, _error(404, "this instance serves another app or version", self.cfg.instance_id,
                                           public="Not Found"))
            return
        if self.tracing is not None:
            state.span, state.traceparent = self.tracing.runtime_span(req.method, req.traceparent, self.app_id,
                                                                       self.version_id, self.cfg.instance_id,
                                                                       req.request_id)
        if req.body_object:  # the body is in the object store: fetch it first, on the loop
            self._spawn(self._fetch_body(state))
            return
        self._arriving.append(state)

    def _dispatch(self) -> None:
        """On the loop, once per turn that received requests: tell the manager of them (one write), then wake the
        request threads (a thread finishing its request takes the next one without sleeping).

        The threads are woken only now, when the loop has read every message of this turn and is about to wait for
        more: a thread woken earlier would compete with the loop for the interpreter and both would wait in turn.
        """
        self._report_arrivals()
        arriving, self._arriving = self._arriving, []
        for state in arriving:
            self._threads.submit(state)

    def _report_arrivals(self) -> None:
        """Tell the instance manager of the requests received (before any of their answers is reported)."""
        if self._unreported:
            replies, self._unreported = self._unreported, []
            self.inflight.started_all(replies)

    def _arrived(self, state: _Request) -> None:
        self._waiting[state.key] = state
        self._held_bytes += state.size
        self._queued[state.key] = state.arrived
        self._idle.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_body(self, state: _Request) -> None:
        assert self._bodies is not None and state.req is not None, "use_bus() not called"
        try:
            state.req.body = await self._bodies.take(state.req.body_object)
        except Exception:  # noqa: BLE001 - a lost body fails this request, not the instance
            log.exception("request body %s could not be fetched", state.req.body_object)
            self._answer_now(state, _error(500, "request body lost in transit", self.cfg.instance_id))
            return
        self._report_arrivals()
        self._threads.submit(state)

    def pending(self) -> tuple[int, float]:
        """Requests waiting for a free request thread, and how long (seconds) the longest has waited."""
        # A copy first: request threads remove their requests meanwhile (list() of a dict's values is one step).
        oldest = min(list(self._queued.values()), default=None)
        return len(self._queued), 0.0 if oldest is None else time.monotonic() - oldest

    @property
    def active(self) -> Collection[object]:
        """Requests received and not yet answered (queued or running)."""
        return self._waiting

    def _work(self, state: _Request) -> None:
        """On a request thread: run the request, encode its answer, hand it to the loop (the one hop back)."""
        self._queued.pop(state.key, None)
        assert state.req is not None
        try:
            resp = self._serve(state)
            if state.msg is not None and (self._bodies is None or self._bodies.fits_inline(len(resp.body))):
                self._hand_back(self._answer, (state, None, resp.SerializeToString(), True))
            else:  # the warmup request's answer, or a body for the object store: the loop finishes it
                self._hand_back(self._answer, (state, resp, b"", True))
        except BaseException:  # noqa: BLE001 - the request is answered whatever happened; the thread serves on
            log.exception("request %s failed in the runtime", state.req.request_id)
            resp = _error(500, "the runtime failed serving the request", self.cfg.instance_id)
            self._hand_back(self._answer_now, (state, resp))

    def _hand_back(self, callback: Any, args: tuple[Any, ...]) -> None:
        """On a request thread: have the loop run ``callback(*args)``. Answers finished while the loop is busy share
        one wake-up of the loop: the first schedules it, the others only join the queue it empties."""
        self._handed_back.append((callback, args))
        if not self._wake_scheduled:
            self._wake_scheduled = True
            loop = self._loop
            assert loop is not None
            loop.call_soon_threadsafe(self._take_handed_back)

    def _take_handed_back(self) -> None:
        """On the loop: run what request threads handed back, then check the instance's memory once for them all."""
        # Cleared before the queue is emptied: a thread that appends after this schedules another call, and one
        # that appended before finds its item taken below. No item waits for a wake-up that never comes.
        self._wake_scheduled = False
        handed_back = self._handed_back
        while handed_back:
            callback, args = handed_back.popleft()
            callback(*args)
        if self._outbox:
            self._memory_check_due = True  # after the answers are written (publish_answers): not in their way
        else:
            self._check_soft_memory()

    def _answer_now(self, state: _Request, resp: http_pb2.HttpResponse) -> None:
        """On the loop: answer a request that never reached a request thread (or that the timer gave up on)."""
        self._answer(state, None if state.msg is not None else resp, resp.SerializeToString(), False)

    def _answer(self, state: _Request, resp: http_pb2.HttpResponse | None, data: bytes, served: bool) -> None:
        """On the loop: the request's one answer (a later one, from a request thread the timer gave up on, is
        dropped). ``data`` is the encoded answer, or ``resp`` one still to finish."""
        if state.answered:
            return
        if resp is not None and state.msg is not None and state.req is not None:  # a body for the object store
            self._spawn(self._store_body(state, resp, served))
            return
        state.answered = True
        if served:
            self.served += 1
            self.latency_total += time.monotonic() - state.arrived
        if state.span is not None:
            self._end_span(state)
        self._waiting.pop(state.key, None)
        self._held_bytes -= state.size
        self._queued.pop(state.key, None)
        if state.msg is None:
            if state.done is not None and not state.done.done():
                state.done.set_result(resp if resp is not None else http_pb2.HttpResponse.FromString(data))
            self._settled()
        elif state.msg.reply:
            self._outbox.append((state.msg, data))
            self._outbox_ready.set()
        else:
            self._settled()

    def _end_span(self, state: _Request) -> None:
        """On the loop: end the request's span (answered with ``state.status``; 0: by the runtime, not the app)."""
        assert self.tracing is not None
        self.tracing.end_runtime_span(state.span, state.status)

    async def _store_body(self, state: _Request, resp: http_pb2.HttpResponse, served: bool) -> None:
        assert self._bodies is not None and state.req is not None
        try:
            resp.body_object = await self._bodies.put(f"resp-{state.req.request_id}", resp.body)
            resp.ClearField("body")
        except Exception:  # noqa: BLE001 - a body that cannot be stored fails this request, not the instance
            log.exception("response body of %s could not be stored", state.req.request_id)
            resp = _error(500, "response body lost in transit", self.cfg.instance_id)
        self._answer(state, None, resp.SerializeToString(), served)

    async def publish_answers(self) -> None:
        """Publish the answers request threads encoded, each as its request's NATS reply (runs for the instance's
        life; one task for all requests, woken once per batch)."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            answered: list[str] = []
            try:
                while self._outbox:
                    msg, data = self._outbox.popleft()
                    answered.append(msg.reply)
                    try:
                        await msg.respond(data)
                    except Exception:  # noqa: BLE001 - one lost reply must not stop the others
                        log.exception("could not answer request")
            finally:
                self._report_arrivals()  # a request answered at once is reported as received first
                self.inflight.finished_all(answered)  # one write for the batch
                self._settled()
            if self._memory_check_due:
                self._memory_check_due = False
                await asyncio.sleep(0)  # nats-py's flusher writes the answers first
                self._check_soft_memory()

    def _settled(self) -> None:
        if not self._waiting and not self._outbox:
            self._idle.set()

    def _check_soft_memory(self) -> None:
        """On the loop, after requests were answered (once for those answered together): past the soft limit, the
        instance is doomed."""
        if self.doomed.is_set():
            return
        if self.out_of_memory:
            self._doom((
                ("Exceeded hard memory limit of %d MB: an allocation was refused while handling this request; this "
                 "instance will be replaced."), isolation.hard_memory_mb(self.memory_limit_mb)))
            return
        used = self._rss_mb()
        if used > self.memory_limit_mb:
            self._doom((
                ("Exceeded soft memory limit of %d MB with %.0f MB after servicing %d requests total. After handling "
                 "this request, this instance was found to be using too much memory and will be replaced."),
                self.memory_limit_mb, used, self.served))

    def _doom(self, message: tuple[Any, ...]) -> None:
        if not self.doomed.is_set():
            log.critical(*message)
            self.doomed.set()

    def _rss_mb(self) -> float:
        """This process's resident memory, in MiB (the file kept open: one read, not an open and close)."""
        return self.rss_bytes() / (1024 * 1024)

    def rss_bytes(self) -> int:
        """This process's resident memory, in bytes."""
        return int(os.pread(self._statm, 64, 0).split()[1]) * _PAGE

    async def watch_memory(self) -> None:
        """Stop the instance at once when it passes its hard memory limit, failing the requests it holds."""
        hard = self.memory_limit_mb * HARD_MEMORY_FACTOR
        while True:
            await asyncio.sleep(MEMORY_CHECK_SECONDS)
            used = rss_mb()
            if used <= hard:
                continue
            log.critical("Exceeded hard memory limit of %.0f MB with %.0f MB while handling %d requests; this "
                         "instance stops now and will be replaced.", hard, used, len(self._waiting))
            for sub in self.subscriptions:  # no more requests; then answer every one received
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.flush(), 2)
            await asyncio.sleep(0)  # let messages already read reach on_message
            for state in list(self._waiting.values()):
                msg = state.msg
                if msg is not None and msg.reply and not state.answered:
                    state.answered = True
                    resp = _error(500, f"the instance exceeded its hard memory limit of {hard:.0f} MB",
                                  self.cfg.instance_id)
                    try:
                        await msg.respond(resp.SerializeToString())
                        self.inflight.finished(msg.reply)
                    except Exception:  # noqa: BLE001 - the instance is going anyway
                        log.exception("could not answer request")
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.flush(), 2)
            logging.shutdown()
            os._exit(EXIT_REPLACE)

    def _serve(self, state: _Request) -> http_pb2.HttpResponse:
        """On a request thread: the request's response, under the request timer."""
        req = state.req
        assert req is not None
        request_id_var.set(req.request_id)
        app_id_var.set(self.app_id)
        loading = not self._loaded
        if state.span is not None:  # the request's API calls continue its trace (kiln.api._rpc)
            _rpc.set_trace_parent(state.traceparent)
        try:
            resp = self._timed(state)
        except Exception:  # noqa: BLE001 - app errors become a 500, never a crash
            log.exception("unhandled exception serving %s %s", req.method, req.path)
            resp = _error(500, "app raised an exception", self.cfg.instance_id)
        finally:
            if state.span is not None:
                _rpc.set_trace_parent(None)
        if state.span is not None:
            state.status = resp.status
        self._loaded = True
        resp.instance_id = self.cfg.instance_id
        resp.loading_request = loading
        return resp

    def _deadline_seconds(self, task: bool) -> float:
        """The request timer's length: App Engine's 10 minutes for a push task (the router alone sets
        X-AppEngine-QueueName, on the task queue's signed requests), else the configured deadline."""
        if task:
            return max(self.cfg.request_deadline_seconds, TASK_REQUEST_DEADLINE_SECONDS)
        return self.cfg.request_deadline_seconds

    def _timed(self, state: _Request) -> http_pb2.HttpResponse:
        """Run the app with its deadline filed with the request timer (App Engine's DeadlineExceededError)."""
        req = state.req
        assert req is not None
        ident = state.ident = threading.get_ident()
        # Built before the timer starts (no app code runs in it): its pass over the headers also says whether this
        # is a push task, which decides the timer's length.
        environ, task = request_environ(req, self.info)
        state.seconds = self._deadline_seconds(task)
        try:
            with self._running_lock:
                state.running = True
                at = self._timer.start(state.key, state.seconds, state)
                state.deadline = kiln_runtime._Deadline(at, at + self.cfg.deadline_grace_seconds)
            return self._call(req, state, environ)
        except kiln_runtime.DeadlineExceededError:
            log.error("request %s did not handle DeadlineExceededError", req.request_id)
            return self._deadline_error(state)
        finally:
            with self._running_lock:
                state.running = False
                self._timer.stop(state.key, state.seconds)
                # An interruption not delivered yet must not land in the runtime's own code.
                _SET_ASYNC_EXC(ctypes.c_ulong(ident), None)

    async def watch_deadlines(self) -> None:
        """The request timer's one watcher (runtime.timer): interrupts the requests that pass their deadline."""
        while True:
            passed, wake = self._timer.due(time.monotonic())
            for state in passed:
                self._overran(state)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    def _overran(self, state: _Request) -> None:
        assert state.req is not None
        log.warning("request %s passed its %.1f s deadline: raising DeadlineExceededError in it",
                    state.req.request_id, state.seconds)
        self._interrupt(state)
        asyncio.get_running_loop().call_later(self.cfg.deadline_grace_seconds, self._past_grace, state)

    def _past_grace(self, state: _Request) -> None:
        if state.answered or state.req is None:
            return  # the handler answered within its grace
        log.error("request %s ignored DeadlineExceededError; this instance will be replaced", state.req.request_id)
        self.doomed.set()
        self._answer_now(state, self._deadline_error(state))

    def _interrupt(self, state: _Request) -> None:
        # The exception first, then the wake-up: a wait it wakes returns straight into the exception.
        with self._running_lock:
            if not state.running or state.deadline is None:
                return
            _SET_ASYNC_EXC(ctypes.c_ulong(state.ident), ctypes.py_object(kiln_runtime.DeadlineExceededError))
        # A copy of the request's string variables, taken only now that the request overran (not on every request).
        requestscope.deadline_passed(state.deadline,
                                     {k: v for k, v in dict(state.environ).items() if isinstance(v, str)})

    def _deadline_error(self, state: _Request) -> http_pb2.HttpResponse:
        resp = _error(500, f"request exceeded its {state.seconds:g} s deadline",
                      self.cfg.instance_id)
        resp.deadline_exceeded = True
        return resp

    def _call(self, req: http_pb2.HttpRequest, running: _Request, environ: dict[str, Any]) -> http_pb2.HttpResponse:
        app = self._loader.for_target(req.path)
        if app is None:
            return _error(404, "no handler matches this URL", self.cfg.instance_id, public="Not Found")
        cpu_start = time.thread_time()
        lines: list[requestscope.LogLine] = []
        try:
            # The SDK's API ticket lives as long as the request may (its grace included); the timer's hook
            # (runtime.appengine) cancels the request's calls in flight through it.
            assert running.deadline is not None
            with tickets.opened(self.app_id, environ, expires_at=running.deadline.hard_at):
                running.environ = environ
                with requestscope.serving(environ, lines, running.deadline,
                                          variables=string_variables(environ, self.info)):
                    resp = app(environ) if isinstance(app, CgiScript) else call_app(app, environ)
        except BadResponseHeaderError as exc:
            # The app's mistake, said once, plainly, where its owner reads (its request log) and in the instance's.
            lines.append((time.time(), logging.ERROR, f"{exc}; the client gets 500"))
            resp = _error(500, "the app's response had a header HTTP cannot carry", self.cfg.instance_id)
            log.error("%s %s: %s; answering 500", req.method, req.path, exc)
        except Exception as exc:
            # The app's traceback belongs in its request log as well as the instance's.
            lines.append((time.time(), logging.ERROR, "uncaught exception:\n" + traceback.format_exc()))
            resp = _error(500, "app raised an exception", self.cfg.instance_id)
            log.exception("unhandled exception serving %s %s", req.method, req.path)
            if isinstance(exc, MemoryError):  # the kernel refused memory past the instance's limit
                self.out_of_memory = True
        resp.cpu_micros = int((time.thread_time() - cpu_start) * 1_000_000)
        for created, level, message in lines[:MAX_LOG_LINES]:
            line = resp.app_logs.add(level=_LEVELS.get(level // 10 * 10, logs_pb2.LOG_LEVEL_CRITICAL),
                                     message=message[:MAX_LOG_LINE_CHARS])
            line.time.FromNanoseconds(int(created * 1e9))
        return resp

    async def finish(self, timeout: float) -> None:
        """Wait for in-flight requests to be answered."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        self._threads.stop()


def rss_mb() -> float:
    """This process's resident memory, in MiB."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE / (1024 * 1024)


_PAGE = os.sysconf("SC_PAGE_SIZE")


_error = inflight.error_response


def _entrypoint_environment(config: appyaml.AppConfig) -> dict[str, str]:
    """The variables a Python 3 app's entrypoint sets for its server (e.g. gunicorn's ``--env``); App Engine's own
    variables (``GAE_RUNTIME``, ``PORT``…) come from :mod:`runtime.appengine`."""
    return dict(config.wsgi_target.env) if config.wsgi_target is not None else {}


def _app_concurrency(config: appyaml.AppConfig) -> int:
    if not config.threadsafe:
        return 1
    scaling = config.automatic_scaling
    if scaling is not None and scaling.max_concurrent_requests:
        return int(scaling.max_concurrent_requests)
    return DEFAULT_MAX_CONCURRENT


async def _heartbeats(nc: Client, instance: Instance, period: float) -> None:
    """Report this instance's load to the instance manager, every ``period`` seconds."""
    started = time.time()
    subject = bus.heartbeat_subject(instance.app_id, instance.version_id)
    while True:
        pending, waited = instance.pending()
        beat = events_pb2.InstanceHeartbeat(instance_id=instance.cfg.instance_id, app_id=instance.app_id,
                                            version_id=instance.version_id,
                                            deployment_id=f"{instance.version_id}.{instance.cfg.minor_version}",
                                            active_requests=len(instance.active),
                                            requests_served=instance.served, pending_requests=pending,
                                            pending_latency_ms=int(waited * 1000),
                                            memory_bytes=instance.rss_bytes(),
                                            average_latency_ms=(1000 * instance.latency_total / instance.served
                                                                if instance.served else 0.0))
        beat.started_at.FromNanoseconds(int(started * 1e9))
        beat.sent_at.GetCurrentTime()
        try:
            await nc.publish(subject, beat.SerializeToString())
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat is not an instance failure
            log.debug("heartbeat not sent: %s", exc)
        await asyncio.sleep(period)


def loopback_nats_url(url: str, port: int) -> str:
    """``url``'s first server's credentials, on the loopback ``port``."""
    first = next(iter(bus.servers(url)), None)
    credentials = first.netloc.rpartition("@")[0] if first is not None else ""
    return f"nats://{credentials + '@' if credentials else ''}127.0.0.1:{port}"


async def subscribe_requests(nc: Client, instance: Instance) -> list[Subscription]:
    """Subscribe ``instance`` to its version's requests (queue group :data:`kiln_platform.bus.RUNTIME_QUEUE`: each
    goes to one instance) and to those addressed to it alone. Requests are handed over where nats-py reads them
    (:mod:`kiln_platform.natsinline`: no subscription queue, task or coroutine per request); draining the
    subscriptions still hands over every request the server sent before it stopped sending."""
    return [
        await natsinline.subscribe_inline(nc, bus.http_subject(instance.app_id, instance.version_id),
                                          instance.on_message, queue=bus.RUNTIME_QUEUE),
        await natsinline.subscribe_inline(nc, bus.instance_subject(instance.app_id, instance.cfg.instance_id),
                                          instance.on_message),
    ]


# How long a stopping instance waits to send memcache the deletes it owes (a shard rests 5 s after a failure).
MEMCACHE_SETTLE_SECONDS = 6.0


async def settle_memcache(seconds: float) -> None:
    """Send memcache the deletes of writes whose outcome this instance does not know (:mod:`kiln.api.memcache`):
    they would go with the process, and another instance could then keep reading the values they meant to
    remove. Nothing to do for an app that never imported memcache."""
    memcache = sys.modules.get("kiln.api.memcache")
    if memcache is not None and not await asyncio.to_thread(memcache.settle, seconds):
        log.warning("stopping with memcache deletes unsent: their shards did not answer within %g s", seconds)


async def serve(cfg: RuntimeConfig) -> None:
    """Load the app, subscribe, serve until SIGTERM, then drain."""
    app_config = appyaml.load(cfg.app_dir / "app.yaml")
    # Request threads and the event loop trade the GIL often: with the default
    # 5 ms switch interval the loop waits behind a busy request thread, which
    # halved throughput in measurements; 0.5 ms keeps the loop responsive.
    sys.setswitchinterval(0.0005)
    instance = Instance(cfg, app_config)
    otlp_relay = None  # no network but loopback: spans through the manager's socket (kiln_platform.forward)
    otlp_endpoint = cfg.otlp_endpoint
    if cfg.otlp_socket and otlp_endpoint:
        otlp_relay = await forward.tcp_to_unix(pathlib.Path(cfg.otlp_socket))
        otlp_endpoint = tracing.on_loopback(otlp_endpoint, otlp_relay.sockets[0].getsockname()[1])
    # The instance writes the ready file itself, once subscribed, not the health server. Started before
    # export_environment routes http.client through URL Fetch: the span exporter's HTTP client (urllib3, imported
    # here when tracing is on) keeps the socket-opening http.client classes it subclassed, and its exporting thread
    # runs before app code can.
    health = await grpcserver.start(dataclasses.replace(cfg, ready_file=None, otlp_endpoint=otlp_endpoint), [])
    instance.tracing = health.tracing
    instance.export_environment()
    nats_url, relay = cfg.nats_url, None
    if cfg.nats_socket:  # no network but loopback: NATS through the manager's socket (kiln_platform.forward)
        relay = await forward.tcp_to_unix(pathlib.Path(cfg.nats_socket))
        nats_url = loopback_nats_url(cfg.nats_url, relay.sockets[0].getsockname()[1])
    nc = await bus.connect(nats_url, name=f"runtime-{cfg.instance_id}",
                           inbox_prefix=bus.app_inbox_prefix(instance.app_id))
    instance.use_bus(nc)
    # Last step before app code can run (its module is imported by the first request, warmup included).
    isolation.confine_syscalls(allow_missing=cfg.allow_missing_syscall_filter)
    deadlines = asyncio.create_task(instance.watch_deadlines())
    answers = asyncio.create_task(instance.publish_answers())
    if "warmup" in app_config.inbound_services:
        await instance.warm_up()
    sub, direct = instance.subscriptions = await subscribe_requests(nc, instance)
    await nc.flush()
    log.info("instance %s serving %s/%s", cfg.instance_id, instance.app_id, instance.version_id)
    if cfg.ready_file:
        grpcserver.write_ready_file(cfg.ready_file, health.address)
    beats = asyncio.create_task(_heartbeats(nc, instance, cfg.heartbeat_seconds))
    memory = asyncio.create_task(instance.watch_memory())
    signal_task = asyncio.create_task(grpcserver.wait_for_signal())
    doomed_task = asyncio.create_task(instance.doomed.wait())
    await asyncio.wait([signal_task, doomed_task], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping: draining requests")
    beats.cancel()
    memory.cancel()
    await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves Subscription.drain unannotated
    await direct.drain()  # type: ignore[no-untyped-call]
    await instance.finish(cfg.grace_seconds)
    await settle_memcache(MEMCACHE_SETTLE_SECONDS)
    deadlines.cancel()
    answers.cancel()
    await bus.shutdown(nc)
    if relay is not None:
        relay.close()
    await health.stop(0)
    if otlp_relay is not None:
        otlp_relay.close()
    log.info("stopped after %d requests", instance.served)
    if instance.doomed.is_set():
        # A request thread is stuck in the app: it cannot be stopped from Python, so
        # leave without waiting for it; whoever runs instances starts a fresh one.
        logging.shutdown()
        os._exit(EXIT_REPLACE)

