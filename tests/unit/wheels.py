"""Wheels made by tests for a local package index (a ``--find-links`` directory), so pip needs no network (unit
and integration tests)."""

from __future__ import annotations

import pathlib
import zipfile
from collections.abc import Sequence


def wheel(links: pathlib.Path, name: str, version: str, *, requires: Sequence[str] = (),
          tag: str = "py3-none-any") -> pathlib.Path:
    """A minimal wheel of ``name`` ``version`` (one module) in ``links``, needing ``requires`` (with markers)."""
    dist = f"{name}-{version}.dist-info"
    members = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    members[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in members) + f"{dist}/RECORD,,\n"
    links.mkdir(parents=True, exist_ok=True)
    path = links / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in members.items():
            archive.writestr(member, text)
    return path


def local_index(links: pathlib.Path) -> pathlib.Path:
    """The packages the deploy-check tests resolve against, in ``links``:

    - ``kilnpure`` 1.0: pure Python, needs ``kilnold`` only on Python < 3.12 (and ``kilnold`` is not there);
    - ``kilnnew`` 1.0: a wheel for CPython 3.13 only;
    - ``kilnbroken`` 1.0: needs ``kilnmissing``, which is not there.
    """
    wheel(links, "kilnpure", "1.0", requires=['kilnold; python_version < "3.12"'])
    wheel(links, "kilnnew", "1.0", tag="cp313-cp313-manylinux_2_17_x86_64")
    wheel(links, "kilnbroken", "1.0", requires=["kilnmissing>=1"])
    return links
