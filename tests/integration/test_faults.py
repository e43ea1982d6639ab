"""The fault suite (bench/fault_suite.py), smaller: a kiln stack on loopback under a steady workload, each part
killed with SIGKILL in turn and restarted. Requests fail while a part is down; no acknowledged write may be lost,
and the system must serve every kind of request again after each fault.

Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import signal

import pytest

from bench import fault_suite
from kiln_platform.supervisor import Supervisor, python_module
from tests.integration.conftest import ROOT, runtime_env, service_env

# The whole module stays well under 3 minutes on 2 cores (the suite itself takes about a minute).
pytestmark = [pytest.mark.faults, pytest.mark.nats, pytest.mark.timeout(150)]

OPTIONS = fault_suite.Options(clients=2, warm=6, outage=4, outage_seconds=2.0, after=6, recover_seconds=45.0,
                              mail_seconds=30.0, seed=14)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return fault_suite.run_suite(fault_suite.Options(**{**OPTIONS.__dict__,
                                                        "work_dir": tmp_path_factory.mktemp("faults")}))


def phase(report, fault):
    [found] = [p for p in report.phases if p.fault == fault]
    return found


def test_every_fault_was_injected_in_order(report):
    assert [p.fault for p in report.phases] == ["none", *fault_suite.FAULTS]


@pytest.mark.parametrize("fault", fault_suite.FAULTS)
def test_acknowledged_writes_survive_the_fault(report, fault):
    found = phase(report, fault)
    assert found.acknowledged("put"), "no write was acknowledged in this phase: the check would prove nothing"
    assert (found.lost_puts, found.lost_mails, found.missing_reads) == ([], [], [])


@pytest.mark.parametrize("fault", fault_suite.FAULTS)
def test_the_system_serves_every_kind_of_request_again_after_the_fault(report, fault):
    found = phase(report, fault)
    assert {o.kind for o in found.after_restart if o.served} == set(fault_suite.KINDS)


@pytest.mark.parametrize("fault", fault_suite.FAULTS)
def test_once_recovered_no_request_fails(report, fault):
    found = phase(report, fault)
    assert found.after_recovery, "no request was sent after the recovery"
    assert [(o.kind, o.status, o.body) for o in found.after_recovery if not o.served] == []


@pytest.mark.parametrize("fault", fault_suite.FAULTS)
def test_every_served_request_has_its_request_log(report, fault):
    assert phase(report, fault).unlogged == 0


@pytest.mark.parametrize("fault", [f for f in fault_suite.FAULTS if f != "mail_svc"])
def test_acknowledged_mail_reaches_the_relay_exactly_once(report, fault):
    assert phase(report, fault).duplicated_mails == []


def test_killing_mail_svc_sends_again_at_most_the_mail_each_worker_had_just_handed_over(report):
    """SMTP's own window: killed between the relay's 250 and the record of it, a worker's mail goes out again."""
    assert len(phase(report, "mail_svc").duplicated_mails) <= fault_suite.MAIL_WORKERS


# --- stopping while nats-server is down -----------------------------------------------------------------------


def _nats_part(module, nats_url, tmp_path):
    """argv and environment of a part that keeps a NATS connection, started on its own."""
    ready = tmp_path / f"{module}.addr"
    common = ["--listen", "127.0.0.1:0", "--ready-file", str(ready)]
    if module == "runtime":
        return ready, runtime_env("stopping"), python_module(
            "runtime", "--app-dir", str(ROOT / "examples" / "guestbook"), "--app-id", "stopping",
            "--nats-url", nats_url, *common)
    if module == "router":
        return ready, service_env(), python_module("router", "--nats-url", nats_url, "--dev-app", "stopping=v1",
                                                   *common)
    extra = {"logs_svc": ["--data-dir", str(tmp_path / "data")],
             "mail_svc": ["--outbox-dir", str(tmp_path / "outbox")]}.get(module, [])
    return ready, service_env(), python_module(module, "--nats-url", nats_url, *common, *extra)


@pytest.mark.parametrize("module", ["mail_svc", "logs_svc", "cron_svc", "router", "runtime"])
def test_a_part_told_to_stop_while_nats_server_is_down_stops_cleanly(module, tmp_path):
    sup = Supervisor(tmp_path / "run")
    try:
        nats = sup.start_nats(tmp_path / "nats")
        ready, env, argv = _nats_part(module, f"nats://{nats.address}", tmp_path)
        part = sup.start(module, argv, env=env, ready_file=ready)
        nats.proc.send_signal(signal.SIGKILL)
        nats.proc.wait(10)
        assert fault_suite.wait_until(lambda: "nats disconnected" in part.log_path.read_text(), 30)
        part.proc.send_signal(signal.SIGTERM)
        code = part.proc.wait(30)
        output = part.log_path.read_text()
        assert (code, "Traceback" in output) == (0, False), output
    finally:
        sup.stop_all()
