"""``kiln deploy`` and ``kiln versions list|set-default|delete``."""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
from typing import Any

import grpc

from deploy import dispatch_cli, upload
from deploy.cliutil import (
    EXIT_OK, EXIT_USAGE, Output, add_connection, app_of_token, fail, guarded, metadata, missing_credentials)
from kiln_platform import appyaml, dispatchyaml
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc


def _app_id(args: argparse.Namespace, config: appyaml.AppConfig | None, app_dir: pathlib.Path | None) -> str:
    """--app, else app.yaml's ``application``, else the one app the deploy token names, else the directory's name."""
    if args.app:
        return str(args.app)
    if config is not None and config.application:
        return config.application
    if app_of_token(args.token):
        return app_of_token(args.token)
    if config is not None and app_dir is not None:
        from deploy.dev import app_id_for
        return app_id_for(app_dir, config)
    return ""


def _index_lines(out: Output, report: pb.IndexReport, app_dir: pathlib.Path) -> None:
    """What the deploy did to the app's indexes, as appcfg update said it."""
    for name in report.serving:
        out.line(f"  new index {name}: serving")
    for name in report.building:
        out.line(f"  new index {name}: building in the background (kiln indexes list shows when it serves)")
    if report.not_applied:
        out.line(f"  {out.yellow('index.yaml')}: {report.not_applied}; apply it with kiln indexes update {app_dir}")


def _version_json(v: pb.Version) -> dict[str, Any]:
    return {"app": v.app_id, "version": v.version_id, "minor": v.minor, "id": f"{v.version_id}.{v.minor}",
            "default": v.is_default, "deployed_by": v.deployed_by,
            "created": v.created_at.ToDatetime(datetime.timezone.utc).isoformat() if v.HasField("created_at") else None}


class _Progress:
    """A byte progress bar on stderr, drawn only on a terminal (tqdm)."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled or total == 0:
            return
        if self._bar is not None and self._bar.total != total:  # another round (files vanished meanwhile)
            self._bar.close()
            self._bar = None
        if self._bar is None:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="uploading",
                             file=sys.stderr, leave=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def deploy(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    app_dir = pathlib.Path(args.app_dir)
    if app_dir.name == dispatch_cli.FILENAME and app_dir.is_file():  # the app's dispatch rules alone
        refused = missing_credentials("deploy", args, app=False)
        return refused if refused is not None else dispatch_cli.deploy_file(args, _app_id(args, None, None))
    if not (app_dir / "app.yaml").is_file():
        return fail("deploy", f"{app_dir / 'app.yaml'} not found; give the directory that holds your app.yaml",
                    EXIT_USAGE)
    refused = missing_credentials("deploy", args, app=False)
    if refused is not None:
        return refused

    def body() -> int:
        config = appyaml.load(app_dir / "app.yaml")
        app_id = _app_id(args, config, app_dir)
        version_id = args.version or config.version or datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y%m%dt%H%M%S")
        rules_file = app_dir / dispatch_cli.FILENAME
        if rules_file.is_file():  # refused before anything is uploaded when malformed
            dispatchyaml.parse(rules_file.read_text(), filename=str(rules_file))
        with grpc.insecure_channel(args.control_plane) as channel:
            stub = deploy_pb2_grpc.DeployServiceStub(channel)
            promote = args.promote
            if not promote:
                listed = stub.ListVersions(pb.ListVersionsRequest(app_id=app_id), metadata=metadata(args.token))
                promote = not any(v.is_default for v in listed.versions)  # an app's first version serves it
            progress = _Progress(sys.stderr.isatty() and not args.json)
            try:
                result = upload.deploy(channel, args.token, app_dir, app_id, version_id, promote=promote,
                                       progress=progress, host_check=not args.no_host_check,
                                       requirements_check=not args.skip_requirements_check)
            finally:
                progress.close()
            # After the version: a rule may name the service it belongs to.
            rules = dispatch_cli.upload(channel, args.token, app_id, rules_file) if rules_file.is_file() else None
        v = result.version
        if args.json:
            report = result.indexes
            out.json({**_version_json(v), "files": result.files, "uploaded_files": result.uploaded_files,
                      "uploaded_bytes": result.uploaded_bytes,
                      "indexes": {"applied": report.applied, "serving": list(report.serving),
                                  "building": list(report.building), "not_applied": report.not_applied},
                      **({"dispatch_rules": rules.rules} if rules is not None else {})})
            return EXIT_OK
        out.line(f"{out.green('deployed')} {out.bold(f'{v.version_id}.{v.minor}')} of app {app_id}: "
                 f"{result.files} files, {result.uploaded_files} uploaded ({result.uploaded_bytes:,} bytes)")
        _index_lines(out, result.indexes, app_dir)
        if rules is not None:
            out.line("  " + dispatch_cli.summary(out, app_id, rules))
        out.line(f"  serving the app's domain (the default version)" if v.is_default else
                 f"  reachable at {v.version_id}-dot-{app_id}.<domain>; make it the default with "
                 f"kiln versions set-default {v.version_id} --app {app_id}")
        return EXIT_OK
    return guarded("deploy", lambda: args.control_plane, body)


def versions(args: argparse.Namespace) -> int:
    command = f"versions {args.action}"
    refused = missing_credentials(command, args)
    if refused is not None:
        return refused
    out = Output(as_json=args.json)

    def body() -> int:
        with grpc.insecure_channel(args.control_plane) as channel:
            stub = deploy_pb2_grpc.DeployServiceStub(channel)
            meta = metadata(args.token)
            if args.action == "list":
                listed = stub.ListVersions(pb.ListVersionsRequest(app_id=args.app), metadata=meta).versions
                if args.json:
                    out.json([_version_json(v) for v in listed])
                else:
                    out.table(["VERSION", "DEFAULT", "CREATED", "DEPLOYED BY"],
                              [[f"{v.version_id}.{v.minor}", "*" if v.is_default else "",
                                v.created_at.ToDatetime(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                                v.deployed_by] for v in listed])
                return EXIT_OK
            if args.action == "set-default":
                stub.SetDefaultVersion(pb.SetDefaultVersionRequest(app_id=args.app, version_id=args.version),
                                       metadata=meta)
                verb = "is now the default"
            else:
                stub.DeleteVersion(pb.DeleteVersionRequest(app_id=args.app, version_id=args.version), metadata=meta)
                verb = "deleted"
        if args.json:
            out.json({"app": args.app, "version": args.version, "action": args.action})
        else:
            out.line(f"version {out.bold(args.version)} of app {args.app} {verb}")
        return EXIT_OK
    return guarded(command, lambda: args.control_plane, body)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``deploy`` and ``versions`` to the ``kiln`` parser."""
    p = sub.add_parser("deploy", help="upload an app as a version",
                       description="Upload APP_DIR as a version of the app: only files the control plane does not "
                                   "have yet are sent; skip_files is honoured. Each upload of a version is a new "
                                   "minor version. The app's first version becomes its default. Before anything is "
                                   "sent, a live runtime host must have the Python app.yaml's runtime needs, and "
                                   "requirements.txt must name an SDK version kiln provides and resolve with pip "
                                   "for that Python.")
    p.add_argument("app_dir", metavar="APP_DIR",
                   help="directory with app.yaml (its dispatch.yaml, if any, is applied after the version), or a "
                        "dispatch.yaml file to apply alone")
    p.add_argument("--version", help="major version (default: app.yaml's version, else a timestamp)")
    p.add_argument("--promote", action="store_true", help="make it the default version once uploaded")
    p.add_argument("--no-host-check", action="store_true",
                   help="deploy though no live runtime host can run the version's runtime (e.g. the hosts start "
                        "later); it runs once one that can reports")
    p.add_argument("--skip-requirements-check", action="store_true",
                   help="do not resolve requirements.txt with pip here (this machine cannot reach the hosts' "
                        "package index, or is another platform than the hosts); the hosts still refuse what pip "
                        "cannot install")
    add_connection(p)
    p.set_defaults(func=deploy)
    v = sub.add_parser("versions", help="list versions, switch the default, delete one",
                       description="Manage an app's versions.")
    vsub = v.add_subparsers(dest="action", required=True)
    ls = vsub.add_parser("list", help="the app's versions, newest first (* marks the default)")
    add_connection(ls)
    sd = vsub.add_parser("set-default", help="make VERSION serve the app's domain (all routers within a second)")
    sd.add_argument("version", metavar="VERSION")
    add_connection(sd)
    rm = vsub.add_parser("delete", help="delete VERSION (not the default)")
    rm.add_argument("version", metavar="VERSION")
    add_connection(rm)
    for parser in (ls, sd, rm):
        parser.set_defaults(func=versions)
