"""`vauban`: the operator's command line for a region."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from controller import __version__
from controller.cli.account import account_commands, add_code_options, log_in
from controller.cli.audit import audit_commands
from controller.cli.client import ApiError, Client, Settings
from controller.cli.console import cmd_vm_console
from controller.cli.failures import print_failures
from controller.cli.fleet import fleet_commands
from controller.cli.formats import (
    Col,
    Column,
    GiB,
    MiB,
    add_list_filters,
    add_output_options,
    emit_list,
    emit_show,
    human_size,
    list_filters,
    one_of,
    pick_columns,
    size,
)
from controller.cli.ha import ha_vm_commands
from controller.cli.hardware import hardware_commands, parse_gpu_arg
from controller.cli.identity import identity_commands
from controller.cli.monitor import monitor_commands
from controller.cli.output import (
    PROJECT_HELP,
    add_wait_options,
    end_progress,
    print_json,
    progress_line,
    project_cell,
)
from controller.cli.ports import port_commands
from controller.cli.remotes import DEFAULT_URL, RemoteError, Store, remote_commands
from controller.cli.xcpng_check import xcpng_commands
from controller.states import InstanceState, VolumeState

Command = Callable[[Client, argparse.Namespace], int]


def cmd_login(_c: Client, a: argparse.Namespace) -> int:
    """Log in to the remote named by --remote (else the current one, else "default") and
    keep its token there; --url and --ca-file change the remote's. Nothing is saved when
    the login fails."""
    name, saved = Store.load().chosen(a.remote)
    url = a.url or (saved.url if saved else DEFAULT_URL)
    ca_file = os.path.abspath(a.ca_file) if a.ca_file else saved.ca_file if saved else None
    if a.password_file:
        password = Path(a.password_file).read_text().strip()
    elif sys.stdin.isatty():  # a person at a terminal: ask, without echoing what is typed
        password = getpass.getpass(f"password for {a.user} at {url}: ")
    else:
        password = sys.stdin.readline().strip()
    reply = log_in(Client(Settings(url=url, token=None, ca_file=ca_file)), a, password)
    Settings(url=url, token=reply["token"], ca_file=ca_file).save(name)
    print(f"logged in to {url} as {a.user} until {reply['expires_at']}")
    return 0


def cmd_status(c: Client, a: argparse.Namespace) -> int:
    s = c.get("/status")
    if a.json:
        print_json(s)
        return 0
    print(f"region API {c.settings.url} (vauban {s['version']}, database {s['database']})")
    print(f"nodes:      {s['nodes_up']} up, {s['nodes_down']} down")
    print(f"instances:  {s['instances']} ({s['instances_running']} running)")
    print(f"images:     {s['images']}")
    print(f"operations: {s['operations_pending']} in progress")
    print(f"CA SHA-256: {s['ca_sha256']}")
    st = s.get("storage") or {}
    print(f"storage:    {s['storage_driver']}, {st.get('health', 'not reported yet')}"
          + (f" ({st['detail']})" if st.get("detail") else ""))
    for p in st.get("pools", []):
        print(f"  pool {p['pool']}: {_size(p['used_bytes'])} used, "
              f"{_size(p['max_avail_bytes'])} available")
    return 0


IMAGE_COLUMNS: list[Column] = [
    ("NAME", "name"), Col("PROJECT", "project", project_cell), ("FORMAT", "disk_format"),
    size("SIZE", "size_bytes"), size("VIRTUAL SIZE", "virtual_size_bytes"), ("OS", "os"),
    ("ID", "id")]


def cmd_image_list(c: Client, a: argparse.Namespace) -> int:
    params = list_filters(a, "name", "project", "visibility")
    return emit_list(a, c.get("/images", params=params), IMAGE_COLUMNS)


def detect_format(path: Path) -> str:
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


class _Progress:
    """A file wrapper that reports how much was read, for the upload progress bar."""

    def __init__(self, f: BinaryIO, total: int, label: str) -> None:
        self.f, self.total, self.done, self.label = f, total, 0, label

    def __len__(self) -> int:
        return self.total

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n)
        self.done += len(chunk)
        progress_line(self.label, self.done * 100 // max(self.total, 1))
        return chunk


def cmd_image_import(c: Client, a: argparse.Namespace) -> int:
    path = Path(a.file)
    if not path.is_file():
        raise ApiError(0, f"{path} is not a file")
    name = a.name or path.stem
    try:  # refused before the upload: the server cannot answer mid-stream without a reset
        c.get(f"/images/{name}")
        raise ApiError(409, f"an image named '{name}' already exists")
    except ApiError as e:
        if e.status != 404:
            raise
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    params: dict[str, Any] = {"name": name, "disk_format": a.format or detect_format(path),
                              "sha256": h.hexdigest(), "min_disk_gib": a.min_disk}
    if a.os:
        params["os"] = a.os
    if a.firmware:
        params["firmware"] = a.firmware
    if a.secure_boot:
        params["secure_boot"] = "true"
    if a.project:
        params["project"] = a.project
    if a.public:
        params["public"] = "true"
    with open(path, "rb") as f:
        image = c.upload_image(_Progress(f, path.stat().st_size, f"uploading {name}"), params)  # type: ignore[arg-type]
    end_progress()
    print(f"image {image['name']} imported ({image['id']}, sha256 {image['sha256']})")
    return 0


def cmd_image_delete(c: Client, a: argparse.Namespace) -> int:
    c.delete(f"/images/{a.name}")
    print(f"image {a.name} deleted")
    return 0


def _follow(c: Client, op: dict[str, Any], wait: bool) -> int:
    if not wait:
        print(f"{op['kind']} of {op['target_name']} accepted: operation {op['id']}")
        return 0
    label = f"{op['kind'].split('.')[-1]} {op['target_name']}"
    c.wait(op, lambda o: progress_line(label, o["progress"]))
    end_progress()
    print(f"{label}: done")
    return 0


def cmd_vm_create(c: Client, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": a.name, "image": a.image, "vcpus": a.cpus,
                            "memory_mib": a.memory, "start": not a.no_start}
    if a.ha:
        body["ha"] = True
    if a.disk is not None:
        body["root_disk_gib"] = a.disk
    if a.hostname:
        body["hostname"] = a.hostname
    if a.user_data:
        body["user_data"] = Path(a.user_data).read_text()
    if a.ssh_key:
        body["ssh_keys"] = [Path(f).read_text() for f in a.ssh_key]
    if a.user:
        body["default_user"] = a.user
    for option in ("firmware", "machine", "disk_bus"):
        if getattr(a, option):
            body[option] = getattr(a, option)
    if a.secure_boot:
        body["secure_boot"] = True
    if a.node:
        body["node"] = a.node
    if a.network:
        body["networks"] = a.network
    if a.security_group:
        body["security_groups"] = a.security_group
    elif a.no_security_groups:
        body["security_groups"] = []
    if a.gpu:
        body["gpus"] = a.gpu
    if a.vgpu:
        body["vgpu"] = a.vgpu
    if a.project:
        body["project"] = a.project
    return _follow(c, c.post("/instances", body), a.wait)


VM_COLUMNS: list[Column] = [
    ("NAME", "name"), Col("PROJECT", "project", project_cell), ("STATE", "state"),
    ("NODE", "node_name"), ("IMAGE", "image_name"), ("VCPUS", "vcpus"),
    size("MEMORY", "memory_mib", MiB), Col("ERROR", "error", lambda r: r["error"] or "")]


def cmd_vm_list(c: Client, a: argparse.Namespace) -> int:
    params = list_filters(a, "name", "project", "node", "state")
    return emit_list(a, c.get("/instances", params=params), VM_COLUMNS)


def cmd_vm_show(c: Client, a: argparse.Namespace) -> int:
    return emit_show(a, c.get(f"/instances/{a.name}"), print_vm)


def print_vm(vm: dict[str, Any]) -> None:
    """The VM in a few lines: state, placement, NICs, and what failed on its node and why."""
    print(f"{vm['name']} ({vm['id']}): {vm['state']} (wanted {vm['desired_power']}) "
          f"on node {vm['node_name']}")
    print(f"image:   {vm['image_name']}, {vm['vcpus']} vCPUs, "
          f"{human_size(vm['memory_mib'] * MiB)} memory"
          + (f", root disk {human_size(vm['root_disk_gib'] * GiB)}" if vm["root_disk_gib"]
             else ""))
    for port in vm["ports"]:
        print(f"NIC:     {port['network']} {port['mac']} {' '.join(port['addresses'])}"
              + (" (IPv4 by DHCP)" if port.get("dhcp") else ""))
    for gpu in vm["gpus"]:
        print(f"GPU:     {gpu['address']} {gpu['model']}")
    if vm["console_log"]:
        print(f"console: {vm['console_log']} (serial log, on the node)")
    if vm["error"]:
        print(f"error:   {vm['error']}")
    print_failures(vm.get("failures") or [], "failures on its node")


def _vm_action(action: str) -> Command:
    def run(c: Client, a: argparse.Namespace) -> int:
        if action == "delete":
            return _follow(c, c.delete(f"/instances/{a.name}"), a.wait)
        if getattr(a, "force", False):  # stop, reboot: without --force no body at all
            return _follow(c, c.post(f"/instances/{a.name}/{action}", {"force": True}), a.wait)
        return _follow(c, c.post(f"/instances/{a.name}/{action}"), a.wait)
    return run


def cmd_vm_migrate(c: Client, a: argparse.Namespace) -> int:
    if a.cancel:
        if a.to or a.bandwidth is not None or a.max_downtime is not None:
            print("vauban: error: --cancel takes no --to, --bandwidth or --max-downtime",
                  file=sys.stderr)
            return 2
        op = c.delete(f"/instances/{a.name}/migrate")
        print(f"{a.name}: migration called off ({op['error']})")
        return 0
    body: dict[str, Any] = {}
    if a.to:
        body["to"] = a.to
    if a.bandwidth is not None:
        body["bandwidth_mib_s"] = a.bandwidth
    if a.max_downtime is not None:
        body["max_downtime_ms"] = a.max_downtime
    return _follow(c, c.post(f"/instances/{a.name}/migrate", body or None), a.wait)


def cmd_volume_create(c: Client, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": a.name, "size_gib": a.size}
    if a.pool:
        body["pool"] = a.pool
    if a.source:
        body["source"] = a.source
    if a.project:
        body["project"] = a.project
    return _follow(c, c.post("/volumes", body), a.wait)


VOLUME_COLUMNS: list[Column] = [
    ("NAME", "name"), Col("PROJECT", "project", project_cell), ("STATE", "state"),
    size("SIZE", "size_gib", GiB), size("USED", "used_bytes"), ("POOL", "pool"),
    Col("ATTACHED TO", "attached_to", lambda r: r["attached_to"] or ""),
    Col("TARGET", "target", lambda r: r["target"] or ""),
    Col("SNAPSHOTS", "snapshots", lambda r: ",".join(r["snapshots"]))]


def cmd_volume_list(c: Client, a: argparse.Namespace) -> int:
    params = list_filters(a, "name", "project", "state")
    return emit_list(a, c.get("/volumes", params=params), VOLUME_COLUMNS)


_size = human_size


def cmd_volume_show(c: Client, a: argparse.Namespace) -> int:
    return emit_show(a, c.get(f"/volumes/{a.name}"))


def cmd_volume_resize(c: Client, a: argparse.Namespace) -> int:
    return _follow(c, c.post(f"/volumes/{a.name}/resize", {"size_gib": a.size}), a.wait)


def cmd_volume_snapshot(c: Client, a: argparse.Namespace) -> int:
    if a.delete:
        return _follow(c, c.delete(f"/volumes/{a.name}/snapshots/{a.snapshot}"), a.wait)
    return _follow(c, c.post(f"/volumes/{a.name}/snapshots", {"name": a.snapshot}), a.wait)


def cmd_volume_rollback(c: Client, a: argparse.Namespace) -> int:
    return _follow(c, c.post(f"/volumes/{a.name}/rollback", {"snapshot": a.snapshot}), a.wait)


def cmd_volume_attach(c: Client, a: argparse.Namespace) -> int:
    body = {"instance": a.vm, **({"target": a.target} if a.target else {})}
    return _follow(c, c.post(f"/volumes/{a.name}/attach", body), a.wait)


def cmd_volume_detach(c: Client, a: argparse.Namespace) -> int:
    return _follow(c, c.post(f"/volumes/{a.name}/detach"), a.wait)


def cmd_volume_delete(c: Client, a: argparse.Namespace) -> int:
    return _follow(c, c.delete(f"/volumes/{a.name}"), a.wait)


def cmd_join_token_create(c: Client, a: argparse.Namespace) -> int:
    t = c.post("/join-tokens", {"description": a.description, "ttl_seconds": a.ttl})
    if a.json:
        print_json(t)
        return 0
    print(f"join token (valid until {t['expires_at']}, shown once):\n  {t['token']}")
    print("on the new node run:")
    print(f"  vauban-agent join --controller {c.settings.url} --token {t['token']} "
          f"--ca-sha256 {t['ca_sha256']} --name NODE-NAME")
    return 0


JOIN_TOKEN_COLUMNS: list[Column] = [
    ("ID", "id"), ("DESCRIPTION", "description"), ("STATE", "state"),
    ("CREATED", "created_at"), ("EXPIRES", "expires_at"),
    ("USED BY NODE", "used_by_node_id")]


def cmd_join_token_list(c: Client, a: argparse.Namespace) -> int:
    return emit_list(a, c.get("/join-tokens"), JOIN_TOKEN_COLUMNS)


def cmd_join_token_revoke(c: Client, a: argparse.Namespace) -> int:
    t = c.delete(f"/join-tokens/{a.id}")
    print(f"join token {t['id']} revoked: it can join no node")
    return 0


def cmd_operation_show(c: Client, a: argparse.Namespace) -> int:
    return emit_show(a, c.get(f"/operations/{a.id}"))


def cmd_network_create(c: Client, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": a.name, "kind": a.kind}
    for key in ("vlan", "physical", "mtu", "project", "xapi_network"):
        if getattr(a, key) is not None:
            body[key] = getattr(a, key)
    if a.subnet:
        body["subnets"] = [{"cidr": a.subnet, "gateway": a.gateway, "dns": a.dns or []}]
    elif a.gateway or a.dns:
        raise ApiError(0, "--gateway and --dns describe a --subnet")
    net = c.post("/networks", body)
    print(f"network {net['name']} created ({net['kind']}"
          + (f", VNI {net['vni']}" if net["vni"] else f", VLAN {net['vlan']} on "
             f"{net['physical']}") + f", MTU {net['mtu']})")
    return 0


def cmd_network_subnet(c: Client, a: argparse.Namespace) -> int:
    c.post(f"/networks/{a.name}/subnets", {"cidr": a.cidr, "gateway": a.gateway,
                                           "dns": a.dns or []})
    print(f"subnet {a.cidr} added to network {a.name}")
    return 0


NETWORK_COLUMNS: list[Column] = [
    ("NAME", "name"), Col("PROJECT", "project", project_cell), ("KIND", "kind"),
    ("SEGMENT", lambda r: f"vni {r['vni']}" if r["vni"] is not None
     else f"vlan {r['vlan']} on {r['physical']}"),
    ("MTU", "mtu"), ("SUBNETS", lambda r: ",".join(s["cidr"] for s in r["subnets"])),
    ("PORTS", "ports")]


def cmd_network_list(c: Client, a: argparse.Namespace) -> int:
    return emit_list(a, c.get("/networks"), NETWORK_COLUMNS)


def cmd_network_show(c: Client, a: argparse.Namespace) -> int:
    return emit_show(a, c.get(f"/networks/{a.name}"))


def cmd_network_delete(c: Client, a: argparse.Namespace) -> int:
    c.delete(f"/networks/{a.name}")
    print(f"network {a.name} deleted")
    return 0


def cmd_secgroup_create(c: Client, a: argparse.Namespace) -> int:
    body = {"name": a.name, "description": a.description,
            **({"project": a.project} if a.project else {})}
    g = c.post("/security-groups", body)
    print(f"security group {g['name']} created ({g['id']})")
    return 0


SECGROUP_COLUMNS: list[Column] = [
    ("NAME", "name"), Col("PROJECT", "project", project_cell),
    ("RULES", lambda r: len(r["rules"])), ("PORTS", "ports"), ("DESCRIPTION", "description"),
    ("ID", "id")]


def cmd_secgroup_list(c: Client, a: argparse.Namespace) -> int:
    return emit_list(a, c.get("/security-groups"), SECGROUP_COLUMNS)


def cmd_secgroup_show(c: Client, a: argparse.Namespace) -> int:
    return emit_show(a, c.get(f"/security-groups/{a.name}"))


def cmd_secgroup_delete(c: Client, a: argparse.Namespace) -> int:
    c.delete(f"/security-groups/{a.name}")
    print(f"security group {a.name} deleted")
    return 0


def cmd_secgroup_rule_add(c: Client, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"direction": a.direction, "ethertype": a.ethertype,
                            "protocol": a.protocol}
    if a.port:
        low, _, high = a.port.partition("-")
        try:
            body["port_min"] = int(low)
            body["port_max"] = int(high) if high else int(low)
        except ValueError:
            raise ApiError(0, f"--port {a.port}: write PORT or MIN-MAX") from None
    if a.remote_cidr:
        body["remote_cidr"] = a.remote_cidr
    if a.remote_group:
        body["remote_group"] = a.remote_group
    g = c.post(f"/security-groups/{a.group}/rules", body)
    print(f"rule {g['rules'][-1]['id']} added to security group {g['name']}")
    return 0


def cmd_secgroup_rule_delete(c: Client, a: argparse.Namespace) -> int:
    c.delete(f"/security-groups/{a.group}/rules/{a.rule_id}")
    print(f"rule {a.rule_id} deleted from security group {a.group}")
    return 0


def secgroup_commands(sub: Any, add: Callable[..., Any]) -> None:
    sg = sub.add_parser("security-group", help="security groups").add_subparsers(
        dest="cmd", required=True)
    cr = add(sg, "create", cmd_secgroup_create, "create a security group")
    cr.add_argument("name")
    cr.add_argument("--description", default="")
    cr.add_argument("--project", help=PROJECT_HELP)
    add(sg, "list", cmd_secgroup_list, "list security groups", columns=SECGROUP_COLUMNS)
    add(sg, "show", cmd_secgroup_show, "show a security group", show=True).add_argument("name")
    add(sg, "delete", cmd_secgroup_delete, "delete an unused security group").add_argument(
        "name")
    rule = sg.add_parser("rule", help="rules of a security group").add_subparsers(
        dest="rule_cmd", required=True)
    ra = add(rule, "add", cmd_secgroup_rule_add, "add an allow rule")
    ra.add_argument("group")
    ra.add_argument("--direction", choices=["ingress", "egress"], required=True)
    ra.add_argument("--protocol", choices=["any", "tcp", "udp", "icmp"], default="any")
    ra.add_argument("--port", metavar="PORT[-PORT]", help="tcp/udp: a port or a range")
    ra.add_argument("--ethertype", choices=["ipv4", "ipv6"], default="ipv4")
    remote = ra.add_mutually_exclusive_group()
    remote.add_argument("--remote-cidr", metavar="CIDR", help="peers in this network")
    remote.add_argument("--remote-group", metavar="GROUP", help="peers in this group")
    rd = add(rule, "delete", cmd_secgroup_rule_delete, "delete a rule")
    rd.add_argument("group")
    rd.add_argument("rule_id")


def network_commands(sub: Any, add: Callable[..., Any]) -> None:
    net = sub.add_parser("network", help="networks").add_subparsers(dest="cmd", required=True)
    cr = add(net, "create", cmd_network_create, "create a network")
    cr.add_argument("name")
    cr.add_argument("--kind", choices=["tenant", "provider"], required=True,
                    help="tenant: VXLAN overlay; provider: a VLAN of a physical interface")
    cr.add_argument("--vlan", type=int, help="provider: VLAN id (1-4094)")
    cr.add_argument("--physical", help="provider: interface or bond carrying the VLAN")
    cr.add_argument("--xapi-network", metavar="NAME", help="provider: the XCP-ng pool "
                    "network its pools' VMs join")
    cr.add_argument("--mtu", type=int, help="default: 1450 tenant, 1500 provider")
    cr.add_argument("--subnet", metavar="CIDR", help="a first subnet, IPv4 or IPv6")
    cr.add_argument("--gateway", metavar="IP", help="the subnet's router")
    cr.add_argument("--dns", metavar="IP", action="append", help="name server (repeatable)")
    cr.add_argument("--project", help="tenant: " + PROJECT_HELP)
    sn = add(net, "add-subnet", cmd_network_subnet, "add a subnet to a network")
    sn.add_argument("name")
    sn.add_argument("cidr")
    sn.add_argument("--gateway", metavar="IP")
    sn.add_argument("--dns", metavar="IP", action="append")
    add(net, "list", cmd_network_list, "list networks", columns=NETWORK_COLUMNS)
    add(net, "show", cmd_network_show, "show a network", show=True).add_argument("name")
    add(net, "delete", cmd_network_delete, "delete a network without ports").add_argument("name")


def volume_commands(sub: Any, add: Callable[..., Any]) -> None:
    vol = sub.add_parser("volume", help="block volumes").add_subparsers(dest="cmd", required=True)

    def with_wait(sp: Any) -> Any:
        add_wait_options(sp)
        return sp

    cr = with_wait(add(vol, "create", cmd_volume_create, "create a volume"))
    cr.add_argument("name")
    cr.add_argument("--size", type=int, required=True, help="GiB")
    cr.add_argument("--pool")
    cr.add_argument("--from", dest="source", metavar="VOLUME@SNAPSHOT", help="clone a snapshot")
    cr.add_argument("--project", help=PROJECT_HELP)
    add_list_filters(add(vol, "list", cmd_volume_list, "list volumes", columns=VOLUME_COLUMNS),
                     name="only the one so named", project="only those of this project",
                     state=f"only those in this state: {one_of(VolumeState)}")
    add(vol, "show", cmd_volume_show, "show a volume", show=True).add_argument("name")
    rs = with_wait(add(vol, "resize", cmd_volume_resize, "grow a volume"))
    rs.add_argument("name")
    rs.add_argument("--size", type=int, required=True, help="new size, GiB")
    sn = with_wait(add(vol, "snapshot", cmd_volume_snapshot, "take (or --delete) a snapshot"))
    sn.add_argument("name")
    sn.add_argument("snapshot")
    sn.add_argument("--delete", action="store_true")
    rb = with_wait(add(vol, "rollback", cmd_volume_rollback, "roll back to a snapshot"))
    rb.add_argument("name")
    rb.add_argument("snapshot")
    at = with_wait(add(vol, "attach", cmd_volume_attach, "attach to a running VM"))
    at.add_argument("name")
    at.add_argument("--vm", required=True)
    at.add_argument("--target", help="guest disk, e.g. vdc (default: next free)")
    with_wait(add(vol, "detach", cmd_volume_detach, "detach from its VM")).add_argument("name")
    with_wait(add(vol, "delete", cmd_volume_delete, "delete a volume")).add_argument("name")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vauban", description=__doc__)
    p.add_argument("--version", action="version", version=f"vauban {package_version()}")
    p.add_argument("--remote", metavar="NAME", help="the region of this command (a name "
                   "from 'vauban remote list'; default: the current one)")
    sub = p.add_subparsers(dest="group", required=True)

    def add(parent: Any, name: str, func: Command, help_: str, json_: bool = False,
            columns: Sequence[Column] | None = None, show: bool = False) -> Any:
        """A command; a list (`columns`) or a show gets -o/-c/--json, another with
        `json_` gets --json alone."""
        sp = parent.add_parser(name, help=help_)
        sp.set_defaults(func=func)
        if columns is not None or show:
            add_output_options(sp, columns)
        elif json_:
            sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    lg = add(sub, "login", cmd_login, "log in and save a token (for the remote named by "
             "--remote, else the current one)")
    lg.add_argument("--url", help="the controller (default: the remote's, else "
                    f"{DEFAULT_URL})")
    lg.add_argument("--user", default="admin")
    lg.add_argument("--password-file", help="file holding the password (default: asked "
                    "without echo on a terminal, else read from stdin)")
    lg.add_argument("--ca-file", help="region CA certificate to verify the controller")
    add_code_options(lg)
    add(sub, "status", cmd_status, "the region at a glance", json_=True)

    hardware_commands(sub, add)
    xcpng_commands(sub, add)
    fleet_commands(sub, add)
    users = identity_commands(sub, add)

    image = sub.add_parser("image", help="images").add_subparsers(dest="cmd", required=True)
    add_list_filters(add(image, "list", cmd_image_list, "list images", columns=IMAGE_COLUMNS),
                     name="only the one so named", project="only those of this project",
                     visibility="public: only the shared ones; project: only a project's")
    imp = add(image, "import", cmd_image_import, "upload an image file")
    imp.add_argument("file")
    imp.add_argument("--name", help="default: the file name without extension")
    imp.add_argument("--format", choices=["raw", "qcow2"], help="default: detected")
    imp.add_argument("--os")
    imp.add_argument("--min-disk", type=int, default=1, help="GiB")
    imp.add_argument("--firmware", choices=["bios", "uefi", "bios,uefi"],
                     help="the firmware it boots with (default: bios)")
    imp.add_argument("--secure-boot", action="store_true",
                     help="its boot chain is signed for Secure Boot")
    owner = imp.add_mutually_exclusive_group()
    owner.add_argument("--project", help=PROJECT_HELP)
    owner.add_argument("--public", action="store_true",
                       help="shared read-only with every project (operators, region admins)")
    add(image, "delete", cmd_image_delete, "delete an image").add_argument("name")

    vm = sub.add_parser("vm", help="virtual machines").add_subparsers(dest="cmd", required=True)
    cr = add(vm, "create", cmd_vm_create, "create a VM")
    cr.add_argument("name")
    cr.add_argument("--image", required=True)
    cr.add_argument("--cpus", type=int, required=True)
    cr.add_argument("--memory", type=int, required=True, help="MiB")
    cr.add_argument("--disk", type=int, help="root disk GiB (default: the image's size)")
    cr.add_argument("--hostname")
    cr.add_argument("--user-data", help="file with cloud-init user-data")
    cr.add_argument("--ssh-key", action="append", metavar="FILE",
                    help="an SSH public key file (.pub) the default user logs in with "
                    "(repeatable)")
    cr.add_argument("--user", help="the default user's name (default: the image's own, "
                    "e.g. debian)")
    cr.add_argument("--firmware", choices=["bios", "uefi"], help="default: bios")
    cr.add_argument("--secure-boot", action="store_true",
                    help="UEFI Secure Boot (with --firmware uefi --machine q35)")
    cr.add_argument("--machine", choices=["i440fx", "q35"], help="default: i440fx")
    cr.add_argument("--disk-bus", choices=["virtio-blk", "virtio-scsi"],
                    help="the root disk's bus (default: virtio-blk)")
    cr.add_argument("--node", help="place on this node")
    cr.add_argument("--network", action="append", metavar="NET[:IP][,dhcp]",
                    help="a NIC on this network, optionally with a fixed IP; ',dhcp': the "
                    "guest configures its IPv4 by DHCP (tenant networks), else the seed "
                    "sets it (repeatable)")
    groups = cr.add_mutually_exclusive_group()
    groups.add_argument("--security-group", action="append", metavar="GROUP",
                        help="security group of the NICs (repeatable; default: 'default')")
    groups.add_argument("--no-security-groups", action="store_true",
                        help="no security group: nothing filters the NICs' traffic (what an "
                        "XCP-ng pool's VMs must ask for)")
    cr.add_argument("--gpu", action="append", type=parse_gpu_arg, metavar="MODEL[:COUNT]",
                    help="whole GPUs of this model passed through, e.g. H100:2 (repeatable)")
    cr.add_argument("--vgpu", metavar="TYPE", help="a vGPU of this type, e.g. H100XM-10C")
    cr.add_argument("--no-start", action="store_true")
    cr.add_argument("--ha", action="store_true", help="restart it on another node when its "
                    "node is lost, once that node is fenced (shared storage)")
    cr.add_argument("--project", help=PROJECT_HELP)
    add_wait_options(cr, "it is made (and runs, unless --no-start)")
    add_list_filters(add(vm, "list", cmd_vm_list, "list VMs", columns=VM_COLUMNS),
                     name="only the one so named", project="only those of this project",
                     node="only those on this node",
                     state=f"only those in this state: {one_of(InstanceState)}")
    add(vm, "show", cmd_vm_show, "show a VM", show=True).add_argument("name")
    add(vm, "console", cmd_vm_console, "the VM's serial console, live (read and type; with "
        "a terminal Ctrl-] ends it, without one the end of stdin)").add_argument("name")
    forced = {"stop": "cut the power at once (no ACPI shutdown)",
              "reboot": "hard reset (no ACPI shutdown)"}
    for action in ("start", "stop", "reboot", "delete", "flatten"):
        sp = add(vm, action, _vm_action(action), f"{action} a VM")
        sp.add_argument("name")
        add_wait_options(sp)
        if action in forced:
            sp.add_argument("--force", action="store_true", help=forced[action])
    ha_vm_commands(vm, add)
    mg = add(vm, "migrate", cmd_vm_migrate, "move a VM to another node: a running one "
             "live, without stopping it; a stopped one cold, it stays stopped (a root disk "
             "on local storage is copied along)")
    mg.add_argument("name")
    mg.add_argument("--to", metavar="NODE", help="the node to move it to (default: the "
                    "scheduler picks one)")
    mg.add_argument("--bandwidth", type=int, metavar="MIB_S",
                    help="most MiB/s the memory copy may use (default: no limit)")
    mg.add_argument("--max-downtime", type=int, metavar="MS",
                    help="longest pause of the guest at the switchover (default: 300)")
    mg.add_argument("--cancel", action="store_true", help="call off its migration under "
                    "way instead (it stays where it runs)")
    add_wait_options(mg, "it runs on the other node")

    volume_commands(sub, add)
    network_commands(sub, add)
    port_commands(sub, add)
    secgroup_commands(sub, add)

    jt = sub.add_parser("join-token", help="join tokens").add_subparsers(dest="cmd",
                                                                          required=True)
    jc = add(jt, "create", cmd_join_token_create, "create a join token", json_=True)
    jc.add_argument("--description", default="")
    jc.add_argument("--ttl", type=int, default=3600, help="seconds")
    add(jt, "list", cmd_join_token_list, "list join tokens and whether each is unused, used, "
        "revoked or expired (never the secret)", columns=JOIN_TOKEN_COLUMNS)
    add(jt, "revoke", cmd_join_token_revoke, "make an unused join token unusable").add_argument(
        "id")
    audit_commands(sub, add)
    monitor_commands(sub, add)
    account_commands(sub, add, users)
    op = sub.add_parser("operation", help="operations").add_subparsers(dest="cmd", required=True)
    add(op, "show", cmd_operation_show, "show an operation", show=True).add_argument("id")
    remote_commands(sub, add)
    add(sub, "completion", cmd_completion, "print a shell completion script (bash: "
        "'source <(vauban completion bash)'; zsh: write it as _vauban in your $fpath)"
        ).add_argument("shell", choices=["bash", "zsh"])
    return p


def package_version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    try:
        return importlib.metadata.version("vauban")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def cmd_completion(_c: Client, a: argparse.Namespace) -> int:
    import shtab  # only here: no other command needs it

    print(shtab.complete(build_parser(), shell=a.shell))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "list_columns", None) is not None:
        pick_columns(args, args.list_columns)  # an unknown column: exit 2, nothing sent
    try:
        settings = Settings.load(args.remote) if args.remote else Settings.load()
    except RemoteError as e:
        parser.error(str(e))
    try:
        client = Client(settings)
        result: int = args.func(client, args)
        return result
    except RemoteError as e:
        print(f"vauban: error: {e}", file=sys.stderr)
        return 1
    except ApiError as e:
        # who you are (401) or what you may (403): said, so that a refusal reads as one
        refused = f" ({e.status} {e.problem.get('title', '')})".replace(" )", ")") \
            if e.status in (401, 403) else ""
        print(f"vauban: error: {e}{refused}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as e:
        print(f"vauban: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


