"""What kiln writes is readable by kiln's user alone: ``kiln dev``'s data directory (NATS store, embedded datastore
and its -wal/-shm, request and instance logs, keys) has no file or directory another user may read or enter, even
when an older kiln left the directory open. Through kiln dev's real processes."""

from __future__ import annotations

import pathlib
import stat
import textwrap

import pytest

from tests.integration import apps

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent('''
    import logging
    from kiln.api import datastore

    def app(environ, start_response):
        entity = datastore.Entity("Note")
        entity["text"] = "private"
        datastore.Put(entity)
        logging.warning("a line for the request log")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"stored"]
''')


def open_to_others(root: pathlib.Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root)} {oct(stat.S_IMODE(mode))}")
    return found


def test_nothing_under_the_dev_data_directory_is_open_to_other_users(tmp_path):
    data = tmp_path / "app" / "data"
    data.mkdir(parents=True, mode=0o755)
    data.chmod(0o755)  # as an older kiln left it
    with apps.running(tmp_path / "app", {"main.py": MAIN}) as server:
        assert apps.fetch(server, "/")[0] == 200
        apps.wait_for(lambda: list((data / "logs").rglob("*")), 30)
        written = {p.name for p in data.rglob("*")}
        assert any(n.endswith("-wal") for n in written) and any(n.endswith(".log") for n in written)
        assert open_to_others(data) == []
