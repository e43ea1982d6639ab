"""The ``kiln`` command.

    kiln dev APP_DIR [--port 8080] [--console-port 8000] [--data-dir DIR] [--storage embedded|cassandra] [--clear-datastore]
    kiln deploy APP_DIR [--version V] [--promote] [--no-host-check] [--skip-requirements-check]
    kiln deploy PATH/dispatch.yaml --app APP
    kiln dispatch list --app APP
    kiln versions list|set-default VERSION|delete VERSION --app APP
    kiln logs OUTPUT_FILE --app APP [--append] [--severity LEVEL] [--version V] [--start T] [--end T]
    kiln indexes update|vacuum APP_DIR, kiln indexes list --app APP
    kiln cron list --app APP
    kiln taskqueue list --app APP, kiln taskqueue purge|pause|resume QUEUE --app APP
    kiln bulkload upload|download CSV --mapping MAP.yaml|MAP.py --app APP

Commands that talk to a cluster take ``--control-plane`` (``KILN_CONTROL_PLANE``),
``--token`` (``KILN_TOKEN``) and ``--json``. Errors are printed on one line with
what to do; exit status 0 on success, 1 when something refused or failed, 2 on
bad usage or an invalid local file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import signal
import sys

from kiln_platform import log as kiln_log
from kiln.errors import KilnError


def _dev(args: argparse.Namespace) -> int:
    from deploy.dev import STOP_SIGNALS, DevOptions, DevServer, StopFlag
    from kiln_platform.supervisor import StartError

    app_dir = pathlib.Path(args.app_dir)
    if not (app_dir / "app.yaml").is_file():
        print(f"kiln dev: {app_dir / 'app.yaml'} not found; give the directory that holds your app.yaml",
              file=sys.stderr)
        return 2
    if args.otlp_endpoint:
        from kiln_platform import tracing
        try:
            tracing.traces_url(args.otlp_endpoint)
        except ValueError as exc:
            print(f"kiln dev: --{exc}", file=sys.stderr)
            return 2
    opts = DevOptions(app_dir=app_dir, host=args.host, port=args.port, data_dir=args.data_dir,
                      storage=args.storage, clear_datastore=args.clear_datastore,
                      datastore_consistency=args.datastore_consistency,
                      cassandra_hosts=args.cassandra_hosts or "", request_deadline=args.request_deadline,
                      isolation=args.isolation, network_isolation=args.network_isolation,
                      urlfetch_allow_internal=args.urlfetch_allow_internal, console_port=args.console_port,
                      metrics_port=args.metrics_port, otlp_endpoint=args.otlp_endpoint)
    from kiln_platform import handover
    handover.undumpable()  # kiln dev holds every secret: no process of the same user may read its memory
    # Ctrl-C, kill and the terminal closing all stop kiln dev the same way. While it starts, they interrupt the
    # start (which stops what had started); once it serves, they end its wait and everything stops in order.
    stop, starting = StopFlag(), StopFlag()  # set by the signal handler: no locks (deploy.dev.StopFlag)
    starting.set()

    def on_stop_signal(signum: int, _frame: object) -> None:
        stop.set()
        if starting.is_set():
            raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop_signal)
    server = None
    try:
        server = DevServer(opts)
        server.start()
        starting.reset()
    except KilnError as exc:
        print(f"kiln dev: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"kiln dev: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        starting.reset()
        if server is not None:
            server.stop()
        _say("kiln dev: stopped before serving")
        return 1
    _say(f"kiln dev: serving app {server.app_id!r} (version {server.version_id}, storage {opts.storage}) "
         f"at {server.url}")
    _say(f"kiln dev: console (dashboard, versions, logs, datastore, memcache, cron, task queues, mail) at {server.console_url}")
    _say(f"kiln dev: mail goes to {server.outbox_dir}; SMTP for *@{server.app_id}.mail.localhost on "
         f"{server.addresses['mail_smtp']}")
    if opts.otlp_endpoint:
        _say(f"kiln dev: traces exported to {opts.otlp_endpoint} (OTLP/HTTP)")
    if server.metrics_addresses:
        _say("kiln dev: Prometheus metrics at " + ", ".join(f"{part} http://{address}/metrics"
                                                            for part, address in server.metrics_addresses.items()))
    _say(f"kiln dev: data in {server.data_dir}; logs in {server.run_dir}; Ctrl-C stops")
    try:
        status = server.wait(stop, on_event=lambda line: _say(f"kiln dev: {line}"))
    finally:
        server.stop()
    _say("kiln dev: stopped")
    return status


def _say(line: str) -> None:
    """Print a line of kiln dev's own; once the terminal has closed (SIGHUP) there is no one to read it."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="kiln", description="kiln: a self-hostable App Engine for Python")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run an app locally with every service",
                         description="Run an app on this machine: NATS, the services, a runtime and the router.")
    dev.add_argument("app_dir", metavar="APP_DIR", help="directory with app.yaml")
    dev.add_argument("--host", default="127.0.0.1", help="address to serve HTTP on (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    dev.add_argument("--console-port", type=int, default=8000,
                     help="the web console's port, on 127.0.0.1 only (default 8000, as dev_appserver's admin port; "
                          "0 picks a free one)")
    dev.add_argument("--data-dir", type=pathlib.Path, default=None,
                     help="where data persists (default ~/.local/share/kiln/dev/APP_ID)")
    dev.add_argument("--storage", choices=("embedded", "cassandra"), default="embedded",
                     help="datastore engine (default embedded; cassandra starts a node under the data dir "
                          "unless --cassandra-hosts is given)")
    dev.add_argument("--cassandra-hosts", default=None, help="use this Cassandra (host:port) instead of starting one")
    dev.add_argument("--clear-datastore", action="store_true", help="wipe the datastore before starting")
    dev.add_argument("--datastore-consistency", type=datastore_consistency, default=1.0, metavar="POLICY",
                     help="how soon non-ancestor queries see a write: consistent (the default), random (half of "
                          "the writes not yet, as dev_appserver's --datastore_consistency_policy=random), or the "
                          "probability 0..1 that a pending write is applied at each such query (embedded engine)")
    dev.add_argument("--isolation", choices=("none", "user", "auto"), default="none",
                     help="run the app as its own Unix user on a private copy of its files (user; needs root), "
                          "or as you (none, the default)")
    dev.add_argument("--network-isolation", choices=("auto", "on", "off"), default="auto",
                     help="with --isolation user: the app's instances in a network of their own that reaches only "
                          "NATS and kiln's services (auto: where the kernel allows it)")
    dev.add_argument("--urlfetch-allow-internal", default="", metavar="CIDR[;CIDR]",
                     help="internal networks the app may fetch from (URL Fetch refuses loopback, private and "
                          "link-local addresses by default), e.g. 127.0.0.1/32 for a service on this machine")
    dev.add_argument("--request-deadline", type=float, default=60.0, metavar="SECONDS",
                     help="the request timer (default 60)")
    dev.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve every part's Prometheus metrics on 127.0.0.1 at /metrics: the first part on PORT, "
                          "the others on PORT+1... in the order datastore, memcache, urlfetch, mail, images, cron, "
                          "logs, identity, taskqueue, blobstore, manager, router (0: a free port each); printed at "
                          "start (default: only the router's and the manager's, on free ports, for the console's "
                          "dashboard)")
    dev.add_argument("--otlp-endpoint", default="", metavar="URL",
                     help="export OpenTelemetry traces of every request (router, instance, services) to this "
                          "OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (default: off)")
    dev.set_defaults(func=_dev)
    from deploy import bulkload_cli, cron_cli, dispatch_cli, indexes_cli, logs_cli, taskqueue_cli, versions_cli
    versions_cli.register(sub)
    logs_cli.register(sub)
    indexes_cli.register(sub)
    bulkload_cli.register(sub)
    cron_cli.register(sub)
    dispatch_cli.register(sub)
    taskqueue_cli.register(sub)
    return parser


def datastore_consistency(text: str) -> float:
    """``--datastore-consistency``: consistent, random, or a probability between 0 and 1."""
    named = {"consistent": 1.0, "random": 0.5}  # dev_appserver's names (its random policy's probability is 0.5)
    if text in named:
        return named[text]
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give consistent, random or a probability between 0 and 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kiln`` console script."""
    args = build_parser().parse_args(argv)
    os.umask(0o077)  # kiln dev's data, logs and keys are the user's alone
    kiln_log.setup(level="INFO", component="kiln")
    logging.getLogger("deploy").setLevel(logging.INFO)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
