"""The fleet through the API: node labels, the inventory, rollouts as they are refused and
accepted, servers refused before any SSH login, the fleet key. No server is reached: the
end-to-end tests on the node lab do that."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from controller import __version__
from controller.config import ControllerConfig
from controller.db.models import FleetHost, RolloutJob
from controller.fleet import jobs
from controller.region import Region
from tests.functional.helpers import Api, inventory


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def _refused(r: TestResponse, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.json
    assert r.mimetype == "application/problem+json"
    body: dict[str, Any] = r.json  # type: ignore[assignment]
    for w in words:
        assert w in body["detail"], body
    return body


def _audit(api: Api, action: str) -> list[dict[str, Any]]:
    r = api.get(f"/api/v1/audit-events?action={action}")
    assert r.status_code == 200, r.json
    return r.json  # type: ignore[return-value]


def _host_key(tmp_path: Path) -> str:
    path = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _add_fleet_hosts(region: Region, host_key: str, *names: str) -> None:
    with region.sessions() as db, db.begin():
        for i, name in enumerate(names):
            db.add(FleetHost(name=name, address=f"10.0.0.{21 + i}", host_key=host_key,
                             created_by="admin"))


def _releases(config: ControllerConfig, *versions: str) -> None:
    config.releases.mkdir(parents=True, exist_ok=True)
    for version in versions:
        (config.releases / f"vauban-{version}-wheels.tar").write_bytes(b"")


# --- node labels -------------------------------------------------------------------------

def test_labels_are_set_removed_and_audited(api: Api) -> None:
    node = api.join_node("n1")
    r = api.post("/api/v1/nodes/n1/labels", json={"set": {"rack": "r12", "gpu": "a100"}})
    assert r.status_code == 200, r.json
    assert r.json["labels"] == {"rack": "r12", "gpu": "a100"}  # type: ignore[index]
    r = api.post(f"/api/v1/nodes/{node.id}/labels",
                 json={"set": {"rack": "r13"}, "remove": ["gpu", "absent"]})
    assert r.status_code == 200, r.json
    assert r.json["labels"] == {"rack": "r13"}  # type: ignore[index]
    assert api.get("/api/v1/nodes/n1").json["labels"] == {"rack": "r13"}  # type: ignore[index]
    events = _audit(api, "node.label")
    assert [(e["target"], e["outcome"], e["detail"]) for e in events] == [
        (f"node/{node.id}", "accepted", {"set": {"rack": "r13"}, "remove": ["gpu", "absent"]}),
        (f"node/{node.id}", "accepted", {"set": {"rack": "r12", "gpu": "a100"}, "remove": []}),
    ]


def test_bad_labels_are_refused_and_change_nothing(api: Api) -> None:
    api.join_node("n1")
    assert api.post("/api/v1/nodes/n1/labels", json={"set": {"rack": "r12"}}).status_code == 200
    _refused(api.post("/api/v1/nodes/n1/labels", json={"set": {"Rack": "r1"}}), 422,
             "label key 'Rack': 1 to 63 of a-z 0-9 _ . -, beginning with a letter or digit")
    _refused(api.post("/api/v1/nodes/n1/labels", json={"set": {"rack": "r 1"}}), 422,
             "label rack: value 'r 1': up to 63 of A-Z a-z 0-9 _ . -")
    _refused(api.post("/api/v1/nodes/n1/labels", json={"set": {"rack": 12}}), 422,
             "body field 'set.rack'")
    _refused(api.post("/api/v1/nodes/n1/labels",
                      json={"set": {f"k{i}": "v" for i in range(65)}}), 422, "body field 'set'")
    many = {f"k{i}": "v" for i in range(40)}
    assert api.post("/api/v1/nodes/n1/labels", json={"set": many}).status_code == 200
    _refused(api.post("/api/v1/nodes/n1/labels",
                      json={"set": {f"j{i}": "v" for i in range(24)}}), 422,
             "a node has at most 64 labels")
    labels = api.get("/api/v1/nodes/n1").json["labels"]  # type: ignore[index]
    assert labels == {"rack": "r12", **many}
    _refused(api.post("/api/v1/nodes/ghost/labels", json={"set": {"rack": "r1"}}), 404)
    assert len(_audit(api, "node.label")) == 2  # the accepted ones only


def test_a_label_whose_inventory_group_another_label_has_is_refused(api: Api) -> None:
    api.join_node("n1")
    api.join_node("n2")
    assert api.post("/api/v1/nodes/n1/labels", json={"set": {"rack.a": "x"}}).status_code == 200
    _refused(api.post("/api/v1/nodes/n2/labels", json={"set": {"rack_a": "x"}}), 422,
             "label rack_a=x would share the inventory group label_rack_a_x with rack.a=x")
    _refused(api.post("/api/v1/nodes/n1/labels", json={"set": {"rack": "a_x"}}), 422,
             "label rack=a_x would share the inventory group label_rack_a_x with rack.a=x")
    assert api.post("/api/v1/nodes/n2/labels", json={"set": {"rack.a": "x"}}).status_code == 200
    assert api.get("/api/v1/nodes/n2").json["labels"] == {"rack.a": "x"}  # type: ignore[index]


# --- inventory ---------------------------------------------------------------------------

def test_inventory_lists_the_fleet_with_labels(api: Api, region: Region, tmp_path: Path) -> None:
    _add_fleet_hosts(region, _host_key(tmp_path), "n1", "n2")
    node = api.join_node("n1")
    api.post("/api/v1/nodes/n1/labels", json={"set": {"rack": "r12"}})
    r = api.get("/api/v1/inventory")
    assert r.status_code == 200, r.json
    inv = r.json
    assert inv["vauban_nodes"] == {"hosts": ["n1", "n2"]}  # type: ignore[index]
    assert inv["label_rack_r12"] == {"hosts": ["n1"]}  # type: ignore[index]
    hostvars = inv["_meta"]["hostvars"]  # type: ignore[index]
    assert hostvars["n1"]["vauban_node_id"] == node.id
    assert hostvars["n2"]["vauban_labels"] == {}
    assert api.client.get("/api/v1/inventory").status_code == 401


# --- rollouts ----------------------------------------------------------------------------

def test_rollout_refused_without_its_release(api: Api, region: Region, tmp_path: Path) -> None:
    _add_fleet_hosts(region, _host_key(tmp_path), "n1")
    releases = region.config.releases
    _refused(api.post("/api/v1/rollouts", json={}), 422,
             f"no release {__version__} in {releases} (there: none); build it with "
             f"'make dist' and copy dist/vauban-{__version__}-wheels.tar there")
    _releases(region.config, "0.9.1", "0.10.0")
    (releases / "vauban-notes.txt").write_text("not a release")
    _refused(api.post("/api/v1/rollouts", json={"version": "1.2.3"}), 422,
             f"no release 1.2.3 in {releases} (there: 0.10.0, 0.9.1)")
    _refused(api.post("/api/v1/rollouts", json={"version": "../../etc"}), 422,
             "body field 'version'")
    assert api.get("/api/v1/rollouts").json == []


def test_rollout_refused_on_an_empty_fleet_or_unknown_hosts(api: Api, region: Region,
                                                            tmp_path: Path) -> None:
    _releases(region.config, __version__)
    _refused(api.post("/api/v1/rollouts", json={}), 422,
             "the fleet has no servers: add them with 'vauban node add'")
    _add_fleet_hosts(region, _host_key(tmp_path), "n1")
    _refused(api.post("/api/v1/rollouts", json={"limit": ["n1", "ghost", "n9"]}), 422,
             "not in the fleet: ghost, n9 (add servers with 'vauban node add')")
    _refused(api.post("/api/v1/rollouts", json={"limit": ["Not A Name"]}), 422,
             "limit: 'Not A Name' is not a host name")
    _refused(api.post("/api/v1/rollouts", json={"limit": []}), 422, "body field 'limit'")
    _refused(api.post("/api/v1/rollouts", json={"tags": ["a,b"]}), 422, "tags: 'a,b'")
    assert api.get("/api/v1/rollouts").json == []
    assert _audit(api, "rollout.run") == []


def test_one_rollout_at_a_time(api: Api, region: Region, tmp_path: Path) -> None:
    _releases(region.config, __version__)
    _add_fleet_hosts(region, _host_key(tmp_path), "n1")
    with region.sessions() as db, db.begin():
        running = RolloutJob(state="running", version=__version__, batch_size=1,
                             requested_by="admin")
        db.add(running)
        db.flush()
        running_id = running.id
    body = _refused(api.post("/api/v1/rollouts", json={}), 409,
                    f"rollout {running_id} is running: one rollout at a time")
    assert body["rollout"] == running_id


def test_rollout_accepted(api: Api, region: Region, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker process is not started here (it would run ansible-playbook against
    # servers that do not exist): a fake spawn records the call. The worker itself is
    # tested in tests/unit/controller/test_rollout_worker.py and on the node lab.
    spawned: list[tuple[ControllerConfig, str]] = []

    def spawn(config: ControllerConfig, job_id: str) -> int:
        spawned.append((config, job_id))
        return 424242

    monkeypatch.setattr(jobs, "spawn", spawn)
    _releases(region.config, __version__, "0.9.1")
    _add_fleet_hosts(region, _host_key(tmp_path), "n1", "n2", "n3")
    r = api.post("/api/v1/rollouts", json={"limit": ["n3", "n1", "n3"], "batch": 1,
                                           "tags": ["agent"], "upgrade": True,
                                           "version": "0.9.1"})
    assert r.status_code == 202, r.json
    job: dict[str, Any] = r.json  # type: ignore[assignment]
    assert spawned == [(region.config, job["id"])]
    assert (job["state"], job["version"], job["batch_size"], job["tags"], job["upgrade"],
            job["requested_by"], job["error"]) == ("pending", "0.9.1", 1, ["agent"], True,
                                                   "admin", None)
    assert [(h["host"], h["batch"], h["state"], h["tasks_done"]) for h in job["hosts"]] == [
        ("n3", 0, "pending", 0), ("n1", 1, "pending", 0)]  # in the order asked, once each
    assert api.get(f"/api/v1/rollouts/{job['id']}").json == job
    assert [j["id"] for j in api.get("/api/v1/rollouts").json] == [job["id"]]  # type: ignore[union-attr]
    with region.reads() as db:
        assert jobs.get(db, job["id"]).worker_pid == 424242
    op = api.get(f"/api/v1/operations/{job['operation_id']}").json
    assert (op["kind"], op["target_id"], op["target_name"], op["state"]) == (  # type: ignore[index]
        "rollout", job["id"], "rollout of 2 hosts", "pending")
    [event] = _audit(api, "rollout.run")
    assert (event["target"], event["outcome"]) == (f"rollout/{job['id']}", "accepted")
    assert event["detail"] == {"hosts": ["n3", "n1"], "batch": 1, "tags": ["agent"],
                               "upgrade": True, "version": "0.9.1"}
    r = api.get(f"/api/v1/rollouts/{job['id']}/log")
    assert (r.status_code, r.text) == (200, "")
    # the fake worker never ran: the next rollout finds it gone and fails its job
    r = api.post("/api/v1/rollouts", json={"limit": ["n2"]})
    assert r.status_code == 202, r.json
    first = api.get(f"/api/v1/rollouts/{job['id']}").json
    assert first["state"] == "failed"  # type: ignore[index]
    assert first["error"] == "the rollout's worker (PID 424242) ended without finishing"  # type: ignore[index]
    assert [h["state"] for h in first["hosts"]] == ["not run", "not run"]  # type: ignore[index]
    # the end of a rollout is audited like its start
    assert [(e["target"], e["outcome"]) for e in _audit(api, "rollout.run")][1:] == [
        (f"rollout/{job['id']}", "failed"), (f"rollout/{job['id']}", "accepted")]


def test_unknown_rollout_is_a_404_problem(api: Api) -> None:
    for path in ("/api/v1/rollouts/nope", "/api/v1/rollouts/nope/log"):
        body = _refused(api.get(path), 404, "rollout 'nope' does not exist")
        assert body["status"] == 404 and body["title"] == "Not found"


# --- servers added over SSH --------------------------------------------------------------

def _private_key(tmp_path: Path) -> str:
    path = tmp_path / "operator_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.read_text()


def _free_port() -> int:
    """A loopback port where nothing listens (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_fleet_host_body_is_checked(api: Api, tmp_path: Path) -> None:
    body = {"address": "10.0.0.21", "name": "n1", "ssh_private_key": _private_key(tmp_path)}
    fp = "SHA256:oECuZ8uxX9TH3qqA9PnGO5PjOSz0BSCtevLFKVI+xs4"
    _refused(api.post("/api/v1/fleet/hosts", json=body), 422,
             "give the server's host key: host_key_sha256 or known_hosts (only a node that "
             "joined already, which n1 is not, vouches for its own)")
    _refused(api.post("/api/v1/fleet/hosts", json={
        **body, "host_key_sha256": fp, "known_hosts": f"10.0.0.21 {_host_key(tmp_path)}"}),
        422, "host_key_sha256 or known_hosts, not both")
    _refused(api.post("/api/v1/fleet/hosts", json={**body, "host_key_sha256": "MD5:aa:bb"}),
             422, "host_key_sha256: a host key fingerprint is 'SHA256:' and 43 base64 "
                  "characters")
    _refused(api.post("/api/v1/fleet/hosts", json={**body, "known_hosts": "# nothing\n"}),
             422, "the known_hosts given list no key for 10.0.0.21")
    _refused(api.post("/api/v1/fleet/hosts", json={**body, "host_key_sha256": fp,
                                                    "address": "-oProxyCommand=x"}),
             422, "body field 'address'")
    _refused(api.post("/api/v1/fleet/hosts", json={**body, "host_key_sha256": fp,
                                                    "ssh_private_key": "short"}),
             422, "body field 'ssh_private_key'")
    _refused(api.post("/api/v1/fleet/hosts", json={
        **body, "host_key_sha256": fp, "ssh_private_key": "-----BEGIN NOTHING-----\n" * 4}),
        422, "the SSH key given is not an unencrypted ed25519, ECDSA or RSA private key")
    assert api.get("/api/v1/fleet/hosts").json == []


def test_unreachable_server_is_refused_and_audited(api: Api, tmp_path: Path) -> None:
    port = _free_port()
    r = api.post("/api/v1/fleet/hosts", json={
        "address": "127.0.0.1", "port": port, "name": "n1",
        "ssh_private_key": _private_key(tmp_path),
        "host_key_sha256": "SHA256:oECuZ8uxX9TH3qqA9PnGO5PjOSz0BSCtevLFKVI+xs4"})
    body = _refused(r, 422, f"cannot reach root@127.0.0.1:{port}")
    assert body["title"] == "Server not added"
    [event] = _audit(api, "fleet.add")
    assert (event["target"], event["outcome"], event["actor"]) == ("fleet-host/n1", "refused",
                                                                   "admin")
    assert event["detail"]["address"] == "127.0.0.1"
    assert f"cannot reach root@127.0.0.1:{port}" in event["detail"]["error"]
    assert api.get("/api/v1/fleet/hosts").json == []


def test_a_joined_node_is_pinned_by_the_host_keys_it_reported(api: Api,
                                                              tmp_path: Path) -> None:
    """An appliance node joins by itself; adding it to the fleet needs no pin from the
    operator, only one its agent reported over its own identity (the login then fails
    here: nothing listens, which shows the pin was accepted)."""
    key = _private_key(tmp_path)
    silent = api.join_node("silent")  # reported no SSH host key (an older agent)
    _refused(api.post("/api/v1/fleet/hosts", json={
        "address": "127.0.0.1", "name": "silent", "ssh_private_key": key}),
        422, "node silent has reported no SSH host key")
    # a pin from the operator does not stand in for the node's own word
    _refused(api.post("/api/v1/fleet/hosts", json={
        "address": "127.0.0.1", "name": silent.name, "ssh_private_key": key,
        "host_key_sha256": "SHA256:oECuZ8uxX9TH3qqA9PnGO5PjOSz0BSCtevLFKVI+xs4"}),
        422, "node silent has reported no SSH host key")
    inv = inventory().model_copy(update={"ssh_host_keys": [_host_key(tmp_path)]})
    api.join_node("appliance", inv=inv)
    port = _free_port()
    _refused(api.post("/api/v1/fleet/hosts", json={
        "address": "127.0.0.1", "port": port, "name": "appliance", "ssh_private_key": key}),
        422, f"cannot reach root@127.0.0.1:{port}")
    assert api.get("/api/v1/fleet/hosts").json == []
    assert [e["outcome"] for e in _audit(api, "fleet.add")] == ["refused"] * 3


def test_fleet_ssh_key_is_an_openssh_ed25519_line(api: Api, region: Region,
                                                  tmp_path: Path) -> None:
    r = api.get("/api/v1/fleet/ssh-key")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    line = r.text
    assert line.startswith("ssh-ed25519 AAAA") and line.endswith(" vauban-fleet\n")
    assert api.get("/api/v1/fleet/ssh-key").text == line  # made once
    (tmp_path / "fleet.pub").write_text(line)
    printed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "fleet.pub")], check=True,
                             capture_output=True, text=True).stdout
    assert "(ED25519)" in printed
    assert api.client.get("/api/v1/fleet/ssh-key").status_code == 401


def test_a_worker_that_does_not_start_fails_its_job(api: Api, region: Region, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollout whose worker could not be started was left pending with no worker PID,
    which fail_orphans never looks at: every later rollout was refused (409), for ever."""
    def spawn_fails(config: ControllerConfig, job_id: str) -> int:  # a fake, as above
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(jobs, "spawn", spawn_fails)
    _releases(region.config, __version__)
    _add_fleet_hosts(region, _host_key(tmp_path), "n1")
    r = api.post("/api/v1/rollouts", json={})
    assert r.status_code == 500, r.json
    [job] = api.get("/api/v1/rollouts").json  # type: ignore[misc]
    assert (job["state"], job["error"]) == (
        "failed", "its worker did not start: [Errno 24] Too many open files")
    assert job["hosts"][0]["state"] == "not run"
    op = api.get(f"/api/v1/operations/{job['operation_id']}").json
    assert op["state"] == "failed"  # type: ignore[index]
    monkeypatch.setattr(jobs, "spawn", lambda config, job_id: 424242)
    assert api.post("/api/v1/rollouts", json={}).status_code == 202
