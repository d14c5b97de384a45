"""Lab power control: a node frozen and thawed through its freezer cgroup, and switched
off and on through its own BMC (ipmi_sim) by the controller's BMC client. Uses the
session lab's last spare node and leaves it powered on and usable."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.ha.bmc import Bmc, BmcError
from lab import bmc
from lab.main import Lab
from lab.node import (
    LabNode,
    freeze,
    frozen,
    pids,
    powered,
    ssh_answers,
    thaw,
    wait_ready,
)
from tests.e2e.region import wait_for

pytestmark = pytest.mark.e2e


def _client(node: LabNode) -> Bmc:
    host, port, user, password = bmc.credentials(node)
    return Bmc(node.name, host, port, user, password)


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, D, Z, ...), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


@pytest.fixture
def spare(lab3: Lab) -> Iterator[LabNode]:
    """The lab's last node, powered on and answering again afterwards."""
    node = lab3.nodes[-1]
    assert ssh_answers(node)
    try:
        yield node
    finally:
        bmc.clear_fault(node)
        if not bmc.is_running(node):
            lab3.start_bmc(node)
        if frozen(node):
            thaw(node)
        if not powered(node):
            _client(node).power_on()
        lab3.reload_power()
        wait_ready(node)


def test_a_frozen_node_answers_nothing_until_thawed(spare: LabNode) -> None:
    freeze(spare)
    try:
        assert frozen(spare)
        inside = pids(spare)
        assert len(inside) > 5  # nspawn, systemd, journald, sshd, libvirtd, ...
        # the v1 freezer parks each task uninterruptibly: /proc shows D for every one
        assert {pid: _state(pid) for pid in inside} == dict.fromkeys(inside, "D")
        assert not ssh_answers(spare)
        assert powered(spare)  # hung, not dead
        assert sorted(pids(spare)) == sorted(inside)  # nothing ends, nothing starts
    finally:
        thaw(spare)
    assert ssh_answers(spare)


def test_bmc_power_off_cuts_every_process_and_power_on_boots_again(
        lab3: Lab, spare: LabNode) -> None:
    client = _client(spare)
    assert client.power_state() == "on"
    inside = pids(spare)
    client.power_off()
    assert client.power_state() == "off"
    assert not powered(spare)
    assert not any(_alive(pid) for pid in inside)
    assert not ssh_answers(spare)
    client.power_on()
    lab3.reload_power()
    assert wait_ready(spare) in ("running", "degraded")
    assert client.power_state() == "on"
    assert ssh_answers(spare)


def test_a_bmc_that_ignores_power_off_reports_off_while_the_node_runs(
        spare: LabNode) -> None:
    bmc.set_fault(spare, ignore_power_off=True)
    client = _client(spare)
    client.power_off()  # the mis-wired BMC confirms
    assert client.power_state() == "off"
    assert powered(spare)
    assert ssh_answers(spare)
    bmc.clear_fault(spare)
    client.power_on()
    assert client.power_state() == "on"


def test_a_stopped_bmc_does_not_answer_and_answers_once_started(
        lab3: Lab, spare: LabNode) -> None:
    lab3.stop_bmc(spare)
    with pytest.raises(BmcError, match=f"BMC of node {spare.name} at .* did not answer"):
        _client(spare).power_state()
    assert powered(spare)  # the BMC is gone, not the node
    lab3.start_bmc(spare)
    status = subprocess.run(
        [sys.executable, "-m", "lab", "power", spare.name, "status",
         "--state", str(lab3.state)], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "Chassis Power is on" in status.stdout


def test_a_held_power_off_waits_until_the_switch_is_cleared(spare: LabNode) -> None:
    bmc.set_fault(spare, hold=True)
    client = _client(spare)
    with pytest.raises(BmcError, match=f"BMC of node {spare.name} at .* did not answer"):
        client.power_off()  # ipmi_sim waits on its chassis control: it answers nothing
    assert powered(spare)
    assert ssh_answers(spare)
    bmc.clear_fault(spare)
    wait_for(lambda: not powered(spare), 60, f"the held power off of {spare.name} to run")
    assert client.power_state() == "off"
