"""pymemcache's own integration suite (from its source distribution on PyPI, at the version kiln pins) run against
Debian's memcached and against kiln's memcached text protocol: it passes whole on both.

The suite is not copied here: pip downloads the sdist into ~/.cache/kiln once, and pytest runs its
``-m integration`` tests in a child process, pointed at a server with the suite's own ``--server``/``--port``
options. Every test runs with plain sockets and with gevent's (the suite parametrises over both when gevent is
installed, as its CI does). Its TLS test is skipped by pymemcache itself (``pytest.mark.skip``, its issue 39).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest

from tests.integration.memcached_servers import start_kiln_text, start_memcached

pytestmark = pytest.mark.memcached

CACHE = pathlib.Path.home() / ".cache" / "kiln" / "pymemcache-sdist"
VERSION = importlib.metadata.version("pymemcache")  # the pinned client's own tests
EXPECTED_PASSED = 200  # 100 tests x {socket, gevent.socket}
UPSTREAM_SKIPPED = 6  # test_tls, skipped by pymemcache itself


def unpacked_suite() -> pathlib.Path:
    """The sdist's tree, downloaded and unpacked once per machine."""
    root = CACHE / f"pymemcache-{VERSION}"
    if (root / "pymemcache" / "test" / "test_integration.py").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                    f"pymemcache=={VERSION}", "-d", str(CACHE)], check=True, timeout=240)
    unpacking = pathlib.Path(tempfile.mkdtemp(dir=CACHE))  # then renamed whole: a concurrent run sees all or nothing
    with tarfile.open(CACHE / f"pymemcache-{VERSION}.tar.gz") as sdist:
        sdist.extractall(unpacking, filter="data")
    with contextlib.suppress(OSError):  # another run put it there first
        (unpacking / root.name).rename(root)
    shutil.rmtree(unpacking, ignore_errors=True)
    return root


def run_suite(port: int) -> dict[str, int]:
    root = unpacked_suite()
    # addopts cleared: the suite's setup.cfg asks for pytest-cov and only unit tests.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", "-o", "addopts=",
         "-m", "integration", "-q", "--timeout", "60", "pymemcache/test/test_integration.py",
         "--server", "127.0.0.1", "--port", str(port)],
        check=False, cwd=root, capture_output=True, text=True, timeout=280)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    print(f"pymemcache {VERSION} integration suite on port {port}: {summary}")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    return counts


@pytest.fixture(scope="module", params=["memcached", "kiln"])
def server_port(request, supervisor):
    start = start_memcached if request.param == "memcached" else start_kiln_text
    _, port = start(supervisor, f"pymemcache-suite-{request.param}")
    return port


def test_pymemcache_integration_suite_passes_whole(server_port):
    counts = run_suite(server_port)
    assert counts == {"passed": EXPECTED_PASSED, "skipped": UPSTREAM_SKIPPED}
