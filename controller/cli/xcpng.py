"""CLI of XCP-ng pools: `vauban node add-xcpng`, and a pool node's lines in `node show`."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.cli.client import ApiError, Client

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _password(a: argparse.Namespace) -> str:
    """The pool password from --password-file ('-': standard input), never an argument
    (it would show in the process list and the shell's history)."""
    try:
        text = sys.stdin.read() if a.password_file == "-" else Path(a.password_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ApiError(0, f"cannot read the password file {a.password_file}: {e}") from e
    return text.rstrip("\n")


def _node_name(a: argparse.Namespace, pool_name: str) -> str:
    """--name, else the pool's name when it is a valid node name."""
    if a.name:
        return str(a.name)
    candidate = re.sub(r"[^a-z0-9-]+", "-", pool_name.lower()).strip("-")[:63].strip("-")
    if not _NAME.match(candidate):
        raise ApiError(0, f"the pool's name {pool_name!r} makes no node name: give --name")
    return candidate


def print_members(pool: dict[str, Any]) -> None:
    print(f"pool {pool['pool_name']} ({pool['pool_uuid']}) at {pool['url']}")
    for m in pool["members"]:
        role = "master" if m.get("master") else "member"
        print(f"  {role:<6} {m['name']} {m['address']} ({m['host_uuid']})\n"
              f"         SHA-256 {m['sha256']}")
    for r in pool.get("repositories") or []:
        mark = " (default)" if r["default"] else ""
        print(f"  SR     {r['name']} ({r['uuid']}, {r['type']}){mark}")


def _confirmed(a: argparse.Namespace) -> bool:
    """--yes, else the operator's answer on a terminal (no terminal: not confirmed)."""
    if a.yes:
        return True
    if not sys.stdin.isatty() or getattr(a, "password_file", None) == "-":
        print("confirm with --yes (no terminal to ask on)", file=sys.stderr)
        return False
    return input("pin these certificates? [y/N] ").strip().lower() == "y"


def cmd_add_xcpng(c: Client, a: argparse.Namespace) -> int:
    """Read the pool through its pinned master, show every member's certificate, and on
    confirmation enroll it (the controller reads it again and refuses any change)."""
    body = {"url": a.url, "username": a.user, "password": _password(a),
            "fingerprint": a.fingerprint}
    pool = c.post("/xcpng-pools/probe", body, timeout=120)
    print_members(pool)
    if not _confirmed(a):
        print("not enrolled", file=sys.stderr)
        return 1
    enrolled = c.post("/xcpng-pools", {
        **body, "name": _node_name(a, pool["pool_name"]),
        "members": {m["host_uuid"]: m["sha256"] for m in pool["members"]},
        **({"sr": a.sr} if a.sr else {}),
        **({"template": a.template} if a.template else {})}, timeout=120)
    print(f"node {enrolled['name']} ({enrolled['node_id']}) enrolled; its agent joins with "
          "this one-time token (valid 24 h, shown once):")
    _print_join(enrolled)
    return 0


def _print_join(issued: dict[str, Any]) -> None:
    print(f"{issued['join_token']}\n"
          f"  vauban-agent join --name {issued['name']} --token-file FILE "
          "--controller URL --ca-sha256 SHA256\n"
          "  then run it with hypervisor = \"xapi\" in its settings file")


def cmd_token(c: Client, a: argparse.Namespace) -> int:
    """A new join token for the pool's node (a rebuilt agent host); earlier unused ones
    are revoked by the controller."""
    issued = c.post(f"/nodes/{a.name}/xcpng/join-token")
    print(f"node {issued['name']} ({issued['node_id']}): its agent joins again with this "
          "one-time token (valid 24 h, shown once; earlier unused ones are revoked):")
    _print_join(issued)
    return 0


def cmd_repin(c: Client, a: argparse.Namespace) -> int:
    """Show each member's pinned certificate beside the one it presents now; on
    confirmation pin the new ones (the controller reads the pool again and refuses any
    change since)."""
    body = {"fingerprint": a.fingerprint} if a.fingerprint else {}
    pinned = {m["host_uuid"]: m["sha256"]
              for m in (c.get(f"/nodes/{a.name}").get("xcpng") or {}).get("members", [])}
    pool = c.post(f"/nodes/{a.name}/xcpng/probe", body, timeout=120)
    changed = 0
    for m in pool["members"]:
        was = pinned.get(m["host_uuid"])
        same = was == m["sha256"]
        changed += not same
        print(f"  {m['name']} {m['address']} ({m['host_uuid']}): "
              + ("unchanged" if same else f"pinned {was or '(new host)'}\n"
                 f"         now    {m['sha256']}"))
    changed += len(pinned.keys() - {m["host_uuid"] for m in pool["members"]})
    if not changed:
        print(f"node {a.name}: every member presents its pinned certificate")
        return 0
    if not _confirmed(a):
        print("nothing re-pinned", file=sys.stderr)
        return 1
    c.put(f"/nodes/{a.name}/xcpng/members", {
        **body, "members": {m["host_uuid"]: m["sha256"] for m in pool["members"]}},
        timeout=120)
    print(f"node {a.name}: {changed} certificate(s) re-pinned; its agent takes them when "
          "the old ones are refused")
    return 0


def print_pool(x: dict[str, Any]) -> None:
    """`node show` lines of a pool node: how it is reached and its members' pins."""
    print(f"XCP-ng pool {x['pool_name']} ({x['pool_uuid']}) at {x['url']} as {x['username']}, "
          f"disks on SR {x.get('sr_uuid') or 'the pool default'}, VMs cloned from template "
          f"{x.get('template') or 'Other install media'}")
    for m in x["members"]:
        print(f"  {m['name']} {m['address']} ({m['host_uuid']}): SHA-256 {m['sha256']}")


def xcpng_node_commands(node: Any, add: Callable[..., Any]) -> None:
    ax = add(node, "add-xcpng", cmd_add_xcpng, "enroll an XCP-ng pool as a node, through its "
             "master over XAPI (each host's certificate shown and pinned)")
    ax.add_argument("url", help="the pool master: https://HOST[:PORT]")
    ax.add_argument("--user", required=True, help="a pool user (e.g. root)")
    ax.add_argument("--fingerprint", required=True, help="SHA-256 of the master's "
                    "certificate, as its console shows it (AA:BB:… or 64 hex digits)")
    ax.add_argument("--password-file", required=True, metavar="FILE",
                    help="a file holding the password ('-': standard input)")
    ax.add_argument("--name", help="the node's name (default: from the pool's name)")
    ax.add_argument("--sr", help="the storage repository (uuid or name) for images and VM "
                    "disks (default: the pool's default SR)")
    ax.add_argument("--template", help="the VM template (by name) the pool's VMs are "
                    "cloned from (default: \"Other install media\")")
    ax.add_argument("--yes", action="store_true",
                    help="pin the certificates shown without asking")
    rp = add(node, "xcpng-repin", cmd_repin, "re-pin an XCP-ng pool's certificates after a "
             "planned change (each shown, old and new, before it is pinned)")
    rp.add_argument("name")
    rp.add_argument("--fingerprint", help="the master's new SHA-256, when the master's own "
                    "certificate changed (as its console shows it)")
    rp.add_argument("--yes", action="store_true", help="pin what is shown without asking")
    tk = add(node, "xcpng-token", cmd_token, "a new join token for an XCP-ng pool's agent "
             "(its host rebuilt, or the first token lost or expired)")
    tk.add_argument("name")
