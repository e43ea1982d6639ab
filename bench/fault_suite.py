"""Fault suite: kill -9 each kiln process in turn while a workload runs, restart it, and check nothing acknowledged
was lost.

On loopback, it starts a whole kiln stack for one small app: ``nats-server`` with JetStream, datastore_svc (the
embedded engine, or Cassandra with ``--storage cassandra``), memcache_svc, logs_svc, urlfetch_svc, mail_svc
delivering to a real SMTP server (aiosmtpd) on loopback, the router and an instance manager with one instance.
Client threads send a bounded mix of requests through the router:

- ``/put?id=N``   stores entity ``Fault:N`` and answers 200 only after the datastore acknowledged the put;
- ``/mail?id=N``  sends a mail with subject ``fault N`` and answers 200 only after mail_svc accepted it;
- ``/get?id=N``   reads back an entity whose put was acknowledged earlier (404 if it is missing);
- ``/cache``      sets and gets a memcache value; ``/fetch`` fetches a page from a loopback HTTP server.

Then, for each fault in turn: once the workload is under way it sends SIGKILL to one part (datastore_svc,
memcache_svc, mail_svc, logs_svc, urlfetch_svc, the router, the app's runtime instance, the instance manager,
nats-server), lets the workload meet the outage, restarts the part on the same port and data directory (the
instance manager replaces a killed instance itself), and waits until every kind of request succeeds again (the
time to recover). At the end it reads every acknowledged entity straight from datastore_svc, waits for every
acknowledged mail at the SMTP server and for every served request's log at logs_svc. Per fault it reports
requests sent, served (200), failed, acknowledged writes (puts and mails), lost (acknowledged but absent: must
be 0), mails delivered twice, served requests without a request log, and the times until the part was back and
until every kind of request succeeded again.
Failures while a part is down are expected; a lost acknowledged write is a bug. Exits 1 when anything was lost.

Usage::

    .venv/bin/python bench/fault_suite.py [--clients 4] [--warm 20] [--outage 10] [--after 20]
        [--faults datastore_svc,nats-server,...] [--storage cassandra --cassandra-hosts HOST:PORT]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import http.client
import http.server
import itertools
import json
import os
import pathlib
import random
import re
import secrets
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from kiln_platform import auth, cassandra, natsauth  # noqa: E402
from kiln.pb.datastore.v1 import datastore_pb2, datastore_pb2_grpc  # noqa: E402
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc  # noqa: E402
from kiln_platform.supervisor import Child, Supervisor, free_port, nats_server_binary, python_module  # noqa: E402
from tests.integration.smtpservers import Relay  # noqa: E402

APP_ID = "faultapp"
KIND = "Fault"
SENDER = f"robot@{APP_ID}.mail.localhost"
RECIPIENT = "friend@example.org"
SUBJECT = re.compile(r"^fault (\d+)$")
CASSANDRA_SCRIPT = ROOT / "deploy" / "cassandra.sh"
FAULTS = ("datastore_svc", "memcache_svc", "mail_svc", "logs_svc", "urlfetch_svc", "router", "instance", "manager",
          "nats-server")
KINDS = ("put", "get", "mail", "cache", "fetch")
# How often each kind of request is sent (writes dominate: they are what the suite checks).
FAILURE_PAUSE_SECONDS = 0.05
MAIL_WORKERS = 2
WEIGHTS = {"put": 5, "get": 2, "mail": 2, "cache": 1, "fetch": 1}

APP_YAML = f"""\
application: {APP_ID}
runtime: python27
api_version: 1
threadsafe: true
handlers:
- url: /.*
  script: main.app
"""

# The app: each write answers 200 only once the service call that makes it durable has returned.
APP_MAIN = """\
import urllib.parse

from kiln.api import datastore, mail, memcache, urlfetch


def reply(start_response, status, text):
    start_response(status, [("Content-Type", "text/plain")])
    return [text.encode()]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    ident = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("id", [""])[0]
    if path == "/put":
        entity = datastore.Entity("Fault", name=ident)
        entity["n"] = int(ident)
        datastore.Put(entity)
        return reply(start_response, "200 OK", "put " + ident)
    if path == "/get":
        try:
            entity = datastore.Get(datastore.Key.from_path("Fault", ident))
        except datastore.EntityNotFoundError:
            return reply(start_response, "404 Not Found", "missing " + ident)
        return reply(start_response, "200 OK", "got %d" % entity["n"])
    if path == "/mail":
        mail.send_mail(sender="SENDER", to="RECIPIENT", subject="fault " + ident, body="message " + ident)
        return reply(start_response, "200 OK", "mail " + ident)
    if path == "/cache":
        if not memcache.set("k" + ident, ident) or memcache.get("k" + ident) != ident:
            return reply(start_response, "503 Service Unavailable", "cache missed")
        return reply(start_response, "200 OK", "cache " + ident)
    if path == "/fetch":
        result = urlfetch.fetch(environ["HTTP_X_FETCH_URL"], deadline=5)
        if result.status_code != 200 or result.content != b"pong":
            return reply(start_response, "502 Bad Gateway", "fetch got %d" % result.status_code)
        return reply(start_response, "200 OK", "fetch " + ident)
    return reply(start_response, "404 Not Found", "no such path")
""".replace("SENDER", SENDER).replace("RECIPIENT", RECIPIENT)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """How big the run is and where it stores data."""

    clients: int = 4
    warm: int = 20  # requests of a phase before the kill
    outage: int = 10  # requests sent after the kill before the part is restarted (or the outage deadline passes)
    outage_seconds: float = 3.0  # the longest a part stays down while the workload runs
    after: int = 20  # requests after the system serves again, before the next fault
    recover_seconds: float = 90.0  # a part that does not serve again within this is a failure of the suite
    mail_seconds: float = 60.0  # how long acknowledged mail may take to reach the SMTP server at the end
    logs_seconds: float = 20.0  # how long request logs may take to reach logs_svc at the end
    faults: tuple[str, ...] = FAULTS
    storage: str = "embedded"
    cassandra_hosts: str = ""
    work_dir: pathlib.Path | None = None
    seed: int | None = None


@dataclasses.dataclass
class Outcome:
    """One request: what was asked, and whether (and how) it was answered."""

    kind: str
    ident: int
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    body: str
    sent_at: float  # time.monotonic() when the request was sent

    @property
    def served(self) -> bool:
        return self.status == 200

    @property
    def acknowledged(self) -> bool:
        """A write the app reported done: 200 with the body only the completed call produces."""
        return self.served and self.kind in ("put", "mail") and self.body == f"{self.kind} {self.ident}"


@dataclasses.dataclass
class Phase:
    """The figures of one fault."""

    fault: str
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)
    recovery_seconds: float = 0.0  # from the kill until every kind of request had succeeded again
    restart_seconds: float = 0.0  # from the kill until the part was back and ready (or its replacement asked for)
    restarted_at: float = 0.0  # time.monotonic() when the killed part was back and ready
    recovered_at: float = 0.0  # time.monotonic() when the system had served every kind of request again
    lost_puts: list[int] = dataclasses.field(default_factory=list)
    lost_mails: list[int] = dataclasses.field(default_factory=list)
    missing_reads: list[int] = dataclasses.field(default_factory=list)  # a /get of an acknowledged put said 404
    duplicated_mails: list[int] = dataclasses.field(default_factory=list)
    unlogged: int = 0  # served requests without a request log at logs_svc (reported, not counted as lost)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def served(self) -> int:
        return sum(o.served for o in self.outcomes)

    @property
    def failed(self) -> int:
        return self.sent - self.served

    @property
    def after_restart(self) -> list[Outcome]:
        """The requests sent once the killed part was back (or, for an instance, its replacement was asked for)."""
        return [o for o in self.outcomes if o.sent_at >= self.restarted_at]

    @property
    def after_recovery(self) -> list[Outcome]:
        """The requests sent once the system served every kind of request again."""
        return [o for o in self.outcomes if o.sent_at >= self.recovered_at]

    def acknowledged(self, kind: str) -> list[int]:
        return [o.ident for o in self.outcomes if o.kind == kind and o.acknowledged]

    @property
    def lost(self) -> int:
        return len(self.lost_puts) + len(self.lost_mails) + len(self.missing_reads)

    def row(self) -> str:
        return (f"{self.fault:<14}{self.sent:>6}{self.served:>8}{self.failed:>8}{len(self.acknowledged('put')):>8}"
                f"{len(self.acknowledged('mail')):>8}{self.lost:>6}{len(self.duplicated_mails):>6}"
                f"{self.unlogged:>8}{self.restart_seconds:>10.2f}{self.recovery_seconds:>10.2f}")

    def as_dict(self) -> dict[str, object]:
        return {"fault": self.fault, "sent": self.sent, "served": self.served, "failed": self.failed,
                "acknowledged_puts": len(self.acknowledged("put")),
                "acknowledged_mails": len(self.acknowledged("mail")),
                "lost": self.lost, "lost_puts": self.lost_puts, "lost_mails": self.lost_mails,
                "missing_reads": self.missing_reads, "duplicated_mails": self.duplicated_mails,
                "served_without_request_log": self.unlogged,
                "restart_seconds": round(self.restart_seconds, 3),
                "recovery_seconds": round(self.recovery_seconds, 3),
                "served_after_recovery": sum(o.served for o in self.after_recovery),
                "failed_after_recovery": sum(not o.served for o in self.after_recovery)}


HEADER = (f"{'fault':<14}{'sent':>6}{'served':>8}{'failed':>8}{'puts':>8}{'mails':>8}{'lost':>6}{'dup':>6}"
          f"{'no log':>8}{'back s':>10}{'recover s':>10}")


@dataclasses.dataclass
class Report:
    """Every phase's figures (the first phase, ``none``, is the workload before any fault)."""

    phases: list[Phase]

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.phases)

    def table(self) -> str:
        total = Phase("total", [o for p in self.phases for o in p.outcomes])
        total.lost_puts = [i for p in self.phases for i in p.lost_puts]
        total.lost_mails = [i for p in self.phases for i in p.lost_mails]
        total.missing_reads = [i for p in self.phases for i in p.missing_reads]
        total.duplicated_mails = [i for p in self.phases for i in p.duplicated_mails]
        total.unlogged = sum(p.unlogged for p in self.phases)
        total.recovery_seconds = max((p.recovery_seconds for p in self.phases), default=0.0)
        total.restart_seconds = max((p.restart_seconds for p in self.phases), default=0.0)
        lines = [HEADER, *(p.row() for p in self.phases), total.row()]
        return "\n".join(lines)


class SuiteError(Exception):
    """The stack could not be started, or a part did not serve again within its deadline."""


# --- the stack ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Part:
    """One process of the stack and how to start it again exactly as before (same port, same data)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_file: pathlib.Path | None = None
    ready_port: int | None = None
    timeout: float = 60.0
    child: Child | None = None


class Stack:
    """The kiln processes of the suite, started as children of one :class:`Supervisor`."""

    def __init__(self, work: pathlib.Path, opts: Options, relay_address: str, fetch_url: str) -> None:
        self.work = work
        self.opts = opts
        self.relay_address = relay_address
        self.fetch_url = fetch_url
        self.run = work / "run"
        self.supervisor = Supervisor(self.run)
        self.parts: dict[str, Part] = {}
        self.secret = secrets.token_hex(32)
        self.app_dir = work / "app"
        self.keyspace = "kiln_faults_" + secrets.token_hex(4)
        self.router_url = ""

    # starting ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.app_dir.mkdir(parents=True, exist_ok=True)
        (self.app_dir / "app.yaml").write_text(APP_YAML)
        (self.app_dir / "main.py").write_text(APP_MAIN)
        run, data = self.run, self.work / "data"
        platform_password, app_secret = secrets.token_hex(24), secrets.token_hex(32)
        conf = run / "nats.conf"
        conf.touch(mode=0o600)
        conf.write_text(json.dumps(natsauth.server_config(platform_password, app_secret, [APP_ID]), indent=1))
        nats_port = free_port()
        self._start(Part("nats-server", [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p",
                                         str(nats_port), "-js", "-sd", str(data / "nats")],
                         dict(os.environ), ready_port=nats_port))
        nats_url = natsauth.with_credentials(f"nats://127.0.0.1:{nats_port}", natsauth.PLATFORM_USER,
                                             platform_password)
        env = {**os.environ, **{f"KILN_{svc}_SERVICE_SECRET": self.secret
                                for svc in ("DATASTORE", "MEMCACHE", "URLFETCH", "MAIL", "LOGS", "MANAGER")}}
        inbound, platform = secrets.token_hex(32), secrets.token_hex(32)
        storage = ["--storage", self.opts.storage, "--data-dir", str(data / "datastore")]
        if self.opts.storage == "cassandra":
            storage += ["--cassandra-hosts", self.opts.cassandra_hosts, "--cassandra-keyspace", self.keyspace]
        services = {
            "datastore_svc": (storage, env),
            "memcache_svc": ([], env),
            "logs_svc": (["--data-dir", str(data / "logs")], {**env, "KILN_LOGS_NATS_URL": nats_url}),
            "urlfetch_svc": (["--allow-internal", f"{APP_ID}=127.0.0.1/32"],
                             {**env, "KILN_URLFETCH_INBOUND_SECRET": inbound}),
            # Short waits, so that a mail in hand when mail_svc dies is handed out again within the run; but not
            # shorter than a worker's stalls on two loaded cores (a claim not refreshed for ack_wait is taken over,
            # and with 3 s a mail was sent twice while memcache restarted; production's default is 120 s).
            "mail_svc": (["--relay", self.relay_address, "--relay-security", "none", "--ack-wait-seconds", "10",
                          "--retry-min-seconds", "0.5", "--retry-max-seconds", "2", "--workers", str(MAIL_WORKERS)],
                         {**env, "KILN_MAIL_NATS_URL": nats_url, "KILN_MAIL_PLATFORM_SECRET": platform}),
        }
        pending = [self._spawn(Part(name, python_module(name, "--listen", "127.0.0.1:0", "--ready-file",
                                                        str(run / f"{name}.addr"), *args),
                                    part_env, ready_file=run / f"{name}.addr",
                                    timeout=180.0 if name == "datastore_svc" else 60.0))
                   for name, (args, part_env) in services.items()]
        for part in pending:
            self._wait(part)
        self._start(Part("router", python_module(
            "router", "--listen", "127.0.0.1:0", "--dev-app", f"{APP_ID}=v1",
            "--app-dirs", f"{APP_ID}/v1={self.app_dir}", "--request-timeout-seconds", "15",
            "--ready-file", str(run / "router.addr")),
            {**env, "KILN_ROUTER_SESSION_SECRET": secrets.token_hex(32), "KILN_ROUTER_INBOUND_SECRET": inbound,
             "KILN_ROUTER_PLATFORM_SECRET": platform, "KILN_ROUTER_NATS_URL": nats_url},
            ready_file=run / "router.addr"))
        router = self.address("router")
        self.router_url = f"http://{router}"
        runtime_args = ["--dev", "--listen", "127.0.0.1:0", "--request-deadline-seconds", "10",
                        "--default-hostname", f"localhost:{router.rpartition(':')[2]}"]
        for svc in ("datastore", "memcache", "urlfetch", "mail"):
            runtime_args += [f"--{svc}-addr", self.address(f"{svc}_svc")]
        self._start(Part("manager", python_module(
            "runtime.manager", "--app-dir", str(self.app_dir), "--app-id", APP_ID, "--version-id", "v1",
            "--run-dir", str(self.instances_dir), "--isolation", "none", "--min-instances", "1",
            "--max-instances", "1", "--ready-file", str(run / "manager.ready"), "--", *runtime_args),
            {**env, "KILN_MANAGER_NATS_URL": nats_url, "KILN_MANAGER_NATS_APP_SECRET": app_secret},
            ready_file=run / "manager.ready", timeout=120.0))

    @property
    def instances_dir(self) -> pathlib.Path:
        return self.run / "instances"

    def address(self, name: str) -> str:
        child = self.parts[name].child
        assert child is not None
        return child.address

    def _spawn(self, part: Part) -> Part:
        old = part.child
        part.child = self.supervisor.spawn(part.name, part.argv, env=part.env, ready_file=part.ready_file)
        if old is not None:
            # The new process takes the old one's place, so that stopping goes in the order of the first start
            # (nats-server last) however often parts were restarted.
            children = self.supervisor.children
            children.remove(part.child)
            children[children.index(old)] = part.child
        self.parts[part.name] = part
        return part

    def _wait(self, part: Part) -> None:
        assert part.child is not None
        Supervisor.wait_ready(part.child, ready_file=part.ready_file, ready_port=part.ready_port,
                              timeout=part.timeout)
        # A restart binds the address the first start was given by the kernel, so every client still finds it.
        # (Only the part's own --listen: the manager's options after "--" are its instances'.)
        own = part.argv.index("--") if "--" in part.argv else len(part.argv)
        if "--listen" in part.argv[:own]:
            part.argv[part.argv.index("--listen") + 1] = part.child.address

    def _start(self, part: Part) -> None:
        self._wait(self._spawn(part))

    # faults -----------------------------------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL one part (``instance``: the app's runtime instance)."""
        if name == "instance":
            pids = self.instance_pids()
            if not pids:
                raise SuiteError("no runtime instance is running to kill")
            os.kill(pids[0], signal.SIGKILL)
            return
        child = self.parts[name].child
        assert child is not None
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait()

    def restart(self, name: str) -> None:
        """Start a killed part again (a killed instance is replaced by its manager, not by the suite)."""
        if name != "instance":
            self._start(self.parts[name])

    def instance_pids(self) -> list[int]:
        try:
            state = json.loads((self.instances_dir / "instances.json").read_text())
        except (OSError, ValueError):
            return []
        return [int(i["pid"]) for i in state if i["ready"]]

    def dead(self) -> list[str]:
        """Parts that exited on their own (not killed by the suite and not yet restarted)."""
        return [p.name for p in self.parts.values() if p.child is not None and p.child.proc.poll() is not None]

    def logged(self) -> set[str]:
        """The resources (path and query) of every request log logs_svc holds for the app."""
        token = auth.mint_app_token(self.secret, APP_ID)
        found: set[str] = set()
        with grpc.insecure_channel(self.address("logs_svc")) as channel:
            stub = logs_pb2_grpc.LogsServiceStub(channel)
            page = ""
            while True:
                response = stub.Query(logs_pb2.QueryRequest(page_size=1000, page_token=page), timeout=60,
                                      metadata=(("authorization", f"Bearer {token}"),))
                found.update(record.resource for record in response.logs)
                page = response.next_page_token
                if not page:
                    return found

    def stop(self) -> None:
        self.supervisor.stop_all()
        if self.opts.storage == "cassandra":
            self._drop_keyspace()

    def _drop_keyspace(self) -> None:
        cassandra.drop_keyspace(self.opts.cassandra_hosts, self.keyspace, setting="--cassandra-hosts")

    # checking ---------------------------------------------------------------------------------------------------
    def stored(self, idents: Sequence[int]) -> set[int]:
        """The idents among ``idents`` whose entity datastore_svc holds, read directly over gRPC."""
        token = auth.mint_app_token(self.secret, APP_ID)
        found: set[int] = set()
        with grpc.insecure_channel(self.address("datastore_svc")) as channel:
            stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
            for start in range(0, len(idents), 500):
                batch = idents[start:start + 500]
                request = datastore_pb2.GetRequest()
                for ident in batch:
                    key = request.keys.add()
                    key.partition_id.app_id = APP_ID
                    key.path.add(kind=KIND, name=str(ident))
                response = stub.Get(request, timeout=60, metadata=(("authorization", f"Bearer {token}"),))
                found.update(ident for ident, result in zip(batch, response.results, strict=True)
                             if result.HasField("entity"))
        return found


# --- the workload ---------------------------------------------------------------------------------------------


class PongHandler(http.server.BaseHTTPRequestHandler):
    """What the app's URL Fetch requests reach."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"pong")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass


class PongServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class Workload:
    """Client threads sending the request mix through the router, recording every outcome in the current phase."""

    def __init__(self, router_url: str, fetch_url: str, clients: int, seed: int | None) -> None:
        parsed = urllib.parse.urlsplit(router_url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.fetch_url = fetch_url
        self.clients = clients
        self.rng = random.Random(seed)
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.phase = Phase("none")
        self.acked_puts: list[int] = []
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def request(self, kind: str) -> Outcome:
        """Send one request of ``kind`` and record its outcome in the current phase."""
        with self.lock:
            if kind == "get" and not self.acked_puts:
                kind = "put"  # nothing to read back yet
            ident = self.rng.choice(self.acked_puts) if kind == "get" else next(self.ids)
            phase = self.phase
        sent_at = time.monotonic()
        status, body = self._send(f"/{kind}?id={ident}")
        outcome = Outcome(kind, ident, status, body, sent_at)
        with self.lock:
            phase.outcomes.append(outcome)
            if outcome.acknowledged and kind == "put":
                self.acked_puts.append(ident)
        return outcome

    def _send(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Host": f"{APP_ID}.localhost", "X-Fetch-Url": self.fetch_url})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            return 0, f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    def _loop(self) -> None:
        kinds = [k for k, weight in WEIGHTS.items() for _ in range(weight)]
        while not self.stopping.is_set():
            with self.lock:
                kind = self.rng.choice(kinds)
            if not self.request(kind).served:
                # As a real client would, pause before trying again, so a part that is down is not hammered
                # with thousands of refused connections a second.
                self.stopping.wait(FAILURE_PAUSE_SECONDS)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._loop, name=f"client-{i}", daemon=True)
                        for i in range(self.clients)]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def begin(self, fault: str) -> Phase:
        with self.lock:
            self.phase = Phase(fault)
            return self.phase

    def answered_since(self, since: float) -> int:
        """Requests of the current phase sent at or after ``since`` (monotonic) that have their outcome."""
        with self.lock:
            return sum(o.sent_at >= since for o in self.phase.outcomes)

    def wait_answered(self, since: float, count: int, seconds: float) -> bool:
        """Wait until ``count`` requests sent since ``since`` have their outcome; False if ``seconds`` passed."""
        return wait_until(lambda: self.answered_since(since) >= count, seconds)


def wait_until(predicate: Callable[[], bool], seconds: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --- the suite ------------------------------------------------------------------------------------------------


def _recover(stack: Stack, workload: Workload, fault: str, seconds: float) -> None:
    """Wait until a request of each kind has succeeded since the restart (sent by this thread, one kind after
    the other, beside the workload's)."""
    deadline = time.monotonic() + seconds
    pending = list(KINDS)
    while pending:
        if time.monotonic() > deadline:
            raise SuiteError(f"after the {fault} fault, {pending[0]} requests were still failing after {seconds:.0f}s; "
                             f"parts exited: {stack.dead() or 'none'}")
        if pending[0] == "get" and not workload.acked_puts:
            pending.pop(0)
            continue
        outcome = workload.request(pending[0])
        if outcome.served:
            pending.pop(0)
        else:
            time.sleep(FAILURE_PAUSE_SECONDS)


def _inject(stack: Stack, workload: Workload, fault: str, opts: Options) -> Phase:
    """One fault: warm up, kill, let the workload meet the outage, restart, wait until all serves again."""
    phase = workload.begin(fault)
    workload.wait_answered(0.0, opts.warm, 120.0)
    killed_at = time.monotonic()
    stack.kill(fault)
    # The part stays down until the workload has met the outage (or for at most outage_seconds).
    workload.wait_answered(killed_at, opts.outage, opts.outage_seconds)
    stack.restart(fault)
    phase.restarted_at = time.monotonic()
    phase.restart_seconds = phase.restarted_at - killed_at
    _recover(stack, workload, fault, opts.recover_seconds)
    phase.recovered_at = time.monotonic()
    phase.recovery_seconds = phase.recovered_at - killed_at
    workload.wait_answered(phase.recovered_at, opts.after, 120.0)
    return phase


def _check(stack: Stack, relay: Relay, phases: list[Phase], mail_seconds: float, logs_seconds: float) -> None:
    """Fill in each phase's lost and duplicated writes and its requests without a log."""
    puts = [i for p in phases for i in p.acknowledged("put")]
    stored = stack.stored(puts)
    mails = {i for p in phases for i in p.acknowledged("mail")}

    def received() -> collections.Counter[int]:
        counts: collections.Counter[int] = collections.Counter()
        for message in list(relay.received):
            match = SUBJECT.match(str(message.message["Subject"]))
            if match:
                counts[int(match.group(1))] += 1
        return counts

    wait_until(lambda: mails <= set(received()), mail_seconds, interval=0.1)
    counts = received()
    # Request logs: each served request with an id of its own (reads repeat ids) should have one.
    served = {f"/{o.kind}?id={o.ident}" for p in phases for o in p.outcomes if o.served and o.kind != "get"}
    logged: set[str] = set()

    def all_logged() -> bool:
        logged.update(stack.logged())
        return served <= logged

    wait_until(all_logged, logs_seconds, interval=0.5)
    for phase in phases:
        phase.lost_puts = [i for i in phase.acknowledged("put") if i not in stored]
        phase.lost_mails = [i for i in phase.acknowledged("mail") if counts[i] == 0]
        phase.missing_reads = [o.ident for o in phase.outcomes if o.kind == "get" and o.status == 404]
        phase.duplicated_mails = [i for i in phase.acknowledged("mail") if counts[i] > 1]
        phase.unlogged = sum(o.served and o.kind != "get" and f"/{o.kind}?id={o.ident}" not in logged
                             for o in phase.outcomes)


@contextlib.contextmanager
def _pong_server() -> Iterator[str]:
    server = PongServer(("127.0.0.1", 0), PongHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ping"
    finally:
        server.shutdown()
        server.server_close()


def run_suite(opts: Options, *, progress: Callable[[str], None] = lambda line: None) -> Report:
    """Start the stack, run the workload through every fault, and return the checked figures."""
    unknown = sorted(set(opts.faults) - set(FAULTS))
    if unknown:
        raise SuiteError(f"unknown faults {unknown}: choose from {', '.join(FAULTS)}")
    with contextlib.ExitStack() as cleanup:
        work = opts.work_dir or pathlib.Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="kiln-faults-")))
        relay = Relay().start()
        cleanup.callback(relay.stop)
        fetch_url = cleanup.enter_context(_pong_server())
        stack = Stack(work, opts, relay.address, fetch_url)
        cleanup.callback(stack.stop)
        started = time.monotonic()
        stack.start()
        progress(f"stack started in {time.monotonic() - started:.1f}s (storage: {opts.storage}); data in {work}")
        workload = Workload(stack.router_url, fetch_url, opts.clients, opts.seed)
        phases = [workload.phase]
        workload.start()
        try:
            _recover(stack, workload, "start", opts.recover_seconds)
            workload.wait_answered(0.0, opts.warm + opts.after, 120.0)
            for fault in opts.faults:
                phases.append(_inject(stack, workload, fault, opts))
                progress(f"{fault}: recovered in {phases[-1].recovery_seconds:.2f}s")
        finally:
            workload.stop()
        _check(stack, relay, phases, opts.mail_seconds, opts.logs_seconds)
        return Report(phases)


def _start_cassandra(work: pathlib.Path) -> str:
    # Ports of its own, so that a node someone else runs on the default ports is left alone.
    done = subprocess.run(["bash", str(CASSANDRA_SCRIPT), "start", "--data-dir", str(work / "cassandra"),
                           "--cql-port", str(free_port()), "--storage-port", str(free_port()), "--heap", "768M"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SuiteError(f"could not start Cassandra with {CASSANDRA_SCRIPT}:\n{done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def main(argv: Sequence[str] | None = None) -> int:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=Options.clients, help="client threads (default: %(default)s)")
    parser.add_argument("--warm", type=int, default=Options.warm, help="requests before each kill")
    parser.add_argument("--outage", type=int, default=Options.outage,
                        help="requests sent while the part is down (at most --outage-seconds)")
    parser.add_argument("--outage-seconds", type=float, default=Options.outage_seconds)
    parser.add_argument("--after", type=int, default=Options.after, help="requests after recovery, per fault")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order (default: all)")
    parser.add_argument("--storage", choices=("embedded", "cassandra"), default="embedded")
    parser.add_argument("--cassandra-hosts", default="",
                        help="host:port of a running Cassandra (default: start one with deploy/cassandra.sh)")
    parser.add_argument("--work-dir", type=pathlib.Path, help="keep data and logs here (default: a temporary dir)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures to this file")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    with tempfile.TemporaryDirectory(prefix="kiln-faults-cassandra-") as tmp:
        hosts = args.cassandra_hosts
        own_cassandra = args.storage == "cassandra" and not hosts
        if own_cassandra:
            hosts = _start_cassandra(pathlib.Path(tmp))
        try:
            opts = Options(clients=args.clients, warm=args.warm, outage=args.outage,
                           outage_seconds=args.outage_seconds, after=args.after, faults=faults,
                           storage=args.storage, cassandra_hosts=hosts, work_dir=args.work_dir, seed=args.seed)
            report = run_suite(opts, progress=lambda line: print(line, flush=True))
        finally:
            if own_cassandra:
                subprocess.run(["bash", str(CASSANDRA_SCRIPT), "stop", "--data-dir",
                                str(pathlib.Path(tmp) / "cassandra")], capture_output=True)
    print(f"\nfault suite: {args.clients} clients, {os.cpu_count()} CPUs, storage {args.storage}; "
          "puts/mails = acknowledged writes, lost = acknowledged but absent (must be 0), dup = mails delivered twice;\n"
          "back s = from the kill until the part was ready again (it stays down while the workload meets the outage), "
          "recover s = until every kind of request had succeeded again")
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps([p.as_dict() for p in report.phases], indent=1))
    return 1 if report.lost else 0


if __name__ == "__main__":
    sys.exit(main())
