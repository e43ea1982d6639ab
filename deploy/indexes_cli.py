"""``kiln indexes update|vacuum|list``: an app's composite indexes, as ``appcfg update_indexes`` and
``vacuum_indexes`` managed them.

``update APP_DIR`` declares APP_DIR's ``index.yaml`` to the datastore: new
indexes are built for the existing entities (BUILDING, then SERVING); nothing
is deleted. ``vacuum APP_DIR`` deletes the app's indexes that ``index.yaml``
no longer lists — after showing them and asking (``--yes`` skips the question;
without a terminal it is required). ``list`` shows every index with its state.
The CLI calls the datastore through the control plane's gateway with the
person's admin token (:mod:`deploy.control.gateway`), which calls it as the app.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

import grpc

from deploy.cliutil import (
    EXIT_OK, EXIT_USAGE, Output, add_connection, app_metadata, app_of_token, fail, guarded, missing_credentials)
from kiln_platform import appyaml, indexyaml
from kiln.pb.datastore.v1 import datastore_pb2 as dpb
from kiln.pb.datastore.v1 import datastore_pb2_grpc

STATES = {dpb.CompositeIndex.STATE_BUILDING: "building", dpb.CompositeIndex.STATE_SERVING: "serving",
          dpb.CompositeIndex.STATE_DELETING: "deleting", dpb.CompositeIndex.STATE_ERROR: "error"}


def _json(index: dpb.CompositeIndex) -> dict[str, Any]:
    return {"kind": index.kind, "ancestor": index.ancestor, "state": STATES.get(index.state, "unknown"),
            "properties": [{"name": p.property.name, "direction": "desc" if p.direction ==
                            dpb.PropertyOrder.DIRECTION_DESCENDING else "asc"} for p in index.properties],
            **({"error": index.error} if index.error else {})}


def _print(out: Output, indexes: list[dpb.CompositeIndex]) -> None:
    if out.as_json:
        out.json([_json(i) for i in indexes])
    elif not indexes:
        out.line("no composite indexes")
    else:
        out.table(["INDEX", "STATE"], [[indexyaml.describe(i), STATES.get(i.state, "unknown") +
                                        (f": {i.error}" if i.error else "")] for i in indexes])


def indexes(args: argparse.Namespace) -> int:
    command = f"indexes {args.action}"
    out = Output(as_json=args.json)
    app_dir = pathlib.Path(args.app_dir) if getattr(args, "app_dir", None) else None
    if app_dir is not None and not (app_dir / "app.yaml").is_file():
        return fail(command, f"{app_dir / 'app.yaml'} not found; give the directory that holds your app.yaml",
                    EXIT_USAGE)
    refused = missing_credentials(command, args, app=False)
    if refused is not None:
        return refused

    def body() -> int:
        app_id = args.app or app_of_token(args.token)  # a token for one app can act on no other
        declared: list[dpb.CompositeIndex] = []
        if app_dir is not None:
            if not app_id:
                from deploy.dev import app_id_for
                app_id = app_id_for(app_dir, appyaml.load(app_dir / "app.yaml"))
            declared = indexyaml.load(app_dir / "index.yaml")
        if not app_id:
            return fail(command, "which app? pass --app APP or set KILN_APP", EXIT_USAGE)
        with grpc.insecure_channel(args.control_plane) as channel:
            stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
            meta = app_metadata(args, app_id)
            if args.action == "list":
                _print(out, list(stub.ListIndexes(dpb.ListIndexesRequest(), metadata=meta).indexes))
                return EXIT_OK
            if args.action == "update":
                result = stub.UpdateIndexes(dpb.UpdateIndexesRequest(indexes=declared), metadata=meta).indexes
                _print(out, list(result))
                return EXIT_OK
            current = list(stub.ListIndexes(dpb.ListIndexesRequest(), metadata=meta).indexes)
            wanted = {indexyaml.key(i) for i in declared}
            unused = [i for i in current if indexyaml.key(i) not in wanted]
            if not unused:
                if out.as_json:
                    out.json({"deleted": []})
                else:
                    out.line("no unused indexes: every index is in index.yaml")
                return EXIT_OK
            if not args.yes:
                if not sys.stdin.isatty():
                    return fail(command, f"{len(unused)} unused index(es) would be deleted; pass --yes to confirm "
                                         "without a terminal", EXIT_USAGE)
                for index in unused:
                    print(f"  {indexyaml.describe(index)}", file=sys.stderr)
                answer = input(f"Delete these {len(unused)} index(es)? [y/N] ").strip().lower()
                if answer not in ("y", "yes"):
                    return fail(command, "nothing deleted", EXIT_OK)
            stub.UpdateIndexes(dpb.UpdateIndexesRequest(indexes=declared, remove_unlisted=True), metadata=meta)
        if out.as_json:
            out.json({"deleted": [_json(i) for i in unused]})
        else:
            for index in unused:
                out.line(f"deleted {indexyaml.describe(index)}")
        return EXIT_OK
    return guarded(command, lambda: args.control_plane, body)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``indexes`` to the ``kiln`` parser."""
    p = sub.add_parser("indexes", help="build new composite indexes, delete unused ones",
                       description="Manage an app's composite datastore indexes from its index.yaml.")
    isub = p.add_subparsers(dest="action", required=True)
    up = isub.add_parser("update", help="build the indexes APP_DIR/index.yaml declares (deletes nothing)")
    up.add_argument("app_dir", metavar="APP_DIR")
    vac = isub.add_parser("vacuum", help="delete the indexes APP_DIR/index.yaml no longer lists")
    vac.add_argument("app_dir", metavar="APP_DIR")
    vac.add_argument("--yes", action="store_true", help="delete without asking")
    ls = isub.add_parser("list", help="every composite index of the app with its state")
    for parser in (up, vac, ls):
        add_connection(parser)
        parser.set_defaults(func=indexes)
