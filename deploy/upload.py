"""Uploading a version: what ``kiln deploy`` does.

1. Walk the app directory, leaving out what app.yaml's ``skip_files`` matches
   (App Engine's defaults: dotfiles, ``*.pyc``, backups…), and check App
   Engine's limits locally so a person learns before anything is sent.
2. Check that the version can run, before anything is sent: ``requirements.txt``'s
   lines and SDK version (:func:`runtime.libraries.sdk_requirement`); a live runtime
   host that has the Python ``runtime:`` names (``CheckRuntime``; the control plane
   checks it again at ``CreateVersion``); and that pip can resolve the requirements
   for each Python those hosts would run it on (:func:`runtime.libraries.check_requirements`).
3. Hash every file (SHA-256); ask the control plane which hashes it lacks
   (``MissingBlobs``) and upload only those, several at once, in 1 MiB chunks.
4. ``CreateVersion`` with the manifest: the version appears only now, whole.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from deploy.control import manifest
from kiln_platform import appyaml, interpreters
from runtime import libraries
from kiln.errors import BadRequestError
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc

CHUNK_BYTES = 1024 * 1024
PARALLEL_UPLOADS = 8
UPLOAD_ROUNDS = 3  # ask-upload-create rounds when files vanish meanwhile (see deploy)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclasses.dataclass
class LocalFile:
    """One file to deploy."""

    path: str  # relative, '/'-separated
    full: pathlib.Path
    size: int
    mode: int
    sha256: str = ""


@dataclasses.dataclass
class Result:
    """What a deploy did."""

    version: pb.Version
    files: int
    uploaded_files: int
    uploaded_bytes: int
    indexes: pb.IndexReport = dataclasses.field(default_factory=pb.IndexReport)


def scan(app_dir: pathlib.Path, config: appyaml.AppConfig) -> list[LocalFile]:
    """The files of the app directory that are deployed (``skip_files`` honoured), checked against the limits."""
    out: list[LocalFile] = []
    root = app_dir.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = pathlib.Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # A skipped directory is not walked (App Engine matches skip_files against directories too).
        dirnames[:] = sorted(d for d in dirnames if not config.skips(prefix + d) and not config.skips(prefix + d + "/"))
        for name in sorted(filenames):
            rel = prefix + name
            if config.skips(rel):
                continue
            full = pathlib.Path(dirpath) / name
            st = full.stat()
            if not stat.S_ISREG(st.st_mode):
                continue
            out.append(LocalFile(rel, full, st.st_size, stat.S_IMODE(st.st_mode)))
    manifest.check_files(pb.FileEntry(path=f.path, sha256="0" * 64, size=f.size) for f in out)
    return out


def hash_files(files: list[LocalFile]) -> None:
    for f in files:
        h = hashlib.sha256()
        with open(f.full, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
                h.update(block)
        f.sha256 = h.hexdigest()


def _chunks(app_id: str, f: LocalFile, progress: Callable[[int], None]) -> Iterator[pb.UploadBlobRequest]:
    with open(f.full, "rb") as fh:
        first = True
        while True:
            block = fh.read(CHUNK_BYTES)
            if first:
                yield pb.UploadBlobRequest(app_id=app_id, sha256=f.sha256, size=f.size, chunk=block)
                first = False
            elif block:
                yield pb.UploadBlobRequest(chunk=block)
            progress(len(block))
            if len(block) < CHUNK_BYTES:
                return


def deploy(channel: grpc.Channel, token: str, app_dir: pathlib.Path, app_id: str, version_id: str, *,
           promote: bool, progress: Progress | None = None, host_check: bool = True,
           requirements_check: bool = True) -> Result:
    """Upload ``app_dir`` as ``version_id`` of ``app_id`` (see module docstring).

    ``host_check=False`` stores the version though no live runtime host can run it (hosts come later);
    ``requirements_check=False`` leaves pip's resolution of ``requirements.txt`` to the hosts.

    Raises:
        grpc.RpcError: the control plane refused (its message says why), e.g. FAILED_PRECONDITION: no live runtime
            host has the Python the version's runtime needs.
        KilnError: app.yaml, cron.yaml, index.yaml or requirements.txt is invalid, pip cannot resolve
            requirements.txt (file and line), or a limit is exceeded.
    """
    manifest.check_version_id(version_id)
    config = appyaml.load(app_dir / "app.yaml")
    files = scan(app_dir, config)
    stub = deploy_pb2_grpc.DeployServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)
    check(stub, metadata, app_dir, app_id, config, host_check=host_check, requirements_check=requirements_check)
    hash_files(files)
    texts = {}
    for name in manifest.CONFIG_FILES:
        path = app_dir / name
        if name != "app.yaml" and config.skips(name):
            continue
        texts[name] = path.read_text() if path.is_file() else ""
    if not any(f.path == "app.yaml" for f in files):
        raise BadRequestError("app.yaml matches skip_files; it must be deployed")
    by_hash = {f.sha256: f for f in files}
    version = pb.Version(app_id=app_id, version_id=version_id, app_yaml=texts["app.yaml"],
                         cron_yaml=texts.get("cron.yaml", ""), index_yaml=texts.get("index.yaml", ""),
                         queue_yaml=texts.get("queue.yaml", ""),
                         files=[pb.FileEntry(path=f.path, sha256=f.sha256, size=f.size, mode=f.mode) for f in files])
    uploaded, total = 0, 0
    for attempt in range(UPLOAD_ROUNDS):
        todo = _upload_missing(stub, metadata, app_id, by_hash, progress)
        uploaded, total = uploaded + len(todo), total + sum(f.size for f in todo)
        try:
            created = stub.CreateVersion(pb.CreateVersionRequest(version=version, promote=promote,
                                                                 skip_host_check=not host_check), metadata=metadata)
            break
        except grpc.RpcError as exc:
            # A file the control plane had when asked was deleted before the version was created (it was unused:
            # its version had just been deleted). Ask again and upload what is missing.
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or "not uploaded" not in (exc.details() or "") \
                    or attempt == UPLOAD_ROUNDS - 1:
                raise
    return Result(created.version, len(files), uploaded, total, created.indexes)


def check(stub: Any, metadata: Any, app_dir: pathlib.Path, app_id: str, config: appyaml.AppConfig, *,
          host_check: bool, requirements_check: bool) -> None:
    """Step 2 of the module docstring: refuse, before anything is uploaded, a version no host could run."""
    req_file: pathlib.Path | None = app_dir / "requirements.txt"
    if req_file is not None and req_file.is_file() and not config.skips("requirements.txt"):
        libraries.sdk_requirement(req_file, libraries.read_requirements(req_file))
    else:
        req_file = None  # not deployed: the hosts install nothing from it
    if host_check:
        hosts = stub.CheckRuntime(pb.CheckRuntimeRequest(app_id=app_id, runtime=config.runtime),
                                  metadata=metadata).hosts
        versions = {tuple(int(p) for p in h.python_version.split(".")[:2]) for h in hosts}
    else:  # the Python its runtime names; python27 runs on kiln's own, taken to be this machine's
        versions = {config.python_version or interpreters.own().version}
    if req_file is not None and requirements_check:
        for major, minor in sorted(versions):
            libraries.check_requirements(req_file, (major, minor))


def _upload_missing(stub: Any, metadata: Any, app_id: str, by_hash: dict[str, LocalFile],
                    progress: Progress | None) -> list[LocalFile]:
    """Ask which files the control plane lacks and upload those, several at once; returns them."""
    missing = set(stub.MissingBlobs(pb.MissingBlobsRequest(app_id=app_id, sha256=list(by_hash)), metadata=metadata)
                  .sha256)
    todo = [by_hash[h] for h in by_hash if h in missing]
    total, done = sum(f.size for f in todo), 0
    lock = threading.Lock()
    if progress:
        progress(0, total)

    def advance(n: int) -> None:  # from the upload threads: one at a time, so the figures only grow
        nonlocal done
        with lock:
            done += n
            if progress:
                progress(done, total)

    def upload(f: LocalFile) -> None:
        stub.UploadBlob(_chunks(app_id, f, advance), metadata=metadata)

    with concurrent.futures.ThreadPoolExecutor(PARALLEL_UPLOADS) as pool:
        for fut in [pool.submit(upload, f) for f in todo]:
            fut.result()
    return todo
