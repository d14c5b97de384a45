"""The lab BMC's chassis control keeps OpenIPMI's contract on its error side: a message
on standard output and a non-zero exit, never a traceback (ipmi_sim logs the output)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.bmc_power import main
from lab.main import Lab
from lab.node import LabNode


@pytest.fixture
def state(tmp_path: Path) -> Path:
    node = LabNode(name="u1", namespace="vauban-u-1", veth="vv-u-1",
                   address="10.250.0.11/24", folder=str(tmp_path / "nodes/u1"))
    Lab(state=tmp_path, name="u", subnet="10.250.0.0/24", root="/nonexistent",
        bridge="vb-u", nodes=[node], bmc_password="x").save()
    return tmp_path


@pytest.mark.parametrize(("argv", "said"), [
    (["u9", "get", "power"], "no node u9 in the lab recorded in"),
    (["u1", "frob", "power"], "unknown operation frob"),
    (["u1", "set", "power"], "no value for power"),
    (["u1", "set", "power", "2"], "cannot set power to 2"),
    (["u1", "get", "reset"], "cannot get reset"),
    (["u1", "get", "power"], "node u1 has no cgroup"),  # a lab from before power control
])
def test_errors_are_one_line_on_stdout_and_a_failed_exit(
        state: Path, argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(state), *argv]) == 1
    out = capsys.readouterr()
    assert said in out.out and out.err == ""


def test_boot_is_read_as_default_and_its_setting_accepted(
        state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(state), "u1", "get", "boot"]) == 0
    assert capsys.readouterr().out == "boot:default\n"
    assert main([str(state), "u1", "set", "boot", "pxe"]) == 0
    assert capsys.readouterr().out == ""
