"""What a version may be: App Engine's version names and file limits, and its configuration files.

The control plane checks every manifest it is sent (the CLI checks the same
before uploading, so a person learns early): version names as App Engine
allows them, at most 10,000 files, at most 1,000 in one directory, at most
32 MB per file, safe relative paths, no file that ``skip_files`` excludes,
and ``app.yaml``, ``cron.yaml``, ``index.yaml`` and ``queue.yaml`` that parse — each error
names the offending file or field.
"""

from __future__ import annotations

import collections
import hashlib
import pathlib
import re
import tempfile
from collections.abc import Iterable, Mapping

from kiln_platform import appyaml, cronyaml, indexyaml, queueyaml
from kiln.errors import BadRequestError, TooLargeError
from kiln.pb.deploy.v1 import deploy_pb2 as pb

MAX_FILES = 10_000
MAX_FILES_PER_DIR = 1_000
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_PATH_BYTES = 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
VERSION_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
RESERVED_VERSIONS = frozenset({"default", "latest"})
CONFIG_FILES = ("app.yaml", "cron.yaml", "index.yaml", "queue.yaml")


def check_version_id(version_id: str) -> None:
    """App Engine's rule for version names (plus: ``-dot-`` would confuse host names)."""
    if not VERSION_RE.match(version_id):
        raise BadRequestError(f"version {version_id!r}: use 1-63 lowercase letters, digits and hyphens, "
                              "starting and ending with a letter or digit")
    if version_id.startswith("ah-"):
        raise BadRequestError(f"version {version_id!r}: names starting with 'ah-' are reserved")
    if version_id in RESERVED_VERSIONS:
        raise BadRequestError(f"version {version_id!r}: 'default' and 'latest' are reserved names")
    if "-dot-" in version_id:
        raise BadRequestError(f"version {version_id!r}: must not contain '-dot-' (it separates host name parts)")


def check_sha256(value: str) -> None:
    if not SHA256_RE.match(value):
        raise BadRequestError(f"sha256 {value[:80]!r}: expected 64 lowercase hex digits")


def check_path(path: str) -> None:
    """A safe relative '/'-separated path."""
    if not path or len(path.encode()) > MAX_PATH_BYTES:
        raise BadRequestError(f"file {path[:80]!r}: path must be 1-{MAX_PATH_BYTES} bytes")
    if path.startswith("/") or "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise BadRequestError(f"file {path!r}: must be relative, '/'-separated, without control characters")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise BadRequestError(f"file {path!r}: must not have empty, '.' or '..' parts")


def check_files(files: Iterable[pb.FileEntry], skip: appyaml.AppConfig | None = None) -> None:
    """App Engine's limits on a version's files; ``skip`` refuses files its ``skip_files`` excludes."""
    seen: set[str] = set()
    per_dir: collections.Counter[str] = collections.Counter()
    for entry in files:
        check_path(entry.path)
        check_sha256(entry.sha256)
        if entry.path in seen:
            raise BadRequestError(f"file {entry.path!r}: listed twice")
        seen.add(entry.path)
        if entry.size < 0:
            raise BadRequestError(f"file {entry.path!r}: size must not be negative")
        if entry.size > MAX_FILE_BYTES:
            raise TooLargeError(f"file {entry.path!r} is {entry.size:,} bytes; App Engine allows at most "
                                f"{MAX_FILE_BYTES:,} (32 MB) per file")
        parent = entry.path.rpartition("/")[0]
        per_dir[parent] += 1
        if per_dir[parent] > MAX_FILES_PER_DIR:
            raise TooLargeError(f"directory {parent or '.'!r} has more than {MAX_FILES_PER_DIR:,} files (App "
                                f"Engine's limit per directory; at {entry.path!r})")
        if len(seen) > MAX_FILES:
            raise TooLargeError(f"more than {MAX_FILES:,} files (App Engine's limit per version; at {entry.path!r}); "
                                "leave some out with skip_files")
        if skip is not None and skip.skips(entry.path):
            raise BadRequestError(f"file {entry.path!r} matches app.yaml's skip_files; leave it out")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_configs(version: pb.Version, blobs: Mapping[str, bytes]) -> appyaml.AppConfig:
    """Parse app.yaml (with its includes, from ``blobs`` by path), cron.yaml and index.yaml.

    Each text must equal the uploaded file of the same name, so what runs is
    what was checked. Returns the parsed app.yaml.
    """
    by_path = {f.path: f for f in version.files}
    texts = {"app.yaml": version.app_yaml, "cron.yaml": version.cron_yaml, "index.yaml": version.index_yaml,
             "queue.yaml": version.queue_yaml}
    if "app.yaml" not in by_path or not version.app_yaml:
        raise BadRequestError("app.yaml: missing; a version needs its app.yaml among its files and in app_yaml")
    for name, text in texts.items():
        entry = by_path.get(name)
        if text and (entry is None or entry.sha256 != sha256_text(text)):
            raise BadRequestError(f"{name}: the text sent differs from the uploaded file {name}")
        if not text and entry is not None:
            raise BadRequestError(f"{name}: uploaded as a file but its text was not sent")
    with tempfile.TemporaryDirectory(prefix="kiln-manifest-") as tmp:
        root = pathlib.Path(tmp)
        for path, data in blobs.items():  # included YAML files, placed where app.yaml's includes look
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        config = appyaml.parse(version.app_yaml, filename="app.yaml", base_dir=root)
    if config.application and config.application != version.app_id:
        raise BadRequestError(f"app.yaml: application is {config.application!r} but this deploys app "
                              f"{version.app_id!r}; remove the line or deploy to {config.application!r}")
    if version.cron_yaml:
        cronyaml.parse(version.cron_yaml, filename="cron.yaml")
    if version.index_yaml:
        indexyaml.parse(version.index_yaml, filename="index.yaml")
    if version.queue_yaml:
        queueyaml.parse(version.queue_yaml, filename="queue.yaml")
    return config


def include_paths(version: pb.Version) -> list[str]:
    """Files app.yaml's includes may read: every uploaded YAML file (small; the parser picks what it needs)."""
    return [f.path for f in version.files if f.path.endswith((".yaml", ".yml")) and f.size <= 1024 * 1024]
