"""CLI for HA: `vauban node bmc|fence|recover` and `vauban vm ha`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.cli.client import Client
from controller.cli.formats import emit_show


def _password(a: argparse.Namespace) -> str:
    """The BMC password from --password-file ('-': standard input), never an argument
    (it would show in the process list and the shell's history)."""
    text = sys.stdin.read() if a.password_file == "-" else Path(a.password_file).read_text()
    return text.rstrip("\n")


def cmd_bmc_set(c: Client, a: argparse.Namespace) -> int:
    bmc = c.put(f"/nodes/{a.name}/bmc", {"address": a.address, "port": a.port,
                                         "username": a.user, "password": _password(a)})
    print(f"node {a.name}: BMC {bmc['address']}:{bmc['port']} answered (power "
          f"{bmc['power_state']}); its password is kept sealed")
    return 0


def print_bmc(b: dict[str, Any]) -> None:
    print(f"{b['kind']} {b['address']}:{b['port']} as {b['username']} "
          f"(set {b['updated_at']})")


def cmd_bmc_show(c: Client, a: argparse.Namespace) -> int:
    return emit_show(a, c.get(f"/nodes/{a.name}/bmc"), print_bmc)


def cmd_bmc_unset(c: Client, a: argparse.Namespace) -> int:
    c.delete(f"/nodes/{a.name}/bmc")
    print(f"node {a.name}: BMC forgotten; if it is lost, its HA VMs wait for an operator")
    return 0


def cmd_fence(c: Client, a: argparse.Namespace) -> int:
    fo = c.post(f"/nodes/{a.name}/fence", {"confirm_powered_off": True})
    print(f"node {a.name}: power off confirmed by you; failover {fo['state']}: {fo['reason']}")
    return 0


def cmd_recover(c: Client, a: argparse.Namespace) -> int:
    c.post(f"/nodes/{a.name}/recover")
    print(f"node {a.name}: recovered; its Ceph blocklist entry is lifted and it takes VMs "
          "again")
    return 0


def cmd_vm_ha(c: Client, a: argparse.Namespace) -> int:
    vm = c.put(f"/instances/{a.name}/ha", {"enabled": a.state == "on"})
    said = "on: restarted on another node if its node is lost" if vm["ha"] else "off"
    print(f"VM {a.name}: HA {said}")
    return 0


def ha_node_commands(node: Any, add: Callable[..., Any]) -> None:
    bmc = node.add_parser("bmc", help="the node's BMC, to power it off when it is lost") \
        .add_subparsers(dest="bmc_cmd", required=True)
    st = add(bmc, "set", cmd_bmc_set, "set how to reach the node's BMC over IPMI (checked "
             "live)")
    st.add_argument("name")
    st.add_argument("--address", required=True, help="the BMC's IP address or DNS name")
    st.add_argument("--port", type=int, default=623)
    st.add_argument("--user", required=True)
    st.add_argument("--password-file", required=True, metavar="FILE",
                    help="a file holding the password ('-': standard input)")
    add(bmc, "show", cmd_bmc_show, "show the BMC settings (never the password)",
        show=True).add_argument("name")
    add(bmc, "unset", cmd_bmc_unset, "forget the node's BMC").add_argument("name")
    fence = add(node, "fence", cmd_fence, "vouch that a lost node's power is off, when its "
                "BMC cannot say so: its HA VMs are then restarted elsewhere")
    fence.add_argument("name")
    fence.add_argument("--confirm-powered-off", action="store_true", required=True,
                       help="you have cut its power yourself (audited under your name)")
    add(node, "recover", cmd_recover, "take a fenced node back once repaired (its Ceph "
        "blocklist entry is lifted; it takes VMs again)").add_argument("name")


def ha_vm_commands(vm: Any, add: Callable[..., Any]) -> None:
    sp = add(vm, "ha", cmd_vm_ha, "restart the VM on another node when its node is lost "
             "(on), or not (off)")
    sp.add_argument("name")
    sp.add_argument("state", choices=["on", "off"])
