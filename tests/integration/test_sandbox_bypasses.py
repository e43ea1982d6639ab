"""Ways around the Python sandbox, each tried by app code in a real instance (``kiln dev``, ``--isolation none``,
through router, NATS and runtime): every one is refused with a clear error and has no effect; and no secret of
kiln's is anywhere the app's process or user could read it."""

from __future__ import annotations

import json
import os
import pathlib
import textwrap

import pytest

from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import _imp, _posixsubprocess, _thread, concurrent.futures, ctypes, dbm, gc, importlib, io, json, os
    import pathlib, pkgutil, runpy, shelve, shutil, signal, socket, sqlite3, stat, subprocess, sys, sysconfig
    import tempfile, threading, traceback
    import kiln.runtime

    HERE = pathlib.Path(__file__).parent
    # kiln dev's data directory (under user isolation the app runs on a copy of its files, elsewhere).
    DATA = pathlib.Path((HERE / "kiln-data-dir.txt").read_text())
    RAN = []  # what threads the app tried to start managed to do
    GRPC_INIT = pathlib.Path(sysconfig.get_paths()["purelib"]) / "grpc" / "__init__.py"


    def ran():
        RAN.append("ran")


    def fork_exec(fn, marker):
        errpipe_read, errpipe_write = os.pipe()
        args = [b"/bin/sh", b"-c", b"touch " + str(marker).encode()]
        return fn(args, [b"/bin/sh"], True, (errpipe_write,), None, None, -1, -1, -1, -1, -1, -1,
                  errpipe_read, errpipe_write, True, False, -1, None, None, None, -1, None, False)


    def load_grpc_copy():
        spec = importlib.util.spec_from_file_location("grpc_copy", GRPC_INIT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


    def in_thread(action):
        """Run ``action`` on a thread the app starts; what it raised, or that it escaped."""
        out = []
        def run():
            try:
                action()
                out.append("escaped")
            except BaseException as exc:
                out.append(exc)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if isinstance(out[0], BaseException):
            raise out[0]


    def in_pool(action):
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(action).result()


    def after_clearing(clear, action):
        """``action`` after ``clear`` changed the request's state; the state is put back afterwards so that the
        instance keeps serving the other tests."""
        saved = os.environ, dict(kiln.runtime._local.__dict__), kiln.runtime.in_app_code
        try:
            clear()
            action()
        finally:
            os.environ, kiln.runtime.in_app_code = saved[0], saved[2]
            kiln.runtime._local.__dict__.update(saved[1])


    def clear_local():
        kiln.runtime._local.__dict__.clear()


    def replace_in_app_code():
        kiln.runtime.in_app_code = lambda: False


    def clear_environ():
        os.environ = {}
        kiln.runtime._local.environ = None


    def sock():
        socket.socket()


    ATTEMPTS = {
        # threads
        "thread-start-new-thread": lambda: _thread.start_new_thread(ran, ()),
        "thread-start-new": lambda: _thread.start_new(ran, ()),
        "threading-start-new-thread": lambda: threading._start_new_thread(ran, ()),
        "socket-in-app-thread": lambda: in_thread(sock),
        "mkfifo-in-app-thread": lambda: in_thread(lambda: os.mkfifo(HERE / "fifo-thread")),
        "socket-in-executor": lambda: in_pool(sock),
        "settrace-threads": lambda: threading.settrace(lambda *a: None),
        # the per-request environment cleared or replaced
        "socket-after-clearing-local": lambda: after_clearing(clear_local, sock),
        "socket-after-replacing-in-app-code": lambda: after_clearing(replace_in_app_code, sock),
        "socket-after-clearing-environ": lambda: after_clearing(clear_environ, sock),
        # processes
        "fork-exec": lambda: fork_exec(_posixsubprocess.fork_exec, HERE / "forked-1"),
        "subprocess-fork-exec": lambda: fork_exec(subprocess._fork_exec, HERE / "forked-2"),
        "posix-spawn": lambda: os.posix_spawn("/bin/true", ["true"], {}),
        "pty-spawn": lambda: __import__("pty").spawn(["/bin/true"]),
        "multiprocessing": lambda: __import__("multiprocessing").Process(target=ran).start(),
        "pidfd-open": lambda: os.pidfd_open(os.getppid()),
        "pidfd-send-signal": lambda: signal.pidfd_send_signal(0, signal.SIGTERM),
        # files
        "mkfifo": lambda: os.mkfifo(HERE / "fifo"),
        "mkfifo-tmp": lambda: os.mkfifo("/tmp/kiln-sandbox-fifo"),
        "mknod": lambda: os.mknod(HERE / "node", stat.S_IFIFO | 0o600),
        "sqlite-file": lambda: sqlite3.connect(str(HERE / "app.sqlite")),
        "sqlite-memory": lambda: sqlite3.connect(":memory:"),
        "io-fileio": lambda: io.FileIO(str(HERE / "fileio.txt"), "w"),
        "pathlib-write": lambda: (HERE / "pathlib.txt").write_text("x"),
        "shutil-copy": lambda: shutil.copy(HERE / "main.py", HERE / "copy.py"),
        "tempfile-mkstemp": lambda: tempfile.mkstemp(),
        "tempfile-dir": lambda: tempfile.TemporaryDirectory(),
        "dbm": lambda: dbm.open(str(HERE / "app.dbm"), "c"),
        "shelve": lambda: shelve.open(str(HERE / "app.shelve")),
        "shared-memory": lambda: __import__("multiprocessing.shared_memory").shared_memory.SharedMemory(
            name="kiln-sandbox-shm", create=True, size=16),
        "semaphore": lambda: __import__("_multiprocessing").SemLock(1, 1, 1, "/kiln-sandbox-sem", True),
        # reading other processes and kiln's files
        "parent-environ": lambda: open(f"/proc/{os.getppid()}/environ", "rb").read(),
        "parent-cmdline": lambda: pathlib.Path(f"/proc/{os.getppid()}/cmdline").read_bytes(),
        "parent-environ-via-self": lambda: open(f"/proc/self/../{os.getppid()}/environ", "rb").read(),
        "init-environ": lambda: os.open("/proc/1/environ", os.O_RDONLY),
        "parent-environ-at": lambda: os.open(f"{os.getppid()}/environ", os.O_RDONLY,
                                             dir_fd=os.open("/proc", os.O_RDONLY)),
        "parent-environ-opener": lambda: open("environ", "rb", opener=lambda path, flags: os.open(
            path, flags, dir_fd=os.open(f"/proc/{os.getppid()}", os.O_RDONLY))),
        "kiln-run-dir-at": lambda: os.open("run/router.addr", os.O_RDONLY,
                                           dir_fd=os.open(DATA, os.O_RDONLY)),
        "parent-memory": lambda: open(f"/proc/{os.getppid()}/mem", "rb"),
        "kiln-run-dir": lambda: (DATA / "run" / "router.addr").read_text(),
        "kiln-instances-json": lambda: (DATA / "run" / "instances" / "instances.json").read_text(),
        # ctypes
        "ctypes-dlopen": lambda: ctypes.CDLL(None),
        "ctypes-dlsym": lambda: ctypes.pythonapi.Py_GetVersion,
        "ctypes-string-at": lambda: ctypes.string_at(id(ATTEMPTS), 16),
        "ctypes-from-address": lambda: ctypes.c_char.from_address(id(ATTEMPTS)),
        "ctypes-addressof": lambda: ctypes.addressof(ctypes.c_int(1)),
        "ctypes-memmove": lambda: ctypes.memmove(ctypes.create_string_buffer(4), b"abcd", 4),
        "ctypes-memset": lambda: ctypes.memset(ctypes.create_string_buffer(4), 0, 4),
        "ctypes-cast": lambda: ctypes.cast(id(ATTEMPTS), ctypes.c_void_p),
        # the interpreter and kiln's objects in it
        "gc-objects": lambda: gc.get_objects(),
        "gc-referrers": lambda: gc.get_referrers(kiln.runtime),
        "gc-referents": lambda: gc.get_referents(kiln.runtime),
        "current-frames": lambda: sys._current_frames(),
        "settrace": lambda: sys.settrace(lambda *a: None),
        "setprofile": lambda: sys.setprofile(lambda *a: None),
        "rewrite-kiln-function": lambda: setattr(kiln.runtime.request_environ, "__code__", (lambda: None).__code__),
        "rewrite-kiln-defaults": lambda: setattr(kiln.runtime.request_environ, "__defaults__", ((),)),
        "recreate-posix": lambda: _imp.create_builtin(sys.modules["posix"].__spec__),
        "recreate-thread": lambda: _imp.create_builtin(sys.modules["_thread"].__spec__),
        "grpc-from-its-file": load_grpc_copy,
        "grpc-compiled-under-its-name": lambda: exec(compile(GRPC_INIT.read_text(), str(GRPC_INIT), "exec"), {}),
    }

    IMPORTS = {
        "import-statement": lambda: __import__("grpc"),
        "exec-import": lambda: exec("import grpc"),
        "eval-import": lambda: eval("__import__('grpc')"),
        "compile-import": lambda: exec(compile("import grpc", "<app>", "exec"), {}),
        "import-module": lambda: importlib.import_module("grpc"),
        "importlib-import": lambda: importlib.__import__("grpc"),
        "gcd-import": lambda: importlib._bootstrap._gcd_import("grpc"),
        "runpy": lambda: runpy.run_module("grpc.__init__"),
        "pkgutil": lambda: pkgutil.resolve_name("grpc"),
        "submodule": lambda: importlib.import_module("grpc._channel"),
        "nats": lambda: exec("import nats"),
        "yaml": lambda: importlib._bootstrap._gcd_import("yaml"),
    }


    def describe(exc):
        return {"error": type(exc).__name__, "message": str(exc), "permission": isinstance(exc, PermissionError),
                "import_error": isinstance(exc, ImportError)}


    def readable():
        """Everything of its own the app may read: its environments, its process's, its files."""
        texts = {"os.environ": json.dumps(dict(os.environ)),
                 "process environ": pathlib.Path("/proc/self/environ").read_bytes().decode("latin-1"),
                 "process cmdline": pathlib.Path("/proc/self/cmdline").read_bytes().decode("latin-1")}
        for path in HERE.rglob("*"):
            try:
                texts[str(path)] = path.read_bytes().decode("latin-1")
            except OSError:
                continue  # refused (kiln's data directory) or not a file
        for fd in os.listdir("/proc/self/fd"):
            try:
                texts[f"fd {fd}"] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
        return texts


    def app(environ, start_response):
        name = environ["PATH_INFO"].strip("/")
        if name == "ran":
            body = {"ran": RAN}
        elif name == "audit-hook":
            seen = []
            sys.addaudithook(lambda event, args: seen.append(event))  # Python drops the sandbox's refusal
            sys.audit("kiln.test.event")
            open(HERE / "main.py").close()
            body = {"seen": seen}
        elif name == "readable":
            body = readable()
        elif name == "left":  # what the app sees of its own directory, /tmp and /dev/shm (its own under user isolation)
            body = {"files": sorted(p.name for p in HERE.iterdir()),
                    "tmp-fifo": os.path.exists("/tmp/kiln-sandbox-fifo"),
                    "shm": sorted(n for n in os.listdir("/dev/shm") if "kiln-sandbox" in n)}
        elif name.startswith("import/"):
            try:
                module = IMPORTS[name.partition("/")[2]]()
                body = {"escaped": repr(module)}
            except Exception as exc:
                body = describe(exc)
        elif name in ATTEMPTS:
            try:
                ATTEMPTS[name]()
                body = {"escaped": True}
            except Exception as exc:
                body = describe(exc)
            body["modules"] = sorted(m for m in sys.modules if m.startswith("grpc_copy"))
        else:
            body = {"alive": True}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')

THREADS = ["thread-start-new-thread", "thread-start-new", "threading-start-new-thread"]
INHERITED = ["socket-in-app-thread", "mkfifo-in-app-thread", "socket-in-executor", "socket-after-clearing-local",
             "socket-after-replacing-in-app-code", "socket-after-clearing-environ"]
PROCESSES = ["fork-exec", "subprocess-fork-exec", "posix-spawn", "pty-spawn", "multiprocessing", "pidfd-open",
             "pidfd-send-signal"]
FILES = ["mkfifo", "mkfifo-tmp", "mknod", "sqlite-file", "sqlite-memory", "io-fileio", "pathlib-write",
         "shutil-copy", "tempfile-mkstemp", "tempfile-dir", "dbm", "shelve", "shared-memory", "semaphore"]
READS = ["parent-environ", "parent-cmdline", "parent-environ-via-self", "init-environ", "parent-environ-at",
         "parent-environ-opener", "parent-memory", "kiln-run-dir", "kiln-instances-json", "kiln-run-dir-at"]
NATIVE = ["ctypes-dlopen", "ctypes-dlsym", "ctypes-string-at", "ctypes-from-address", "ctypes-addressof",
          "ctypes-memmove", "ctypes-memset", "ctypes-cast"]
INTERPRETER = ["gc-objects", "gc-referrers", "gc-referents", "current-frames", "settrace", "setprofile",
               "settrace-threads", "rewrite-kiln-function", "rewrite-kiln-defaults", "recreate-posix",
               "recreate-thread", "grpc-from-its-file", "grpc-compiled-under-its-name"]
IMPORTS = ["import-statement", "exec-import", "eval-import", "compile-import", "import-module", "importlib-import",
           "gcd-import", "runpy", "pkgutil", "submodule", "nats", "yaml"]


@pytest.fixture(scope="module", params=["none", "user"])
def server(request, tmp_path_factory):
    """The app under ``kiln dev``, in both isolation modes: each escape must fail in the Python layer whatever
    the OS layer below it."""
    app_dir = tmp_path_factory.mktemp("bypasses")
    with running(app_dir, {"main.py": MAIN, "kiln-data-dir.txt": str(app_dir / "data")},
                 isolation=request.param) as srv:
        srv.app_dir = app_dir
        yield srv


def attempt(server, name):
    status, _, body = fetch(server, f"/{name}")
    assert status == 200, body
    return json.loads(body)


def assert_refused(result, rule=""):
    assert "escaped" not in result, result
    assert result["error"] == "SandboxError" and result["permission"] is True, result
    assert result["message"].startswith(f"kiln sandbox: apps cannot {rule}"), result


@pytest.mark.parametrize("name", THREADS)
def test_starting_a_thread_without_threading_is_refused_and_the_thread_never_runs(server, name):
    assert_refused(attempt(server, name), "start threads except with threading.Thread")
    assert attempt(server, "ran") == {"ran": []}


@pytest.mark.parametrize("name", INHERITED)
def test_threads_the_app_starts_and_cleared_request_state_stay_sandboxed(server, name):
    result = attempt(server, name)
    assert_refused(result)
    assert not (server.app_dir / "fifo-thread").exists()


@pytest.mark.parametrize("name", PROCESSES)
def test_every_way_to_start_or_signal_a_process_is_refused(server, name):
    assert_refused(attempt(server, name))
    assert not (server.app_dir / "forked-1").exists() and not (server.app_dir / "forked-2").exists()
    assert attempt(server, "ran") == {"ran": []}


@pytest.mark.parametrize("name", FILES)
def test_every_way_to_create_a_file_fifo_database_or_shared_memory_is_refused(server, name):
    before = set(os.listdir("/dev/shm"))
    assert_refused(attempt(server, name))
    seen = json.loads(fetch(server, "/left")[2])
    assert set(seen["files"]) - {"main.py", "app.yaml", "data", "kiln-data-dir.txt"} == set()
    assert not seen["tmp-fifo"] and seen["shm"] == []
    left = {p.name for p in server.app_dir.iterdir()} - {"main.py", "app.yaml", "data", "kiln-data-dir.txt"}
    assert not left, left
    assert not os.path.exists("/tmp/kiln-sandbox-fifo")
    assert not {n for n in set(os.listdir("/dev/shm")) - before if "kiln-sandbox" in n}


@pytest.mark.parametrize("name", READS)
def test_other_processes_and_kilns_own_files_cannot_be_read(server, name):
    result = attempt(server, name)
    assert_refused(result)
    assert "read" in result["message"]


@pytest.mark.parametrize("name", NATIVE)
def test_ctypes_cannot_load_native_code_or_address_memory(server, name):
    assert_refused(attempt(server, name))


@pytest.mark.parametrize("name", INTERPRETER)
def test_the_interpreters_objects_and_kilns_code_cannot_be_reached_this_way(server, name):
    result = attempt(server, name)
    assert_refused(result)
    assert result["modules"] == []  # no copy of gRPC was made


@pytest.mark.parametrize("name", IMPORTS)
def test_kilns_own_packages_cannot_be_imported_in_any_form(server, name):
    result = attempt(server, f"import/{name}")
    assert "escaped" not in result, result
    assert result["import_error"] is True, result
    assert "it is not part of the runtime apps see" in result["message"]


def test_an_audit_hook_of_the_apps_is_never_added(server):
    """Python drops any error an audit hook raises against a new hook, and leaves the new hook out."""
    assert attempt(server, "audit-hook") == {"seen": []}


def test_the_instance_keeps_serving_after_every_attempt(server):
    for name in [*THREADS, *PROCESSES, *FILES, *NATIVE, *INTERPRETER]:
        attempt(server, name)
    assert attempt(server, "still-alive") == {"alive": True}


def secret_values(server):
    values = [v for v in server.secrets.values() if v]
    assert len(values) >= 6  # service, both NATS secrets, inbound, platform, session
    return values


def test_nothing_the_app_can_read_holds_a_secret(server):
    texts = attempt(server, "readable")
    assert "process environ" in texts and any(name.endswith("main.py") for name in texts)
    for secret in secret_values(server):
        assert not [name for name, text in texts.items() if secret in text]


def test_no_process_environment_or_command_line_holds_a_secret(server):
    """Processes of the same user (root, here: every process) can read each other's environ and cmdline."""
    secrets = secret_values(server)
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for part in ("environ", "cmdline"):
            try:
                text = (entry / part).read_bytes().decode("latin-1")
            except OSError:
                continue  # the process ended
            found += [f"{entry.name}/{part}" for secret in secrets if secret in text]
    assert not found


def test_no_file_kiln_dev_wrote_holds_a_secret(server):
    secrets = secret_values(server)
    found = []
    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "instances.json" for p in files) and any(p.suffix == ".addr" for p in files)
    for path in files:
        data = path.read_bytes().decode("latin-1")
        found += [str(path) for secret in secrets if secret in data]
    assert not found
    assert not (server.data_dir / "session.key").exists()
    assert not list(server.run_dir.glob("*.conf"))


CALLBACK_MAIN = textwrap.dedent(r'''
    import json, logging, socket, threading, time

    SEEN = []


    class Handler(logging.Handler):
        """Runs wherever anything logs: also on the runtime's own event loop thread."""

        def emit(self, record):
            if threading.current_thread() is not threading.main_thread() or SEEN:
                return
            try:
                socket.socket()
                SEEN.append({"escaped": True})
            except Exception as exc:
                SEEN.append({"error": type(exc).__name__, "message": str(exc)})


    logging.getLogger().addHandler(Handler())


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            while True:  # past the deadline: the runtime logs that, on its event loop thread
                time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(SEEN).encode()]
''')


def test_app_code_run_on_the_runtimes_own_thread_is_still_sandboxed(tmp_path):
    from tests.integration.apps import wait_for

    with running(tmp_path / "callbacks", {"main.py": CALLBACK_MAIN}, request_deadline=1.0) as srv:
        status, _, _ = fetch(srv, "/slow")
        assert status == 500
        seen: list[dict[str, str]] = []

        def logged() -> bool:
            seen[:] = json.loads(fetch(srv, "/seen")[2])
            return bool(seen)

        wait_for(logged, 30)
    assert seen[0]["error"] == "SandboxError" and seen[0]["message"].startswith("kiln sandbox: apps cannot open")


# What the Python layer cannot close (runtime.sandbox's docstring), done by app code: each reaches the kernel, where
# the instance's seccomp filter (runtime.isolation.confine_syscalls) refuses it with EPERM, to no effect.
SYSCALL_MAIN = textwrap.dedent(r'''
    import _posixsubprocess, atexit, ctypes, errno, functools, json, operator, os, signal, stat, struct, sys
    import weakref

    MARKERS = "/tmp/kiln-seccomp-"  # the instance's own /tmp: the app reports what is there


    def original(guarded):
        """The function a sandbox guard wraps, from its closure."""
        return next(cell.cell_contents for cell in guarded.__closure__
                    if getattr(cell.cell_contents, "__name__", None) == guarded.__name__
                    and cell.cell_contents is not guarded)


    def touch_argv(name):
        return [b"/bin/sh", b"-c", b"touch " + (MARKERS + name).encode()]


    def fork_exec(fn):
        errpipe_read, errpipe_write = os.pipe()
        return fn(touch_argv("fork-exec"), [b"/bin/sh"], True, (errpipe_write,), None, None, -1, -1, -1, -1, -1, -1,
                  errpipe_read, errpipe_write, True, False, -1, None, None, None, -1, None, False)


    CLOSURES = {
        "mkfifo": lambda: original(os.mkfifo)(MARKERS + "fifo"),
        "mknod": lambda: original(os.mknod)(MARKERS + "node", stat.S_IFIFO | 0o600),
        "fork-exec": lambda: fork_exec(original(_posixsubprocess.fork_exec)),
        "pidfd-open": lambda: original(os.pidfd_open)(os.getpid()),
        "pidfd-send-signal": lambda: original(signal.pidfd_send_signal)(0, 0),
    }


    def libc(name, *argtypes):
        """libc's ``name`` called by its address (libc's base in /proc/self/maps plus the symbol's offset in its ELF
        file): a ctypes function made from an address, which no audit event reports."""
        for line in open("/proc/self/maps"):
            fields = line.split()
            if len(fields) == 6 and os.path.basename(fields[5]).startswith("libc.so") and int(fields[2], 16) == 0:
                path, base = fields[5], int(fields[0].split("-")[0], 16)
                break
        data = open(path, "rb").read()
        shoff, = struct.unpack_from("<Q", data, 0x28)
        entsize, count = struct.unpack_from("<HH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * entsize) for i in range(count)]
        for _, kind, _, _, offset, size, link, _, _, symsize in sections:
            if kind != 11:  # SHT_DYNSYM
                continue
            names = sections[link][4]
            for at in range(offset, offset + size, symsize):
                name_at, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, at)
                end = data.index(b"\0", names + name_at)
                if data[names + name_at:end] == name.encode() and value:
                    return ctypes.CFUNCTYPE(ctypes.c_int, *argtypes, use_errno=True)(base + value)
        raise LookupError(name)


    def libc_fork():
        pid = libc("fork")()
        if pid == 0:
            os._exit(0)
        return pid


    LIBC = {
        "fork": libc_fork,
        "execl": lambda: libc("execl")(b"/bin/sh", *touch_argv("execl")[1:], None),
        "mkfifo": lambda: libc("mkfifo", ctypes.c_char_p, ctypes.c_uint)((MARKERS + "libc-fifo").encode(), 0o600),
        "ptrace": lambda: libc("ptrace", ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long)(0, 0, 0, 0),
        "unshare": lambda: libc("unshare", ctypes.c_int)(0x10000000),  # CLONE_NEWUSER
        "kill-parent": lambda: libc("kill", ctypes.c_int, ctypes.c_int)(os.getppid(), 0),
    }

    # Set by /kiln-thread/start: what the runtime's memory watchdog calls on its event loop thread.
    COMMANDS = iter(())
    SAVED = {}


    def left():
        """Markers in /tmp, and the processes this instance's PID namespace holds besides its init and itself."""
        return {"markers": sorted(n for n in os.listdir("/tmp") if n.startswith("kiln-seccomp-")),
                "processes": sorted(set(p for p in os.listdir("/proc") if p.isdigit()) - {"1", str(os.getpid())})}


    class Kept:
        pass


    def describe(exc):
        return {"error": type(exc).__name__, "errno": errno.errorcode.get(getattr(exc, "errno", None) or 0),
                "message": str(exc)}


    def app(environ, start_response):
        global COMMANDS
        kind, _, name = environ["PATH_INFO"].strip("/").partition("/")
        if kind == "closure":
            try:
                body = {"escaped": CLOSURES[name]()}
            except Exception as exc:
                body = describe(exc)
        elif kind == "libc":
            result = LIBC[name]()
            body = {"result": result, "errno": errno.errorcode.get(ctypes.get_errno())}
        elif kind == "kiln-thread" and name == "start":
            # A built-in callback in place of a function of kiln's: it runs on kiln's event loop thread, no frame of
            # the app's on the stack (sum of bools keeps the "memory" it returns at most 1 MB).
            runtime_app = sys.modules["runtime.app"]
            COMMANDS = iter([b"touch " + (MARKERS + "kiln-thread").encode()])
            SAVED["rss_mb"] = runtime_app.rss_mb
            runtime_app.rss_mb = functools.partial(sum, map(bool, map(os.system, COMMANDS)))
            body = {"started": True}
        elif kind == "kiln-thread" and name == "ran":
            ran = operator.length_hint(COMMANDS) == 0
            if ran and "rss_mb" in SAVED:
                sys.modules["runtime.app"].rss_mb = SAVED.pop("rss_mb")
            body = {"ran": ran}
        elif kind == "atexit":
            # At exit, on the main thread, with no frame of the app's: each raises what the kernel answered.
            atexit.register(original(os.mkfifo), MARKERS + "atexit-fifo")
            atexit.register(os.execv, "/bin/sh", [s.decode() for s in touch_argv("atexit-exec")])
            SAVED["finalized"] = Kept()  # alive until exit, when weakref's own atexit hook runs its finalizer
            weakref.finalize(SAVED["finalized"], os.fork)
            body = {"registered": True}
        else:
            body = left()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')

CLOSURES = ["mkfifo", "mknod", "fork-exec", "pidfd-open", "pidfd-send-signal"]
LIBC = ["fork", "execl", "mkfifo", "ptrace", "unshare", "kill-parent"]


@pytest.fixture(scope="module", params=["none", "user"])
def confined(request, tmp_path_factory):
    with running(tmp_path_factory.mktemp("syscalls"), {"main.py": SYSCALL_MAIN}, isolation=request.param) as srv:
        yield srv


def get(server, path):
    status, _, body = fetch(server, path)
    assert status == 200, body
    return json.loads(body)


def assert_no_effect(server):
    assert get(server, "/left") == {"markers": [], "processes": []}


@pytest.mark.parametrize("name", CLOSURES)
def test_the_originals_in_the_guards_closures_are_refused_by_the_kernel(confined, name):
    result = get(confined, f"/closure/{name}")
    assert "escaped" not in result, result
    assert result["error"] == "PermissionError" and result["errno"] == "EPERM", result
    assert not result["message"].startswith("kiln sandbox"), result  # the kernel's answer, not the Python layer's
    assert_no_effect(confined)


@pytest.mark.parametrize("name", LIBC)
def test_libc_called_by_address_is_refused_by_the_kernel(confined, name):
    assert get(confined, f"/libc/{name}") == {"result": -1, "errno": "EPERM"}
    assert_no_effect(confined)


def test_a_builtin_callback_on_the_runtimes_own_thread_starts_no_process(confined):
    from tests.integration.apps import wait_for

    assert get(confined, "/kiln-thread/start") == {"started": True}
    wait_for(lambda: get(confined, "/kiln-thread/ran")["ran"], 30)  # os.system was called, on kiln's thread
    assert_no_effect(confined)


@pytest.mark.parametrize("isolation", ["none", "user"])
def test_callbacks_run_at_exit_are_refused_by_the_kernel(tmp_path, isolation):
    with running(tmp_path / "atexit", {"main.py": SYSCALL_MAIN}, isolation=isolation) as srv:
        assert get(srv, "/atexit") == {"registered": True}
        logs = srv.instances_dir
    text = "\n".join(p.read_text(errors="replace") for p in logs.glob("instance-*.log"))
    assert "Exception ignored in atexit callback: <built-in function mkfifo>" in text, text
    assert "Exception ignored in atexit callback: <built-in function execv>" in text, text
    refusals = text.count("PermissionError: [Errno 1] Operation not permitted")
    assert refusals == 3, text  # mkfifo, execv, and the finalizer's fork
    assert "/bin/sh" not in text and "kiln sandbox" not in text
