"""No secret leaks: a real region (controller and agent processes) is driven through the
usual operations with every secret it makes recorded (the admin password, a wrong one
tried, the admin's TOTP seed, API tokens, join tokens, the agent's key, the fleet key,
the region key), then every log the run wrote and every API answer and CLI output it
received is searched for each secret and its obvious encodings. Only the answer that
hands a secret to its owner (a new token, a new join token) may hold that one secret.
At rest, the fleet key is found nowhere in the controller's data directory in plain
text, nor the TOTP seed outside the admin's own seed file."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from controller import allinone
from controller.cli.remotes import Store
from controller.fleet.keys import fleet_sealed_key_path
from controller.secretbox import load_region_key, region_key_path
from controller.services.totp import code_from_uri
from tests.e2e.leaks import holds, leaks_in_files, run_logs
from tests.e2e.region import BIN, E2ERegion

pytestmark = pytest.mark.e2e


@dataclass
class Run:
    """What a run received (labelled answers) and the secrets it made (labelled)."""

    region: E2ERegion
    answers: list[tuple[str, bytes, str | None]] = field(default_factory=list)
    secrets: dict[str, bytes] = field(default_factory=dict)

    def api(self, method: str, path: str, token: str | None = None,
            owner_of: str | None = None, **kwargs: Any) -> requests.Response:
        """Call the API and keep the answer; `owner_of` names the one secret this
        answer hands out, and may hold."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = requests.request(method, f"{self.region.layout.url}/api/v1{path}",
                             verify=str(self.region.layout.ca_file), timeout=60,
                             headers=headers, **kwargs)
        self.answers.append((f"{method} {path} -> {r.status_code}", r.content, owner_of))
        return r

    def cli(self, *args: str, owner_of: str | None = None,
            env: dict[str, str] | None = None) -> str:
        out = subprocess.run([str(BIN / "vauban"), *args], env=env or self.region.env(),
                             text=True, capture_output=True, timeout=600, check=False)
        self.answers.append((f"vauban {' '.join(args)}", (out.stdout + out.stderr).encode(),
                             owner_of))
        assert out.returncode == 0, f"vauban {' '.join(args)}: {out.stderr}{out.stdout}"
        return out.stdout


@pytest.fixture
def run(libvirtd: str, testguest_image: Path) -> Iterator[Run]:
    region = E2ERegion.create()
    try:
        yield Run(region)
    finally:
        region.stop()


def _drive(run: Run, image: Path, tmp_path: Path) -> None:
    region, lay = run.region, run.region.layout
    region.start_controller()
    password = lay.password_file.read_text().strip()
    run.secrets["admin password"] = password.encode()
    wrong = f"wrong-{uuid.uuid4().hex}"
    run.secrets["a wrong password"] = wrong.encode()
    uri = lay.totp_file.read_text().strip()
    seed = parse_qs(urlsplit(uri).query)["secret"][0]
    run.secrets["admin TOTP seed"] = seed.encode()
    run.secrets["admin TOTP seed (raw)"] = base64.b32decode(seed)
    assert run.api("POST", "/tokens", json={"username": "admin", "password": wrong}
                   ).status_code == 401
    # the right password alone: the answer asks for the code (and holds no seed)
    assert run.api("POST", "/tokens", json={"username": "admin", "password": password}
                   ).json()["totp_required"] is True
    token = run.api("POST", "/tokens", owner_of="admin token", json={
        "username": "admin", "password": password,
        "totp": code_from_uri(uri, datetime.now(UTC))}).json()["token"]
    run.secrets["admin token"] = token.encode()
    region.token = token

    join = run.api("POST", "/join-tokens", token, owner_of="join token",
                   json={"description": "secrets e2e"}).json()
    run.secrets["join token"] = join["token"].encode()
    node_name = f"e2e-{region.root.name[-8:]}"
    subprocess.run([str(allinone.VENV_BIN / "vauban-agent"), "--data-dir", str(lay.agent_dir),
                    "join", "--controller", lay.url, "--token", join["token"],
                    "--ca-sha256", join["ca_sha256"], "--name", node_name],
                   check=True, capture_output=True)
    region.start_agent()

    # the CLI logs in with the password and a code, and makes a second join token; the
    # code of the next step: the API's login above used this step's
    cli_config = tmp_path / "cli.json"
    password_file = tmp_path / "password"
    password_file.write_text(password)
    env = {k: v for k, v in region.env().items() if k != "VAUBAN_TOKEN"}
    env["VAUBAN_CONFIG"] = str(cli_config)
    run.cli("login", "--url", lay.url, "--ca-file", str(lay.ca_file),
            "--password-file", str(password_file),
            "--totp", code_from_uri(uri, datetime.now(UTC) + timedelta(seconds=30)), env=env)
    _, remote = Store.load(cli_config).chosen(None)  # the remote the login saved
    assert remote is not None and remote.token is not None
    run.secrets["CLI token"] = remote.token.encode()
    second = json.loads(run.cli("join-token", "create", "--json", owner_of="second join token",
                                env=env))
    run.secrets["second join token"] = second["token"].encode()

    # the usual operations, through the CLI and the API
    run.cli("image", "import", str(image), "--name", "testguest")
    user_data = tmp_path / "user-data"
    user_data.write_text("#!/bin/sh\necho hello\n")
    run.cli("vm", "create", "leaky", "--image", "testguest", "--cpus", "1", "--memory", "256",
            "--user-data", str(user_data), "--wait")
    vm = json.loads(run.cli("vm", "show", "leaky", "--json"))
    region.created_vm_ids.add(vm["id"])
    for args in (("status", "--json"), ("node", "list", "--json"), ("vm", "list", "--json"),
                 ("image", "list", "--json"), ("join-token", "list", "--json"),
                 ("fleet", "list", "--json"), ("rollout", "list", "--json"),
                 ("audit", "list", "--json"), ("node", "show", node_name, "--json")):
        run.cli(*args)
    nodes = run.api("GET", "/nodes", token).json()
    for path in ("/status", "/instances", "/images", "/join-tokens", "/operations",
                 "/audit-events", "/audit-events/export", "/fleet/hosts", "/fleet/ssh-key",
                 "/rollouts", "/inventory", "/networks", "/security-groups", "/volumes",
                 "/gpus", "/openapi.json", *(f"/nodes/{n['id']}" for n in nodes)):
        run.api("GET", path, token)
    run.cli("audit", "verify")
    run.cli("vm", "delete", "leaky", "--wait")


def _add_key_secrets(run: Run) -> None:
    """The keys the run made: the region key, the fleet key, the agent's TLS key."""
    controller_dir = run.region.layout.controller_dir
    run.secrets["region key"] = region_key_path(controller_dir).read_bytes()
    box = load_region_key(controller_dir)
    pem = box.open("fleet-ssh-key", fleet_sealed_key_path(controller_dir).read_text())
    key = serialization.load_ssh_private_key(pem, password=None)
    run.secrets["fleet key (raw)"] = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption())
    for i, line in enumerate(pem.splitlines()[1:-1]):
        run.secrets[f"fleet key (PEM line {i + 1})"] = line
    for path in run.region.layout.agent_dir.rglob("*"):
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes():
            for i, line in enumerate(path.read_bytes().splitlines()[1:-1]):
                run.secrets[f"agent key {path.name} (PEM line {i + 1})"] = line


def test_no_secret_is_logged_returned_or_kept_in_plain_text(
        run: Run, testguest_image: Path, tmp_path: Path) -> None:
    _drive(run, testguest_image, tmp_path)
    run.region.layout.service("agent").stop()
    run.region.layout.service("controller").stop()  # its logs are complete
    _add_key_secrets(run)
    assert len(run.secrets) >= 10, sorted(run.secrets)
    logs = run_logs(run.region.root)
    assert any(p.name == "controller.log" for p in logs) and any(
        p.name == "agent.log" for p in logs), logs
    for label, body, owner_of in run.answers:  # the search sees what it should
        assert owner_of is None or holds(body, run.secrets[owner_of]), \
            f"the answer to {label} does not hold the {owner_of} it hands out"
    assert all(p.stat().st_size > 0 for p in logs if p.name.endswith(".log")), logs
    leaks = leaks_in_files(run.secrets, logs)
    for label, body, owner_of in run.answers:
        leaks += [f"{name} in the answer to {label}" for name, secret in run.secrets.items()
                  if name != owner_of and holds(body, secret)]
    assert not leaks, leaks

    # at rest: the fleet key, the region key and the TOTP seed (sealed in the database)
    # only in their own files
    controller_dir = run.region.layout.controller_dir
    at_rest = {n: s for n, s in run.secrets.items()
               if n.startswith(("fleet key", "region", "admin TOTP seed"))}
    own = {region_key_path(controller_dir), run.region.layout.totp_file}
    for path in controller_dir.rglob("*"):
        if not path.is_file() or path in own:
            continue
        leaks += leaks_in_files(at_rest, [path])
    assert not leaks, leaks
    assert not (controller_dir / "fleet" / "id_ed25519").exists()
    assert os.stat(region_key_path(controller_dir)).st_mode & 0o077 == 0
