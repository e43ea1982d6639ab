"""Where the router finds a version's ``app.yaml`` and static files.

Until the control plane serves deployed versions, versions come from local
directories: ``--app-dirs app/version=/path,…`` (``kiln dev`` passes its one
app). Each version's ``app.yaml`` is parsed once.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

from kiln import appyaml
from kiln.handlers import Matcher

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Version:
    """One servable version: its files, parsed app.yaml and handler matcher."""

    app_id: str
    version_id: str
    root: pathlib.Path
    config: appyaml.AppConfig
    matcher: Matcher


def parse_app_dirs(spec: str) -> dict[tuple[str, str], pathlib.Path]:
    """``app/version=/path,…`` as a mapping; raises ValueError naming a bad item."""
    out: dict[tuple[str, str], pathlib.Path] = {}
    for item in filter(None, (i.strip() for i in spec.split(","))):
        target, sep, path = item.partition("=")
        app, slash, version = target.partition("/")
        if not sep or not slash or not app or not version or not path:
            raise ValueError(f"app_dirs: expected app/version=/path, got {item!r}")
        out[(app, version)] = pathlib.Path(path)
    return out


class LocalVersions:
    """Versions from local directories."""

    def __init__(self, dirs: dict[tuple[str, str], pathlib.Path]) -> None:
        self._dirs = dirs
        self._loaded: dict[tuple[str, str], Version] = {}

    def get(self, app_id: str, version_id: str) -> Version | None:
        """The version, or ``None`` when this router has no files for it."""
        key = (app_id, version_id)
        found = self._loaded.get(key)
        if found is None and key in self._dirs:
            root = self._dirs[key].resolve()
            config = appyaml.load(root / "app.yaml")
            found = self._loaded[key] = Version(app_id, version_id, root, config, Matcher(config))
        return found
