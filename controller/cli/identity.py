"""CLI of identity: projects, users, their roles, named API tokens, and who you are.

`vauban project create|list|show|delete`, `vauban user create|list|show|delete`,
`vauban role grant|revoke|list`, `vauban token create|list|revoke`, `vauban whoami`.
Secrets the API shows once (a made password, a token) are printed once, and said so.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.authz import PROJECT_ROLES, ROLES
from controller.cli.client import ApiError, Client
from controller.cli.formats import Col, Column, emit_list, emit_show, field_text
from controller.cli.output import print_json, print_table


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _in(project: str | None) -> str:
    return f" in project {project}" if project else ""


def cmd_project_create(c: Client, a: argparse.Namespace) -> int:
    p = c.post("/projects", {"name": a.name, "description": a.description})
    print(f"project {p['name']} created ({p['id']})")
    return 0


PROJECT_COLUMNS: list[Column] = [
    ("NAME", "name"), ("DESCRIPTION", "description"), ("CREATED BY", "created_by"),
    ("CREATED", "created_at"), ("ID", "id")]


def cmd_project_list(c: Client, a: argparse.Namespace) -> int:
    return emit_list(a, c.get("/projects"), PROJECT_COLUMNS)


def cmd_project_show(c: Client, a: argparse.Namespace) -> int:
    return emit_show(a, c.get(f"/projects/{a.name}"), _print_project)


def _print_project(p: dict[str, Any]) -> None:
    print(f"{p['name']} ({p['id']})")
    print(f"description: {_or_dash(p['description'])}")
    print(f"created:     {p['created_at']} by {p['created_by']}")
    print_table([{"quota": k, "limit": _limit(p["quotas"], k), "in use": field_text(k, v)}
                 for k, v in sorted(p["usage"].items()) if k != "gpus"]
                + [{"quota": f"gpus {m}", "limit": n, "in use": p["usage"]["gpus"].get(m, 0)}
                   for m, n in sorted(p["quotas"].get("gpus", {}).items())],
                [("QUOTA", "quota"), ("LIMIT", "limit"), ("IN USE", "in use")])


def _limit(quotas: dict[str, Any], key: str) -> str:
    return field_text(key, quotas[key]) if key in quotas else "none"


QUOTAS = ("instances", "vcpus", "memory_mib", "vgpus", "storage_gib", "volumes", "networks",
          "public_addresses")


def cmd_project_quota(c: Client, a: argparse.Namespace) -> int:
    """Set a project's quotas: those given; the others keep their value unless --reset."""
    current = {} if a.reset else dict(c.get(f"/projects/{a.name}")["quotas"])
    for key in QUOTAS:
        value = getattr(a, key)
        if value is not None:
            current[key] = None if value < 0 else value
    gpus = dict(current.get("gpus") or {})
    for item in a.gpu or []:
        model, sep, count = item.rpartition("=")
        if not sep or not model or not count.lstrip("-").isdigit():
            raise ApiError(0, f"--gpu {item!r}: write MODEL=COUNT (COUNT -1: no limit)")
        if int(count) < 0:
            gpus.pop(model, None)
        else:
            gpus[model] = int(count)
    current["gpus"] = gpus or None
    p = c.put(f"/projects/{a.name}/quotas", {k: v for k, v in current.items() if v is not None})
    print(f"quotas of project {a.name}: " + (", ".join(
        f"{k} {v}" for k, v in sorted(p["quotas"].items())) or "none (no limit)"))
    return 0


def cmd_project_delete(c: Client, a: argparse.Namespace) -> int:
    c.delete(f"/projects/{a.name}")
    print(f"project {a.name} deleted")
    return 0


def cmd_user_create(c: Client, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": a.name}
    if a.password_file:
        body["password"] = Path(a.password_file).read_text().strip()
    u = c.post("/users", body)
    print(f"user {u['name']} created ({u['id']}); it holds no role until one is granted")
    if u.get("password"):
        print(f"password (shown once, not shown again): {u['password']}")
    return 0


USER_COLUMNS: list[Column] = [
    ("NAME", "name"), Col("ROLES", "roles", lambda r: _roles_text(r["roles"]) or "-"),
    ("CREATED", "created_at"), ("ID", "id")]


def cmd_user_list(c: Client, a: argparse.Namespace) -> int:
    return emit_list(a, c.get("/users"), USER_COLUMNS)


def _roles_text(bindings: list[dict[str, Any]]) -> str:
    return ", ".join(b["role"] + (f"@{b['project']}" if b["project"] else "")
                     for b in bindings)


def cmd_user_show(c: Client, a: argparse.Namespace) -> int:
    return emit_show(a, c.get(f"/users/{a.name}"), _print_user)


def _print_user(u: dict[str, Any]) -> None:
    print(f"{u['name']} ({u['id']}), created {u['created_at']}")
    _print_bindings(u["roles"], "roles")


def _print_bindings(bindings: list[dict[str, Any]], heading: str) -> None:
    if not bindings:
        print(f"{heading}: none")
        return
    print(f"{heading}:")
    for b in bindings:
        print(f"  {b['role']}{_in(b['project'])} (given by {b['created_by']} at "
              f"{b['created_at']})")


def cmd_user_delete(c: Client, a: argparse.Namespace) -> int:
    c.delete(f"/users/{a.name}")
    print(f"user {a.name} deleted, with its roles and tokens")
    return 0


def _binding_body(a: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"user": a.user, "role": a.role}
    if a.project:
        body["project"] = a.project
    return body


def cmd_role_grant(c: Client, a: argparse.Namespace) -> int:
    b = c.post("/role-bindings", _binding_body(a))
    print(f"{b['user']} holds {b['role']}{_in(b['project'])} ({b['id']})")
    return 0


def find_binding(c: Client, user: str, role: str, project: str | None) -> dict[str, Any]:
    """The binding giving `user` the `role` (in `project`, or a region role when None);
    ApiError 404 when the user does not hold it (or the caller may not see it)."""
    params = {"user": user, **({"project": project} if project else {})}
    for b in c.get("/role-bindings", params=params):
        # the API names the project; the caller may have given its id: the query matched it
        if b["role"] == role and (b["project"] is None) == (project is None):
            return dict(b)
    raise ApiError(404, f"user '{user}' does not hold {role}{_in(project)}")


def cmd_role_revoke(c: Client, a: argparse.Namespace) -> int:
    b = find_binding(c, a.user, a.role, a.project)
    c.delete(f"/role-bindings/{b['id']}")
    print(f"{b['user']} no longer holds {b['role']}{_in(b['project'])}")
    return 0


def cmd_role_list(c: Client, a: argparse.Namespace) -> int:
    params = {k: v for k, v in (("user", a.user), ("project", a.project)) if v}
    return emit_list(a, c.get("/role-bindings", params=params), ROLE_COLUMNS)


ROLE_COLUMNS: list[Column] = [
    ("USER", "user"), ("ROLE", "role"), ("PROJECT", "project"), ("GIVEN BY", "created_by"),
    ("CREATED", "created_at"), ("ID", "id")]


def cmd_token_create(c: Client, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": a.name, "role": a.role}
    if a.project:
        body["project"] = a.project
    if a.ttl is not None:
        body["ttl_seconds"] = a.ttl
    t = c.post("/api-tokens", body)
    if a.json:
        print_json(t)
        return 0
    print(f"token {t['name']} ({t['id']}) acts as {t['role']}{_in(t['project'])} until "
          f"{t['expires_at']}:")
    print(f"  {t['token']}")
    print("it is not shown again: keep it now (send it as 'Authorization: Bearer <token>', "
          "or set VAUBAN_TOKEN)")
    return 0


TOKEN_COLUMNS: list[Column] = [
    Col("NAME", "name", lambda r: r["name"] or "(login)"),
    Col("ROLE", "role", lambda r: r["role"] or "(all of yours)"), ("PROJECT", "project"),
    ("EXPIRES", "expires_at"), ("LAST USED", "last_used_at"), ("REVOKED", "revoked_at"),
    ("ID", "id")]


def cmd_token_list(c: Client, a: argparse.Namespace) -> int:
    return emit_list(a, c.get("/api-tokens"), TOKEN_COLUMNS)


def cmd_token_revoke(c: Client, a: argparse.Namespace) -> int:
    """Revoke by id, or by the name of one of your tokens that still acts."""
    token_id = a.id
    for t in c.get("/api-tokens"):
        if t["name"] == a.id and t["revoked_at"] is None:
            token_id = t["id"]
    t = c.delete(f"/api-tokens/{token_id}")
    print(f"token {t['name'] or '(login)'} ({t['id']}) revoked: it is refused from now on")
    return 0


def cmd_whoami(c: Client, a: argparse.Namespace) -> int:
    me = c.get("/account")
    if a.json:
        print_json(me)
        return 0
    print(f"{me['name']} ({me['id']}) at {c.settings.url}")
    print(f"token:     {_or_dash(me['token_id'])}")
    print(f"acting as: {', '.join(me['acting_as']) or 'no role'}")
    _print_bindings(me["roles"], "roles")
    return 0


def identity_commands(sub: Any, add: Callable[..., Any]) -> Any:
    """Register the project, user, role, token and whoami commands; returns the `user`
    subcommands, which other modules add to."""
    pr = sub.add_parser("project", help="projects (tenants)").add_subparsers(dest="cmd",
                                                                              required=True)
    pc = add(pr, "create", cmd_project_create, "create a project")
    pc.add_argument("name")
    pc.add_argument("--description", default="")
    add(pr, "list", cmd_project_list, "list the projects you see", columns=PROJECT_COLUMNS)
    add(pr, "show", cmd_project_show, "show a project", show=True).add_argument("name")
    add(pr, "delete", cmd_project_delete, "delete an empty project").add_argument("name")
    pq = add(pr, "quota", cmd_project_quota,
             "set a project's quotas (those given; -1: no limit)")
    pq.add_argument("name")
    for key in QUOTAS:
        pq.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, metavar="N")
    pq.add_argument("--gpu", action="append", metavar="MODEL=COUNT",
                    help="whole GPUs of a model (repeatable; COUNT -1: no limit)")
    pq.add_argument("--reset", action="store_true", help="drop the quotas not given")

    us = sub.add_parser("user", help="users").add_subparsers(dest="cmd", required=True)
    uc = add(us, "create", cmd_user_create, "create a user (it holds no role until granted)")
    uc.add_argument("name")
    uc.add_argument("--password-file", help="file holding its password (at least 12 "
                    "characters); default: one is made and printed once")
    add(us, "list", cmd_user_list, "list users and their roles", columns=USER_COLUMNS)
    add(us, "show", cmd_user_show, "show a user and its roles", show=True).add_argument("name")
    add(us, "delete", cmd_user_delete, "delete a user, its roles and its tokens").add_argument(
        "name")

    ro = sub.add_parser("role", help="roles of users").add_subparsers(dest="cmd", required=True)
    for name, func, help_ in (("grant", cmd_role_grant, "give a user a role"),
                              ("revoke", cmd_role_revoke, "take a role away from a user")):
        sp = add(ro, name, func, help_)
        sp.add_argument("user")
        sp.add_argument("role", choices=ROLES)
        sp.add_argument("--project", help=f"for {', '.join(PROJECT_ROLES)}: the project")
    rl = add(ro, "list", cmd_role_list, "list the role bindings you may see",
             columns=ROLE_COLUMNS)
    rl.add_argument("--user")
    rl.add_argument("--project")

    to = sub.add_parser("token", help="your named API tokens").add_subparsers(dest="cmd",
                                                                               required=True)
    tc = add(to, "create", cmd_token_create, "create a named API token (shown once)",
             json_=True)
    tc.add_argument("name")
    tc.add_argument("--role", choices=ROLES, required=True,
                    help="what it acts as: one of your roles, or less")
    tc.add_argument("--project", help="for a project role: the project")
    tc.add_argument("--ttl", type=int, metavar="SECONDS", help="default: 90 days")
    add(to, "list", cmd_token_list, "list your tokens (never their secrets)",
        columns=TOKEN_COLUMNS)
    add(to, "revoke", cmd_token_revoke, "revoke a token (by id, or by name)").add_argument(
        "id", metavar="ID")

    add(sub, "whoami", cmd_whoami, "who you are, and what this token acts as", json_=True)
    return us
