"""The fault suite (bench/fault_suite.py), smaller: a kiln stack on loopback under a steady workload, each part
killed with SIGKILL in turn and restarted. Requests fail while a part is down; no acknowledged write may be lost,
and the system must serve every kind of request again after each fault.

Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import pytest

from bench import fault_suite

pytestmark = [pytest.mark.faults, pytest.mark.nats]

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


@pytest.mark.parametrize("fault", [f for f in fault_suite.FAULTS if f != "mail_svc"])
def test_acknowledged_mail_reaches_the_relay_exactly_once(report, fault):
    assert phase(report, fault).duplicated_mails == []
