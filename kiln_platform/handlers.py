"""Matching a request path to an ``app.yaml`` handler, as App Engine does.

Handlers are tried in order; the first whose ``url`` matches wins. A script or
``static_files`` handler's ``url`` is a regular expression that must match the
whole path, and its groups can be referred to as ``\\1``… in ``static_files``;
a ``static_dir`` handler's ``url`` is a path prefix: it serves ``<url>/…``, and
the bare ``<url>`` goes on to the next handler (App Engine's SDK defines
``static_dir`` as ``url: <url>/(.*)``). The router and the runtime
both use this module, so they always agree on which handler serves a path.
"""

from __future__ import annotations

import dataclasses
import functools
import posixpath
import re

from kiln_platform.appyaml import AppConfig, Handler


@dataclasses.dataclass(frozen=True, slots=True)
class Match:
    """The handler for a path, and for static handlers the app-relative file it names."""

    index: int
    handler: Handler
    static_path: str | None = None


class Matcher:
    """Ordered handler matching for one app version."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self._routes = [(i, h, None if h.static_dir is not None else re.compile(h.url))
                        for i, h in enumerate(config.handlers)]

    def match(self, path: str) -> Match | None:
        """The first handler that serves ``path`` (URL-decoded, starting with ``/``), or ``None``."""
        for index, handler, pattern in self._routes:
            if handler.static_dir is not None:
                prefix = handler.url.rstrip("/")
                if path.startswith(prefix + "/"):
                    rest = path[len(prefix) + 1:].lstrip("/")
                    return Match(index, handler, _inside(handler.static_dir, rest))
                continue
            assert pattern is not None
            found = pattern.fullmatch(path)
            if found is None:
                continue
            if handler.static_files is not None:
                # Normalise before checking upload, so "files/../main.py" cannot pass as "files/.*".
                target = _inside("", _expand(handler.static_files, found))
                if target is None or (handler.upload is not None and not _upload_re(handler.upload).fullmatch(target)):
                    return Match(index, handler, None)  # matched, but names a file that was not uploaded
                return Match(index, handler, target)
            return Match(index, handler)
        return None


@functools.lru_cache(maxsize=256)
def _upload_re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _expand(template: str, found: re.Match[str]) -> str:
    r"""``static_files`` with ``\1``… replaced by the url pattern's groups."""
    return re.sub(r"\\(\d)", lambda m: found.group(int(m.group(1))) or "", template)


def _inside(base: str, rest: str) -> str | None:
    """``base/rest`` normalised, or ``None`` if it would leave the app directory."""
    joined = posixpath.normpath(posixpath.join(base, rest)) if rest else posixpath.normpath(base)
    if joined.startswith("../") or joined == ".." or joined.startswith("/") or "\x00" in joined:
        return None
    if base and not (joined == posixpath.normpath(base) or joined.startswith(posixpath.normpath(base) + "/")):
        return None
    return joined
