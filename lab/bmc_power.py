"""The chassis control of a lab node's BMC: ipmi_sim runs it for each power request.

    python -m lab.bmc_power STATE NODE get power [boot ...]   -> "power:1" or "power:0"
    python -m lab.bmc_power STATE NODE set power 0|1 [reset 1] [boot X] ...

This is OpenIPMI's chassis-control contract: `get` prints `<parm>:<value>` per asked
parameter; `set` prints nothing and exits 0 on success, or prints the error on standard
output and exits non-zero. `reset` is a pulse (power cut, then on). ipmi_sim waits for
the program (and answers nothing else meanwhile), so power on only starts the node:
whoever switched it on waits for it to boot.

Power off cuts every process of exactly that node (`lab.node.power_cut`); power on
boots it again (`lab.node.start`) and records its new nspawn PID in lab.json. The fault
switches in the node's bmc/fault.json (`lab.bmc.set_fault`) are read on each call.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lab import bmc
from lab.main import Lab
from lab.node import LabNode, power_cut, powered, start

HOLD_POLL_S = 0.2
IGNORED_OFF = "ignored-power-off"  # marker: an ignored power off reads off until power on
HOLDING = "holding-power-off"  # marker: a power off waits on the hold switch now
CALLS_LOG = "calls.log"  # each request, timed


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m lab.bmc_power STATE NODE get|set PARM [VALUE] ...")
        return 2
    state, name, op, args = Path(argv[0]), argv[1], argv[2], argv[3:]
    lab = Lab.load(state)
    node = next((n for n in lab.nodes if n.name == name), None) if lab else None
    if lab is None or node is None:
        print(f"no node {name} in the lab recorded in {state}")
        return 1
    began = time.time()
    try:
        if op == "get":
            for parm in args:
                print(f"{parm}:{_get(node, parm)}")
            return 0
        if op == "set":
            if len(args) % 2:
                print(f"no value for {args[-1]}")
                return 1
            for parm, value in zip(args[::2], args[1::2], strict=True):
                _set(lab, node, parm, value)
            return 0
    except (RuntimeError, OSError, ValueError) as e:
        print(f"node {name}: {e}")
        return 1
    finally:
        _note(node, began, argv[2:])
    print(f"unknown operation {op}")
    return 1


def _note(node: LabNode, began: float, request: list[str]) -> None:
    """One line per request in the BMC's calls.log (when it began, how long it took):
    what a slow power off spent its time on."""
    took = time.time() - began
    stamp = time.strftime("%H:%M:%S", time.localtime(began)) + f".{int(began % 1 * 1000):03d}"
    try:
        with (bmc.folder(node) / CALLS_LOG).open("a") as log:
            log.write(f"{stamp} {' '.join(request)} took {took:.2f} s\n")
    except OSError:
        pass  # a diagnostic only: a BMC without its folder (a unit test) still answers


def _get(node: LabNode, parm: str) -> str:
    if parm == "power":
        ignored = (bmc.folder(node) / IGNORED_OFF).exists()
        return "1" if powered(node) and not ignored else "0"
    if parm == "boot":
        return "default"
    raise ValueError(f"cannot get {parm}")


def _set(lab: Lab, node: LabNode, parm: str, value: str) -> None:
    if parm == "power" and value == "0":
        _power_off(node)
    elif parm == "power" and value == "1":
        _power_on(lab, node)
    elif parm == "reset" and value == "1":
        _power_off(node)
        _power_on(lab, node)
    elif parm in ("boot", "identify", "reset", "shutdown"):
        return  # nothing to switch on a lab node
    else:
        raise ValueError(f"cannot set {parm} to {value}")


def _power_off(node: LabNode) -> None:
    holding = bmc.folder(node) / HOLDING
    try:
        while bmc.faults(node).get("hold"):
            holding.touch()  # a test sees the power off has reached the BMC
            time.sleep(HOLD_POLL_S)  # held until a test clears the switch
    finally:
        holding.unlink(missing_ok=True)
    if bmc.faults(node).get("ignore_power_off"):
        (bmc.folder(node) / IGNORED_OFF).touch()
        return
    power_cut(node)


def _power_on(lab: Lab, node: LabNode) -> None:
    (bmc.folder(node) / IGNORED_OFF).unlink(missing_ok=True)
    if powered(node):
        return
    start(node)
    lab.save()  # the node's new nspawn PID


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
