"""Scale to zero: a scaled-to-zero version's first request through the router, and an idle host's memory.

One run on one machine, a cluster on loopback (nats-server, the control plane, a router, one runtime host whose
managers idle out after 1 s):

- cold start: the hello-world app (``bench/hello``) and a small Flask app (``bench/flaskapp``), each deployed
  and then, ``--rounds`` times, left until its manager has exited (scaled to zero) and asked once through the
  router: that request's latency (router -> demand -> host -> manager -> instance -> answer); beside it, in the
  same rounds, the same app's warm latency (``--warm`` requests right after) — p50 of each and their ratio;
- an idle host's memory with 20 deployed versions, and how long the host then takes to stop with the 20 resident
  versions' managers: the resident memory of the runtime host and everything it
  started, with 20 versions on App Engine's default scaling (they scale to zero: nothing runs), against the same
  20 versions asking for a resident instance each (``automatic_scaling: min_instances: 1``: what every version
  cost before scaling to zero: a manager and an instance each, on every host).

Usage::

    .venv/bin/python bench/coldstart_bench.py [--rounds 10] [--warm 10] [--versions 20]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy import cli  # noqa: E402
from deploy.control import tokens  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402

ADMIN_SECRET = "bench-admin-secret"
SERVICE_SECRET = "bench-service-secret"
DOMAIN = "bench.test"
HELLO = ROOT / "bench" / "hello"
FLASK = ROOT / "bench" / "flaskapp"


def _env(nats_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(KILN_CONTROL_ADMIN_SECRET=ADMIN_SECRET, KILN_CONTROL_SERVICE_SECRET=SERVICE_SECRET,
               KILN_MANAGER_SERVICE_SECRET=SERVICE_SECRET, KILN_ROUTER_SESSION_SECRET="bench-session-secret",
               KILN_MANAGER_NATS_URL=nats_url,
               KILN_ROUTER_CONTROL_TOKEN=tokens.mint(ADMIN_SECRET, "*", "read", "router"),
               KILN_HOST_CONTROL_TOKEN=tokens.mint(ADMIN_SECRET, "*", "read", "host"))
    return env


def _get(router: str, app: str) -> tuple[int, float]:
    host, _, port = router.rpartition(":")
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("GET", "/", headers={"Host": f"{app}.{DOMAIN}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, (time.perf_counter() - started) * 1000
    finally:
        conn.close()


def _managers(app: str, under: pathlib.Path) -> list[int]:
    """PIDs of runtime.manager processes of ``app`` whose run directory is under ``under`` (this run's host: other
    runs on the machine may have an app of the same name)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "runtime.manager" in argv and "--app-id" in argv and argv[argv.index("--app-id") + 1] == app and \
                argv[argv.index("--run-dir") + 1].startswith(str(under)):
            found.append(int(pid))
    return found


def _tree_rss_mib(root_pid: int) -> float:
    """Resident memory of a process and all its descendants (from /proc), in MiB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(pid))
        rss[int(pid)] = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    total, todo = 0, [root_pid]
    while todo:
        found = todo.pop()
        total += rss.get(found, 0)
        todo += children.get(found, [])
    return total / 1024


def _wait(predicate, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"coldstart_bench: timed out waiting for {what}")
        time.sleep(0.1)


def _deploy(control: str, app: str, source: pathlib.Path, tmp: pathlib.Path, version: str = "v1",
            extra: str = "") -> None:
    app_dir = tmp / f"{app}-{version}"
    shutil.copytree(source, app_dir, dirs_exist_ok=True)  # again after a refused deploy
    if extra:  # lines for app.yaml's automatic_scaling
        text = (app_dir / "app.yaml").read_text()
        if "automatic_scaling:\n" in text:
            text = text.replace("automatic_scaling:\n", "automatic_scaling:\n" + extra, 1)
        else:
            text = text.replace("handlers:", "automatic_scaling:\n" + extra + "handlers:", 1)
        (app_dir / "app.yaml").write_text(text)
    deadline = time.monotonic() + 60
    while cli.main(["deploy", str(app_dir), "--app", app, "--version", version, "--control-plane", control,
                    "--token", tokens.mint(ADMIN_SECRET, app, "admin", "bench"), "--json"]) != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"coldstart_bench: kiln deploy of {app} {version} failed")
        time.sleep(0.5)  # no live runtime host has reported itself yet


# The stages of a cold start, each ending at the first log line (at or after the request was sent) that matches:
# (stage, log file pattern under the run directories, text of the line).
STAGES = (
    ("router -> demand -> host takes it", "run/host.log", "wanted: starting its manager here"),
    ("manager process up (Python, imports)", "host/{app}-v1.1.log", "managing version"),
    ("manager prepares, connects, spawns", "host/{app}-v1.1.log", "starting instance"),
    ("instance up (Python, imports, SDK)", "host/{app}/v1.1/instance-*.log", "] "),
    ("instance loads, connects, subscribes", "host/{app}/v1.1/instance-*.log", "serving"),
)


def _logged_at(tmp: pathlib.Path, pattern: str, text: str, since: float) -> float | None:
    """The time of the first line containing ``text`` logged at or after ``since`` in the files ``pattern`` names."""
    found = []
    for path in tmp.glob(pattern):
        for line in path.read_text(errors="replace").splitlines():
            if text in line:
                try:
                    at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                except ValueError:
                    continue
                if at >= since - 0.001:
                    found.append(at)
    return min(found, default=None)


def _breakdown(tmp: pathlib.Path, app: str, sent: float, answered: float) -> dict[str, float]:
    """Milliseconds of each stage of one cold start (from the parts' logs; log times have millisecond steps)."""
    out, last = {}, sent
    for stage, pattern, text in STAGES:
        at = _logged_at(tmp, pattern.format(app=app), text, last)
        if at is None:
            return {}
        out[stage], last = (at - last) * 1000, at
    out["first request answered"] = (answered - last) * 1000
    return out


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (seconds)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(root_pid: int) -> list[int]:
    """A process and all its descendants (an instance in a PID namespace runs under its wrapper)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(parent, []).append(int(pid))
    found, todo = [], [root_pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _start_cpu(tmp: pathlib.Path, app: str) -> dict[str, float]:
    """CPU milliseconds the version's manager and its instance have used (right after the first request: their
    start), which the machine's load does not stretch as it stretches their wall time."""
    managers = _managers(app, tmp / "host")
    state = json.loads((tmp / "host" / app / "v1.1" / "instances.json").read_text() or "[]")
    return {"manager CPU": sum(map(_cpu_seconds, managers)) * 1000,
            "instance CPU": sum(_cpu_seconds(p) for i in state for p in _tree(i["pid"])) * 1000}


def cold_and_warm(router: str, app: str, rounds: int, warm: int,
                  tmp: pathlib.Path) -> tuple[list[float], list[float], list[dict[str, float]]]:
    cold, hot, stages = [], [], []
    for n in range(rounds):
        _wait(lambda: not _managers(app, tmp / "host"), 120, f"{app} to scale to zero")
        sent = time.time()
        status, ms = _get(router, app)
        if status != 200:
            raise SystemExit(f"coldstart_bench: {app}'s cold request got {status}")
        cold.append(ms)
        stages.append({**_breakdown(tmp, app, sent, time.time()), **_start_cpu(tmp, app)})
        hot += [_get(router, app)[1] for _ in range(warm)]
        print(f"  {app} round {n + 1}: cold {ms:.0f} ms, warm p50 {statistics.median(hot[-warm:]):.1f} ms; "
              + ", ".join(f"{k} {v:.0f}" for k, v in stages[-1].items()), flush=True)
    return cold, hot, stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--skip-cold-starts", action="store_true", help="measure only the idle host's memory")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-coldstart-"))
    sup = Supervisor(tmp / "run")
    try:
        nats_url = f"nats://{sup.start_nats(tmp / 'nats').address}"
        env = _env(nats_url)
        ready = tmp / "run" / "control.addr"
        control = sup.start("control", python_module(
            "deploy.control", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--data-dir", str(tmp / "control"),
            "--ready-file", str(ready)), env=env, ready_file=ready).address
        ready = tmp / "run" / "router.addr"
        router = sup.start("router", python_module(
            "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", DOMAIN, "--control-plane",
            control, "--cache-dir", str(tmp / "router-cache"), "--pending-timeout-seconds", "60", "--ready-file",
            str(ready)), env=env, ready_file=ready).address
        host = sup.spawn("host", python_module(
            "runtime.host", "--control-plane", control, "--name", "bench", "--run-dir", str(tmp / "host"),
            "--cache-dir", str(pathlib.Path.home() / ".cache" / "kiln"), "--manager-arg=--isolation=none",
            "--manager-arg=--idle-seconds=1", "--", "--listen", "127.0.0.1:0"), env=env)
        for app, source in () if args.skip_cold_starts else (("hello", HELLO), ("flask", FLASK)):
            _deploy(control, app, source, tmp)
        results = {}
        for app in () if args.skip_cold_starts else ("hello", "flask"):
            _get(router, app)  # the first start installs the version's libraries: not a cold start of an instance
            results[app] = cold_and_warm(router, app, args.rounds, args.warm, tmp)
        if results:
            print("\ncold start through the router (p50 of rounds), against the same app's warm p50:")
        for app, (cold, hot, stages) in results.items():
            c, w = statistics.median(cold), statistics.median(hot)
            print(f"  {app:6s} cold p50 {c:7.0f} ms (min {min(cold):.0f}, max {max(cold):.0f}); "
                  f"warm p50 {w:6.1f} ms; cold/warm {c / w:.0f}x")
            for stage in stages[0] if stages and all(stages) else ():
                print(f"         {stage:40s} p50 {statistics.median(s[stage] for s in stages):6.0f} ms")
        _wait(lambda: not _managers("hello", tmp) and not _managers("flask", tmp), 120, "the apps to scale to zero")
        for n in range(args.versions):
            _deploy(control, "idle", HELLO, tmp, version=f"v{n}")
        host_log = tmp / "run" / "host.log"
        _wait(lambda: sum("app idle: version v" in line and "runs nothing until" in line
                          for line in host_log.read_text(errors="replace").splitlines()) >= args.versions,
              60, "the host to hear of every idle version")
        idle_mib = _tree_rss_mib(host.proc.pid)
        resident = "  min_instances: 1\n"
        for n in range(args.versions):
            _deploy(control, "resident", HELLO, tmp, version=f"v{n}", extra=resident)
        _wait(lambda: len(_managers("resident", tmp)) >= args.versions, 600, "the resident versions' managers")
        _wait(lambda: all((tmp / "host" / "resident" / f"v{n}.1" / "manager.ready").exists()
                          for n in range(args.versions)), 600, "the resident versions to serve")
        resident_mib = _tree_rss_mib(host.proc.pid) - idle_mib
        print(f"\nan idle runtime host with {args.versions} deployed versions: {idle_mib:.0f} MiB resident "
              f"(the host and what it started); the same {args.versions} versions with a resident instance each "
              f"(the cost of every version before scaling to zero): +{resident_mib:.0f} MiB "
              f"({len(_managers('resident', tmp))} managers)")
        managers = len(_managers("resident", tmp))
        started = time.monotonic()
        host.proc.send_signal(signal.SIGTERM)
        host.proc.wait(120)
        print(f"stopping the runtime host with {managers} managers (SIGTERM to exit): "
              f"{time.monotonic() - started:.1f} s", flush=True)
    finally:
        sup.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
