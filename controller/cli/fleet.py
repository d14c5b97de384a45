"""CLI of the fleet: `vauban node add/label`, `vauban rollout run/show/list`,
`vauban inventory --list`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.cli.client import ApiError, Client
from controller.cli.formats import Column, emit_list, emit_show
from controller.cli.output import add_wait_options, print_table

POLL_S = 1.0  # how often a followed rollout is asked for its progress
BAR = 20


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ApiError(0, f"cannot read the {what} {path}: {e}") from e


def cmd_node_add(c: Client, a: argparse.Namespace) -> int:
    """Add the server (pinned host key, qualified), then roll the site out to it."""
    body: dict[str, Any] = {"address": a.host, "name": a.name or a.host.split(".")[0],
                            "port": a.port, "user": a.user, "role": a.role,
                            "profile": a.profile,
                            "ssh_private_key": _read(a.ssh_key, "SSH key")}
    if a.known_hosts:
        body["known_hosts"] = _read(a.known_hosts, "known_hosts file")
    elif a.host_key_sha256:
        body["host_key_sha256"] = a.host_key_sha256
    try:
        host = c.post("/fleet/hosts", body, timeout=300)
    except ApiError as e:
        report = (e.problem or {}).get("report")
        if report:
            _print_report(report)
        raise
    print(f"{host['name']} ({host['address']}) added: host key {host['host_key_sha256']}, "
          f"{host['qualification']['verdict']} for {host['qualification']['profile']}")
    if a.no_rollout:
        return 0
    job = c.post("/rollouts", {"limit": [host["name"]]})
    return _follow(c, job) if a.wait else _started(job)


def _print_report(report: dict[str, Any]) -> None:
    print(f"qualification ({report['profile']}): {report['verdict']}", file=sys.stderr)
    for line in report["results"]:
        print(f"  {line['verdict']:<4}  {line['check']:<24} {line['reason']}", file=sys.stderr)


def _label_arg(text: str) -> tuple[str, str | None]:
    """key=value sets a label, key- removes it."""
    if text.endswith("-") and "=" not in text:
        return text[:-1], None
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not key=value (set) or key- (remove)")
    return key, value


def cmd_node_label(c: Client, a: argparse.Namespace) -> int:
    changes = {k: v for k, v in a.labels if v is not None}
    remove = [k for k, v in a.labels if v is None]
    node = c.post(f"/nodes/{a.name}/labels", {"set": changes, "remove": remove})
    print(f"{node['name']}: " + (", ".join(f"{k}={v}" for k, v in sorted(node["labels"].items()))
                                 or "no labels"))
    return 0


def cmd_rollout_run(c: Client, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"tags": a.tags.split(",") if a.tags else [], "upgrade": a.upgrade}
    if a.limit:
        body["limit"] = a.limit.split(",")
    if a.batch:
        body["batch"] = a.batch
    if a.version:
        body["version"] = a.version
    job = c.post("/rollouts", body)
    return _follow(c, job) if a.wait else _started(job)


def _started(job: dict[str, Any]) -> int:
    print(f"rollout {job['id']} started: {len(job['hosts'])} hosts, batches of "
          f"{job['batch_size']}; follow it with 'vauban rollout show {job['id']}'")
    return 0


def _bar(row: dict[str, Any], total: int) -> str:
    done = BAR if row["state"] not in ("pending", "running") else \
        min(BAR - 1, BAR * row["tasks_done"] // max(1, total))
    return "[" + "#" * done + "." * (BAR - done) + "]"


def _follow(c: Client, job: dict[str, Any], show: Callable[[str], None] = print) -> int:
    """Print each host's progress as it changes until the rollout ends; 1 if it failed."""
    print(f"rollout {job['id']}: {len(job['hosts'])} hosts, version {job['version']}, "
          f"batches of {job['batch_size']}")
    seen: dict[str, tuple[str, str]] = {}
    most = max(1, job.get("tasks_expected", 0))
    while True:
        for row in job["hosts"]:
            most = max(most, row["tasks_done"])
            now = (row["state"], row["task"])
            if seen.get(row["host"]) != now:
                seen[row["host"]] = now
                show(f"  {row['host']:<16} {_bar(row, most)} {row['tasks_done']:>3} tasks "
                     f"{row['changed']:>3} changed  {row['state']:<11} "
                     f"{row['message'] or row['task']}")
        if job["state"] in ("succeeded", "failed"):
            break
        time.sleep(POLL_S)  # polling a remote job
        job = c.get(f"/rollouts/{job['id']}")
    if job["state"] == "failed":
        print(f"rollout {job['id']} failed: {job['error']}\n(full log: vauban rollout show "
              f"{job['id']} --log)", file=sys.stderr)
        return 1
    print(f"rollout {job['id']} succeeded")
    return 0


def cmd_rollout_show(c: Client, a: argparse.Namespace) -> int:
    if a.log:
        sys.stdout.write(c.get(f"/rollouts/{a.id}/log") or "")
        return 0
    return emit_show(a, c.get(f"/rollouts/{a.id}"), _print_rollout)


def _print_rollout(job: dict[str, Any]) -> None:
    print(f"rollout {job['id']}: {job['state']}, version {job['version']}, batches of "
          f"{job['batch_size']}{', upgrade' if job['upgrade'] else ''}, by "
          f"{job['requested_by']} at {job['created_at']}"
          + (f"\nerror: {job['error']}" if job["error"] else ""))
    print_table(job["hosts"], [("HOST", "host"), ("BATCH", lambda r: r["batch"] + 1),
                               ("STATE", "state"), ("TASKS", "tasks_done"),
                               ("CHANGED", "changed"),
                               ("TASK / MESSAGE", lambda r: r["message"] or r["task"])])


ROLLOUT_COLUMNS: list[Column] = [
    ("ID", "id"), ("STATE", "state"), ("VERSION", "version"),
    ("HOSTS", lambda r: len(r["hosts"])), ("BY", "requested_by"), ("CREATED", "created_at")]


def cmd_rollout_list(c: Client, a: argparse.Namespace) -> int:
    return emit_list(a, c.get("/rollouts"), ROLLOUT_COLUMNS)


FLEET_COLUMNS: list[Column] = [
    ("NAME", "name"), ("ADDRESS", "address"), ("PORT", "port"), ("ROLE", "role"),
    ("HOST KEY", "host_key_sha256"),
    ("QUALIFICATION", lambda r: f"{r['qualification']['verdict']} "
     f"({r['qualification']['profile']})" if r["qualification"] else "-")]


def cmd_fleet_list(c: Client, a: argparse.Namespace) -> int:
    return emit_list(a, c.get("/fleet/hosts"), FLEET_COLUMNS)


def cmd_inventory(c: Client, a: argparse.Namespace) -> int:
    """Ansible's dynamic inventory protocol: --list, or --host NAME."""
    inventory = c.get("/inventory")
    if a.host:
        print(json.dumps(inventory["_meta"]["hostvars"].get(a.host, {}), indent=1))
    else:
        print(json.dumps(inventory, indent=1))
    return 0


def fleet_node_commands(node: Any, add: Callable[..., Any]) -> None:
    na = add(node, "add", cmd_node_add, "add a server over SSH and roll the site out to it")
    na.add_argument("host", help="its address")
    na.add_argument("--ssh-key", required=True, help="private key that root@HOST accepts "
                    "(used once, to authorize the controller's fleet key)")
    pin = na.add_mutually_exclusive_group()
    pin.add_argument("--host-key-sha256", help="the server's SSH host key fingerprint "
                     "(required unless --name is a node that joined by itself: the keys "
                     "it reported are pinned)")
    pin.add_argument("--known-hosts", help="a known_hosts file listing the server's key")
    na.add_argument("--name", help="its node name (default: the host's first label)")
    na.add_argument("--port", type=int, default=22)
    na.add_argument("--user", default="root")
    na.add_argument("--role", choices=["node", "controller"], default="node")
    na.add_argument("--profile", choices=["compute", "gpu", "storage", "lab"], default="compute",
                    help="hardware profile it must pass")
    na.add_argument("--no-rollout", action="store_true", help="add it only")
    add_wait_options(na, "its rollout ends")
    nl = add(node, "label", cmd_node_label, "set (key=value) or remove (key-) labels")
    nl.add_argument("name")
    nl.add_argument("labels", nargs="+", type=_label_arg, metavar="key=value|key-")


def fleet_commands(sub: Any, add: Callable[..., Any]) -> None:
    ro = sub.add_parser("rollout", help="run the playbooks on the fleet").add_subparsers(
        dest="cmd", required=True)
    rr = add(ro, "run", cmd_rollout_run, "run the site playbook, batch by batch")
    rr.add_argument("--limit", help="host names, comma-separated (default: the fleet)")
    rr.add_argument("--tags", help="only tasks with these tags, comma-separated")
    rr.add_argument("--batch", type=int, help="hosts per batch (default: all at once)")
    rr.add_argument("--upgrade", action="store_true",
                    help="each batch's nodes must report the new version before the next")
    rr.add_argument("--version", help="the release to install (default: the controller's)")
    add_wait_options(rr)
    rs = add(ro, "show", cmd_rollout_show, "a rollout's hosts, or its full log", show=True)
    rs.add_argument("id")
    rs.add_argument("--log", action="store_true", help="print the full Ansible output")
    add(ro, "list", cmd_rollout_list, "recent rollouts", columns=ROLLOUT_COLUMNS)
    fl = sub.add_parser("fleet", help="servers reached over SSH").add_subparsers(
        dest="cmd", required=True)
    add(fl, "list", cmd_fleet_list, "the servers of the fleet, with their pinned host keys",
        columns=FLEET_COLUMNS)
    inv = add(sub, "inventory", cmd_inventory, "the fleet as an Ansible dynamic inventory")
    which = inv.add_mutually_exclusive_group(required=True)
    which.add_argument("--list", action="store_true")
    which.add_argument("--host")
