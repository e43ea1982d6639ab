"""ZIP files built in memory for the attachment tests (unit and against mail_svc)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping


def zipped(members: Mapping[str, str | bytes]) -> bytes:
    """A ZIP file holding ``members`` (name → content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def nested(depth: int, members: Mapping[str, str | bytes]) -> bytes:
    """``members`` in a ZIP file ``depth`` ZIP files deep (1: the attachment itself holds them)."""
    data = zipped(members)
    for level in range(depth - 1):
        data = zipped({"readme.txt": "hi", f"level{level}.zip": data})
    return data
