"""``kiln taskqueue list|purge|pause|resume``: an app's push and pull queues, from ``taskqueue_svc``.

As ``kiln cron list``, the CLI calls ``taskqueue_svc`` through the control plane's gateway with the person's deploy
token (:mod:`deploy.control.gateway`: only a token that may deploy the app is forwarded, as the app). Pause and
resume are kept in NATS KV, so they hold on every replica; purge drops the queue's waiting tasks.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import grpc

from deploy.cliutil import EXIT_OK, Output, add_connection, app_metadata, guarded, missing_credentials
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc



def _rate(per_second: float) -> str:
    for unit, seconds in (("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        if per_second * seconds >= 1 or unit == "d":
            return f"{per_second * seconds:g}/{unit}"
    return ""  # not reached


def _row(stats: pb.QueueStats) -> dict[str, Any]:
    if stats.mode == "pull":
        state = "pull"
    elif stats.paused:
        state = "paused"
    elif stats.rate_per_second <= 0:
        state = "paused (rate 0 in queue.yaml)"
    else:
        state = "running"
    oldest = None
    if stats.oldest_eta_usec >= 0:
        oldest = datetime.datetime.fromtimestamp(stats.oldest_eta_usec / 1e6, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S")
    # A pull queue's tasks in flight are its leased ones.
    return {"queue": stats.queue, "mode": stats.mode, "state": state, "rate": _rate(stats.rate_per_second),
            "rate_per_second": stats.rate_per_second, "bucket_size": stats.bucket_size,
            "max_concurrent_requests": stats.max_concurrent_requests or None, "tasks": stats.tasks,
            "in_flight": stats.leased if stats.mode == "pull" else stats.in_flight, "oldest_eta": oldest}


def _call(args: argparse.Namespace, command: str, act: Any) -> int:
    """Run ``act(stub, metadata)`` against taskqueue_svc as ``args.app``, errors on one line."""
    refused = missing_credentials(command, args)
    if refused is not None:
        return refused

    def body() -> int:
        with grpc.insecure_channel(args.control_plane) as channel:
            return int(act(taskqueue_pb2_grpc.TaskQueueServiceStub(channel), app_metadata(args)))
    return guarded(command, lambda: args.control_plane, body)


def queue_list(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)

    def act(stub: taskqueue_pb2_grpc.TaskQueueServiceStub, md: Any) -> int:
        stats = stub.QueueStats(pb.QueueStatsRequest(with_oldest_eta=True), metadata=md, timeout=60).queues
        rows = [_row(s) for s in stats]
        if args.json:
            out.json(rows)
        else:
            out.table(["QUEUE", "STATE", "RATE", "BUCKET", "MAX CONCURRENT", "TASKS", "IN FLIGHT", "OLDEST ETA (UTC)"],
                      [[r["queue"], r["state"], r["rate"] if r["mode"] == "push" else "",
                        str(r["bucket_size"]) if r["mode"] == "push" else "", str(r["max_concurrent_requests"] or ""),
                        str(r["tasks"]), str(r["in_flight"]), r["oldest_eta"] or ""] for r in rows])
        return EXIT_OK
    return _call(args, "taskqueue list", act)


def _one(command: str, done: str, call: str, request: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        out = Output(as_json=args.json)

        def act(stub: taskqueue_pb2_grpc.TaskQueueServiceStub, md: Any) -> int:
            getattr(stub, call)(request(queue=args.queue), metadata=md, timeout=60)
            if args.json:
                out.json({"app": args.app, "queue": args.queue, "done": done})
            else:
                out.line(f"queue {args.queue} of {args.app}: {done}")
            return EXIT_OK
        return _call(args, f"taskqueue {command}", act)
    return run


ACTIONS = {  # action -> (help, what was done, rpc, request)
    "purge": ("delete every waiting task of a queue", "purged", "Purge", pb.PurgeRequest),
    "pause": ("stop delivering a push queue's tasks, on every replica, until resume", "paused", "Pause",
              pb.PauseRequest),
    "resume": ("deliver a paused queue's tasks again", "resumed", "Resume", pb.ResumeRequest),
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``taskqueue`` to the ``kiln`` parser."""
    parser = sub.add_parser("taskqueue", help="an app's task queues",
                            description="Task queues of an app (its default version's queue.yaml).")
    tsub = parser.add_subparsers(dest="action", required=True)
    actions = [("list", "each queue's state, rate, waiting tasks, tasks in flight (leased, for a pull queue) and "
                        "oldest ETA", queue_list)]
    actions += [(name, text, _one(name, done, call, request)) for name, (text, done, call, request) in ACTIONS.items()]
    for name, text, func in actions:
        action = tsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if name != "list":
            action.add_argument("queue", metavar="QUEUE", help="the queue's name (as in queue.yaml)")
        add_connection(action)
        action.set_defaults(func=func)
