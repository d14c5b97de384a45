"""CLI of ports (a NIC's addresses reserved on a network, before or without a VM):
`vauban port create NETWORK`, `port list`, `port delete ID`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from controller.cli.client import Client
from controller.cli.formats import Col, Column, emit_list
from controller.cli.output import PROJECT_HELP, project_cell


def cmd_port_create(c: Client, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"network": a.network, "fixed_ips": a.ip or []}
    if a.security_group is not None:
        body["security_groups"] = a.security_group
    if a.project:
        body["project"] = a.project
    p = c.post("/ports", body)
    print(f"port {p['id']} created on network {p['network']} (project {p['project']}): "
          f"{p['mac']} {' '.join(p['addresses'])}")
    return 0


def cmd_port_list(c: Client, a: argparse.Namespace) -> int:
    return emit_list(a, c.get("/ports"), PORT_COLUMNS)


PORT_COLUMNS: list[Column] = [
    ("ID", "id"), Col("PROJECT", "project", project_cell), ("NETWORK", "network"),
    ("VM", "instance"), ("MAC", "mac"),
    Col("ADDRESSES", "addresses", lambda r: ",".join(r["addresses"])),
    Col("DHCP", "dhcp", lambda r: "yes" if r.get("dhcp") else "no"),
    Col("SECURITY GROUPS", "security_groups",
        lambda r: ",".join(r["security_groups"]) or "-")]


def cmd_port_delete(c: Client, a: argparse.Namespace) -> int:
    c.delete(f"/ports/{a.id}")
    print(f"port {a.id} deleted")
    return 0


def port_commands(sub: Any, add: Callable[..., Any]) -> None:
    po = sub.add_parser("port", help="ports (addresses reserved on a network)").add_subparsers(
        dest="cmd", required=True)
    cr = add(po, "create", cmd_port_create, "reserve a port on a network")
    cr.add_argument("network")
    cr.add_argument("--ip", action="append", metavar="IP",
                    help="a fixed address, at most one per subnet (repeatable)")
    cr.add_argument("--security-group", action="append", metavar="GROUP",
                    help="security group (repeatable; default: 'default')")
    cr.add_argument("--project", help=PROJECT_HELP)
    add(po, "list", cmd_port_list, "list ports", columns=PORT_COLUMNS)
    add(po, "delete", cmd_port_delete, "delete a port that no VM has").add_argument("id")
