"""The region as an Ansible inventory: fleet hosts grouped by role and by node labels.

`dynamic_inventory()` is what `vauban inventory --list` prints; a rollout's own inventory
(controller.fleet.worker) has the same role groups and Ceph variables. Only fleet hosts
appear (servers with an SSH address and a pinned host key); a node's labels come from
the node of the same name, once it has joined.

A node labelled `ceph=osd` is in group `ceph_osds`: the `ceph` role turns the disks its
qualification report found free (`ceph_osd_devices`) into OSDs of the region's cluster.
A node labelled `ceph=mon` is in group `ceph_mons`: where the region has no cluster yet,
the `ceph` role bootstraps its first monitor and manager there.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import FleetHost, Node
from controller.errors import InvalidInput

LABEL_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.-]{0,63}$")
MAX_LABELS = 64
ROLE_GROUPS = {"node": "vauban_nodes", "controller": "vauban_controllers"}
CEPH_OSD_LABEL = ("ceph", "osd")  # a node labelled so gives its free disks to Ceph
CEPH_OSD_GROUP = "ceph_osds"
CEPH_MON_LABEL = ("ceph", "mon")  # a node labelled so bootstraps the region's first cluster
CEPH_MON_GROUP = "ceph_mons"
CEPH_GROUPS = (CEPH_OSD_GROUP, CEPH_MON_GROUP)


def check_labels(labels: dict[str, str]) -> None:
    """Invalid, naming the first bad key or value, unless every label is well formed."""
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            raise InvalidInput(f"label key {key[:70]!r}: 1 to 63 of a-z 0-9 _ . -, beginning "
                          "with a letter or digit")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise InvalidInput(f"label {key}: value {str(value)[:70]!r}: up to 63 of A-Z a-z 0-9 "
                          "_ . -")


def label_group(key: str, value: str) -> str:
    """The inventory group of the nodes labelled key=value (Ansible group names are
    identifiers: other characters become '_')."""
    return "label_" + re.sub(r"[^A-Za-z0-9_]", "_", f"{key}_{value}")


def _labelled(host: FleetHost, node: Node | None, label: tuple[str, str]) -> bool:
    key, value = label
    return host.role == "node" and node is not None and (node.labels or {}).get(key) == value


def gives_osds(host: FleetHost, node: Node | None) -> bool:
    """Whether the host is a node its operator labelled `ceph=osd`."""
    return _labelled(host, node, CEPH_OSD_LABEL)


def runs_first_mon(host: FleetHost, node: Node | None) -> bool:
    """Whether the host is a node its operator labelled `ceph=mon`."""
    return _labelled(host, node, CEPH_MON_LABEL)


def ceph_groups(host: FleetHost, node: Node | None) -> list[str]:
    """The Ceph groups the host is in (ceph_osds, ceph_mons), by its node's labels."""
    return [group for group, member in ((CEPH_OSD_GROUP, gives_osds(host, node)),
                                        (CEPH_MON_GROUP, runs_first_mon(host, node)))
            if member]


def osd_devices(host: FleetHost) -> list[str]:
    """The /dev paths of the disks the host's qualification report found free for an OSD
    (none for a host qualified before reports listed them)."""
    report = host.qualification or {}
    return [f"/dev/{name}" for name in report.get("free_osd_disks", [])]


def ceph_host_vars(host: FleetHost, node: Node | None) -> dict[str, Any]:
    """`ceph_osd_devices` for a host in group ceph_osds; nothing for the others."""
    return {"ceph_osd_devices": osd_devices(host)} if gives_osds(host, node) else {}


def first_mon_nodes(db: Session) -> list[str]:
    """The fleet's nodes labelled `ceph=mon`, by name: one at most may bootstrap a cluster."""
    hosts = {h.name: h for h in db.scalars(select(FleetHost).where(FleetHost.role == "node"))}
    nodes = db.scalars(select(Node).where(Node.name.in_(list(hosts))).order_by(Node.name))
    return [n.name for n in nodes if runs_first_mon(hosts[n.name], n)]


def host_vars(host: FleetHost, node: Node | None) -> dict[str, Any]:
    return {
        "ansible_host": host.address, "ansible_port": host.port, "ansible_user": host.user,
        "vauban_role": host.role, "vauban_node_id": node.id if node else None,
        "vauban_labels": dict(node.labels) if node else {},
        **ceph_host_vars(host, node),
    }


def dynamic_inventory(db: Session) -> dict[str, Any]:
    """Ansible's JSON inventory (`--list`): groups vauban_nodes, vauban_controllers,
    ceph_osds, ceph_mons and one `label_<key>_<value>` group per label in use, with every host's
    variables in _meta. It holds no secret (no join token, no Ceph key: a rollout adds
    those to its own)."""
    hosts = list(db.scalars(select(FleetHost).order_by(FleetHost.name)))
    nodes = {n.name: n for n in db.scalars(
        select(Node).where(Node.name.in_([h.name for h in hosts])))}
    groups: dict[str, list[str]] = {group: [] for group in
                                    (*ROLE_GROUPS.values(), *CEPH_GROUPS)}
    hostvars: dict[str, dict[str, Any]] = {}
    for host in hosts:
        node = nodes.get(host.name)
        hostvars[host.name] = host_vars(host, node)
        groups[ROLE_GROUPS[host.role]].append(host.name)
        for group in ceph_groups(host, node):
            groups[group].append(host.name)
        for key, value in sorted((node.labels if node else {}).items()):
            groups.setdefault(label_group(key, value), []).append(host.name)
    inventory: dict[str, Any] = {name: {"hosts": members} for name, members in groups.items()}
    inventory["all"] = {"children": sorted(groups)}
    inventory["_meta"] = {"hostvars": hostvars}
    return inventory
