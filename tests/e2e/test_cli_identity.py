"""Projects, users, roles and named tokens with the real `vauban` CLI against a real
controller process (stopped by PID): an admin makes a project and a member of it; the
member logs in and makes a read-only token, which lists but may not create, and is
refused once revoked."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from controller import allinone
from tests.e2e.region import BIN, E2ERegion


@pytest.fixture
def controller() -> Iterator[E2ERegion]:
    with E2ERegion.controller_only() as region:
        region.token = allinone.admin_token(region.layout)
        yield region


def _vauban(region: E2ERegion, *args: str, config: str,
            token: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with its own config file, and with `token` (else the config's login)."""
    env = {k: v for k, v in region.env().items() if k != "VAUBAN_TOKEN"}
    env["VAUBAN_CONFIG"] = str(region.root / config)
    if token is not None:
        env["VAUBAN_TOKEN"] = token
    return subprocess.run([str(BIN / "vauban"), *args], env=env, text=True,
                          capture_output=True, timeout=600, check=False)


def _ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"{' '.join(out.args[1:])}: {out.stderr}{out.stdout}"
    return out.stdout


def test_a_member_makes_a_viewer_token_that_reads_refuses_writes_and_can_be_revoked(
        controller: E2ERegion) -> None:
    admin = controller.cli
    assert admin("project", "create", "shop").startswith("project shop created")
    made = admin("user", "create", "dana").splitlines()
    assert made[1].startswith("password (shown once, not shown again): ")
    password_file = controller.root / "dana.password"
    password_file.write_text(made[1].rsplit(" ", 1)[1] + "\n")
    admin("role", "grant", "dana", "project-member", "--project", "shop")

    # dana logs in (no second factor: only region admins need one) and keeps her token
    login = _vauban(controller, "login", "--url", controller.layout.url, "--user", "dana",
                    "--password-file", str(password_file), "--ca-file",
                    str(controller.layout.ca_file), config="dana.json")
    assert _ok(login).startswith(f"logged in to {controller.layout.url} as dana")
    dana = {"config": "dana.json"}
    assert "acting as: write in shop" in _ok(_vauban(controller, "whoami", **dana))
    _ok(_vauban(controller, "security-group", "create", "web", "--project", "shop", **dana))

    created = _ok(_vauban(controller, "token", "create", "viewer", "--role", "project-viewer",
                          "--project", "shop", **dana)).splitlines()
    assert "acts as project-viewer in project shop" in created[0]
    assert "not shown again" in created[2]
    secret = created[1].strip()
    viewer = {"config": "viewer.json", "token": secret}

    groups = _ok(_vauban(controller, "security-group", "list", **viewer)).splitlines()
    assert sorted(g.split()[:2] for g in groups[1:]) == [["default", "shop"], ["web", "shop"]]
    refused = _vauban(controller, "security-group", "create", "db", "--project", "shop",
                      **viewer)
    assert refused.returncode == 1
    assert "this needs write access to a project" in refused.stderr
    assert refused.stderr.rstrip().endswith("(403 Forbidden)"), refused.stderr

    tokens = _ok(_vauban(controller, "token", "list", **dana)).splitlines()
    row = next(t.split() for t in tokens[1:] if t.startswith("viewer "))
    assert row[1:3] == ["project-viewer", "shop"]
    assert row[4] != "-" and row[5] == "-"  # used, not revoked
    assert secret not in "\n".join(tokens)
    assert "revoked: it is refused from now on" in _ok(
        _vauban(controller, "token", "revoke", row[-1], **dana))

    gone = _vauban(controller, "security-group", "list", **viewer)
    assert gone.returncode == 1
    assert "the bearer token was revoked" in gone.stderr
    assert gone.stderr.rstrip().endswith("(401 Unauthorized)"), gone.stderr
    assert "viewer" in _ok(_vauban(controller, "token", "list", **dana))  # listed, revoked
    assert "dana" in _ok(_vauban(controller, "whoami", **dana))  # her login still acts
