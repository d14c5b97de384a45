"""`vauban project|user|role|token|whoami`, answered by the controller's API (the CLI's
client goes through Flask's test client), as a region admin and as a project member."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from controller.cli import main as cli
from controller.region import Region
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import Api, admin_token


@pytest.fixture
def api(client: FlaskClient, region: Region, monkeypatch: pytest.MonkeyPatch) -> Api:
    """The admin's API; the CLI talks to it with whatever headers `api.headers` holds."""
    return cli_answered_by(Api(client, region), monkeypatch)


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, expect success, return what it printed."""
    code = cli.main(list(argv))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return printed.out


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, expect exit status 1, return its error."""
    assert cli.main(list(argv)) == 1
    return capsys.readouterr().err


def _log_in(api: Api, user: str, password: str) -> None:
    r = api.client.post("/api/v1/tokens", json={"username": user, "password": password})
    assert r.status_code == 201, r.json
    api.headers = {"Authorization": f"Bearer {r.json['token']}"}  # type: ignore[index]


def test_projects_users_and_roles(api: Api, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = _out(capsys, "project", "create", "shop", "--description", "the web shop")
    assert out.startswith("project shop created (")
    listed = _out(capsys, "project", "list").splitlines()
    assert listed[0].split() == ["NAME", "DESCRIPTION", "CREATED", "BY", "CREATED", "ID"]
    assert {line.split()[0] for line in listed[1:]} == {"default", "shop"}
    shown = json.loads(_out(capsys, "project", "show", "shop", "--json"))
    assert (shown["name"], shown["description"], shown["created_by"]) == \
        ("shop", "the web shop", "admin")
    assert _out(capsys, "project", "show", "shop").splitlines()[1] == \
        "description: the web shop"

    made = _out(capsys, "user", "create", "alice").splitlines()
    assert made[0].startswith("user alice created (")
    assert made[1].startswith("password (shown once, not shown again): ")
    password = made[1].rsplit(" ", 1)[1]
    secret = tmp_path / "bob.password"
    secret.write_text("a long enough password\n")
    made = _out(capsys, "user", "create", "bob", "--password-file", str(secret))
    assert "password" not in made  # given, so not printed back

    granted = _out(capsys, "role", "grant", "alice", "project-member", "--project", "shop")
    assert granted.startswith("alice holds project-member in project shop (")
    assert "is a role in one project: give the project" in _fails(
        capsys, "role", "grant", "bob", "project-viewer")
    _out(capsys, "role", "grant", "bob", "auditor")
    rows = _out(capsys, "role", "list", "--project", "shop").splitlines()
    assert rows[0].split() == ["USER", "ROLE", "PROJECT", "GIVEN", "BY", "CREATED", "ID"]
    assert [r.split()[:4] for r in rows[1:]] == [["alice", "project-member", "shop", "admin"]]
    users = _out(capsys, "user", "list").splitlines()
    assert users[0].split() == ["NAME", "ROLES", "CREATED", "ID"]
    assert [u.split()[:2] for u in users[1:]] == [
        ["admin", "region-admin"], ["alice", "project-member@shop"], ["bob", "auditor"]]
    shown_user = _out(capsys, "user", "show", "alice").splitlines()
    assert shown_user[0].startswith("alice (") and shown_user[1] == "roles:"
    assert shown_user[2].startswith("  project-member in project shop (given by admin at ")

    # a project member sees its project, and may neither make projects nor read users
    _log_in(api, "alice", password)
    assert [r.split()[0] for r in _out(capsys, "project", "list").splitlines()[1:]] == ["shop"]
    refused = _fails(capsys, "project", "create", "mine")
    assert refused.endswith("(403 Forbidden)\n") and "identity.admin" in refused
    assert "(403 Forbidden)" in _fails(capsys, "user", "list")
    assert "project 'default' does not exist" in _fails(capsys, "project", "show", "default")

    api.headers = {"Authorization": f"Bearer {admin_token(api.client, api.region)}"}
    assert _out(capsys, "role", "revoke", "alice", "project-member", "--project", "shop") == \
        "alice no longer holds project-member in project shop\n"
    assert "user 'alice' does not hold project-member in project shop" in _fails(
        capsys, "role", "revoke", "alice", "project-member", "--project", "shop")
    assert "user 'bob' does not hold region-admin" in _fails(
        capsys, "role", "revoke", "bob", "region-admin")
    assert _out(capsys, "role", "revoke", "bob", "auditor") == "bob no longer holds auditor\n"
    assert _out(capsys, "user", "delete", "bob") == "user bob deleted, with its roles and tokens\n"
    assert "you cannot delete yourself" in _fails(capsys, "user", "delete", "admin")
    assert _out(capsys, "project", "delete", "shop") == "project shop deleted\n"
    assert "does not exist" in _fails(capsys, "project", "show", "shop")


def test_named_tokens_and_whoami(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    _out(capsys, "project", "create", "shop")
    password = _out(capsys, "user", "create", "carol").splitlines()[1].rsplit(" ", 1)[1]
    _out(capsys, "role", "grant", "carol", "project-admin", "--project", "shop")
    _log_in(api, "carol", password)

    me = _out(capsys, "whoami").splitlines()
    assert me[0].startswith("carol (") and me[0].endswith(") at https://controller.invalid")
    assert me[2] == "acting as: admin in shop"
    assert me[3:4] == ["roles:"] and me[4].startswith("  project-admin in project shop (")

    made = _out(capsys, "token", "create", "ci", "--role", "project-viewer",
                "--project", "shop", "--ttl", "3600").splitlines()
    assert made[0].startswith("token ci (") and " acts as project-viewer in project shop " \
        "until " in made[0]
    secret = made[1].strip()
    assert secret.startswith("vbt_")
    assert made[2].startswith("it is not shown again")
    assert "you do not hold region-admin" in _fails(
        capsys, "token", "create", "wide", "--role", "region-admin")
    assert "you have a token named 'ci' already" in _fails(
        capsys, "token", "create", "ci", "--role", "project-viewer", "--project", "shop")

    table = _out(capsys, "token", "list").splitlines()
    assert table[0].split() == ["NAME", "ROLE", "PROJECT", "EXPIRES", "LAST", "USED",
                                "REVOKED", "ID"]
    rows = {r.split()[0]: r.split() for r in table[1:]}
    assert rows["(login)"][1:4] == ["(all", "of", "yours)"]
    assert rows["ci"][1:3] == ["project-viewer", "shop"] and rows["ci"][4:6] == ["-", "-"]
    assert secret not in "\n".join(table)
    listed = json.loads(_out(capsys, "token", "list", "--json"))
    assert all("token" not in t for t in listed)

    login_headers = api.headers
    api.headers = {"Authorization": f"Bearer {secret}"}
    viewer = _out(capsys, "whoami").splitlines()
    token_id = next(t["id"] for t in listed if t["name"] == "ci")
    assert viewer[1] == f"token:     {token_id}"
    assert viewer[2] == "acting as: read in shop"
    groups = _out(capsys, "security-group", "list").splitlines()
    assert groups[0].split()[:2] == ["NAME", "PROJECT"]
    assert [g.split()[:2] for g in groups[1:]] == [["default", "shop"]]
    assert "(403 Forbidden)" in _fails(capsys, "security-group", "create", "web",
                                       "--project", "shop")

    api.headers = login_headers
    assert _out(capsys, "token", "revoke", "ci").startswith(
        f"token ci ({token_id}) revoked: it is refused from now on")
    api.headers = {"Authorization": f"Bearer {secret}"}
    refused = _fails(capsys, "whoami")
    assert "the bearer token was revoked" in refused and refused.endswith(
        "(401 Unauthorized)\n")
    api.headers = login_headers
    revoked = next(t for t in json.loads(_out(capsys, "token", "list", "--json"))
                   if t["id"] == token_id)
    assert revoked["revoked_at"] is not None and revoked["last_used_at"] is not None


def test_objects_made_in_a_project_are_listed_with_it(api: Api,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _out(capsys, "project", "create", "shop")
    _out(capsys, "network", "create", "blue", "--kind", "tenant", "--project", "shop",
         "--subnet", "10.20.0.0/24")
    _out(capsys, "network", "create", "grey", "--kind", "tenant", "--subnet", "10.30.0.0/24")
    nets = _out(capsys, "network", "list").splitlines()
    assert nets[0].split()[:2] == ["NAME", "PROJECT"]
    assert sorted(n.split()[:2] for n in nets[1:]) == [["blue", "shop"], ["grey", "default"]]
    _out(capsys, "security-group", "create", "web", "--project", "shop")
    made = _out(capsys, "port", "create", "blue", "--project", "shop", "--ip", "10.20.0.9",
                "--security-group", "web")
    assert made.startswith("port ") and "on network blue (project shop): " in made
    assert made.rstrip().endswith(" 10.20.0.9")
    port_id = made.split()[1]
    ports = _out(capsys, "port", "list").splitlines()
    assert ports[0].split() == ["ID", "PROJECT", "NETWORK", "VM", "MAC", "ADDRESSES",
                                "DHCP", "SECURITY", "GROUPS"]
    row = ports[1].split()
    assert (len(ports), row[0], row[1], row[2], row[3], row[5], row[6], row[7]) == \
        (2, port_id, "shop", "blue", "-", "10.20.0.9", "no", "web")
    assert "does not exist" in _fails(capsys, "port", "create", "blue", "--project", "default")
    assert _out(capsys, "port", "delete", port_id) == f"port {port_id} deleted\n"
    assert _out(capsys, "port", "list").splitlines()[1:] == []


def test_project_quotas_are_set_and_shown_with_the_usage(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    _out(capsys, "project", "create", "shop")
    out = _out(capsys, "project", "quota", "shop", "--vcpus", "8", "--gpu", "H100=2",
               "--networks", "1")
    assert out.strip() == "quotas of project shop: gpus {'H100': 2}, networks 1, vcpus 8"
    _out(capsys, "project", "quota", "shop", "--vcpus", "-1")  # no limit; the others stay
    shown = json.loads(_out(capsys, "project", "show", "shop", "--json"))
    assert shown["quotas"] == {"gpus": {"H100": 2}, "networks": 1}
    assert api.post("/api/v1/networks", json={"name": "lan", "kind": "tenant",
                                              "project": "shop"}).status_code == 201
    rows = [line.split() for line in _out(capsys, "project", "show", "shop").splitlines()]
    assert ["networks", "1", "1"] in rows and ["vcpus", "none", "0"] in rows
    assert ["gpus", "H100", "2", "0"] in rows
    err = _fails(capsys, "project", "quota", "shop", "--gpu", "H100")
    assert "write MODEL=COUNT" in err
