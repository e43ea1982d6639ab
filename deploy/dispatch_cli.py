"""``kiln deploy dispatch.yaml`` (the app's dispatch rules alone, as ``gcloud app deploy dispatch.yaml``) and
``kiln dispatch list``: the app's rules with the version each one's service sends requests to.

The rules are checked here first (file, line and field named) and again by the control plane, which refuses a rule
naming a service the app does not have (:mod:`deploy.control.dispatch`) and replaces the app's rules as a whole.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import grpc

from deploy.cliutil import EXIT_OK, EXIT_USAGE, Output, add_connection, fail, guarded, metadata, missing_credentials
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc
from kiln_platform import dispatchyaml

FILENAME = "dispatch.yaml"


def upload(channel: grpc.Channel, token: str, app_id: str, path: pathlib.Path) -> pb.SetDispatchResponse:
    """Check ``path`` locally, then make it the app's dispatch rules (``SetDispatch``)."""
    text = path.read_text()
    dispatchyaml.parse(text, filename=str(path))
    return deploy_pb2_grpc.DeployServiceStub(channel).SetDispatch(
        pb.SetDispatchRequest(app_id=app_id, dispatch_yaml=text), metadata=metadata(token))


def summary(out: Output, app_id: str, result: pb.SetDispatchResponse) -> str:
    return (f"{out.green('dispatch rules')} of app {app_id}: {result.rules} rule(s) serving (generation "
            f"{result.generation})")


def deploy_file(args: argparse.Namespace, app_id: str) -> int:
    """``kiln deploy .../dispatch.yaml``: only the rules, no version."""
    out = Output(as_json=args.json)
    path = pathlib.Path(args.app_dir)
    if not app_id:
        return fail("deploy", "which app? pass --app APP or set KILN_APP (a token for one app names it)", EXIT_USAGE)

    def body() -> int:
        with grpc.insecure_channel(args.control_plane) as channel:
            result = upload(channel, args.token, app_id, path)
        if args.json:
            out.json({"app": app_id, "dispatch_rules": result.rules, "generation": result.generation})
        else:
            out.line(summary(out, app_id, result))
        return EXIT_OK
    return guarded("deploy", lambda: args.control_plane, body)


def dispatch_list(args: argparse.Namespace) -> int:
    refused = missing_credentials("dispatch list", args)
    if refused is not None:
        return refused
    out = Output(as_json=args.json)

    def body() -> int:
        with grpc.insecure_channel(args.control_plane) as channel:
            got = deploy_pb2_grpc.DeployServiceStub(channel).GetDispatch(pb.GetDispatchRequest(app_id=args.app),
                                                                          metadata=metadata(args.token))
        rules = dispatchyaml.parse(got.dispatch_yaml, filename=f"{args.app}/{FILENAME}") if got.dispatch_yaml else []
        rows: list[dict[str, Any]] = [{"url": r.url, "service": r.service,
                                       "version": got.services.get(r.service) or None} for r in rules]
        if args.json:
            out.json(rows)
        elif not rows:
            out.line(f"app {args.app} has no dispatch rules (kiln deploy dispatch.yaml sets them)")
        else:
            out.table(["URL", "SERVICE", "SERVING VERSION"], [[r["url"], r["service"], r["version"] or "-"]
                                                              for r in rows])
        return EXIT_OK
    return guarded("dispatch list", lambda: args.control_plane, body)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``dispatch`` to the ``kiln`` parser."""
    d = sub.add_parser("dispatch", help="an app's dispatch rules",
                       description="The app's dispatch.yaml rules, in order (the first match wins), with the version "
                                   "serving each rule's service. kiln deploy APP_DIR applies the dispatch.yaml beside "
                                   "app.yaml; kiln deploy PATH/dispatch.yaml applies it alone.")
    dsub = d.add_subparsers(dest="action", required=True)
    ls = dsub.add_parser("list", help="rules with their service and serving version")
    add_connection(ls)
    ls.set_defaults(func=dispatch_list)
