"""Enrolling an XCP-ng pool through the API and the CLI, against the XAPI simulator: the
members' certificates pinned as confirmed, the password sealed, every refusal leaving
nothing behind, and the pool's agent joining the node made for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import func, select

from agent.drivers.xapi.transport import format_fingerprint
from controller.app import create_app
from controller.cli import main as cli
from controller.db.models import AuditEvent, JoinToken, Node, XapiPool
from controller.region import Region
from controller.services.xcpng import password_purpose
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import Api, FakeNode, make_csr, speaks_agent_protocol
from tests.xapi_sim.fixtures import sim_pool, sim_pools
from tests.xapi_sim.process import SimProcess

__all__ = ["sim_pool", "sim_pools"]  # the fixtures this module uses

PASSWORD = "secret"  # the simulator's root password


@pytest.fixture
def api(region: Region) -> Api:
    return Api(create_app(region).test_client(), region)


def probe_body(sim: SimProcess, member: int = 0, **changes: Any) -> dict[str, Any]:
    return {"url": sim.url(member).rstrip("/"), "username": "root", "password": PASSWORD,
            "fingerprint": format_fingerprint(sim.members[member].fingerprint), **changes}


def enroll_body(sim: SimProcess, name: str = "pool-a", **changes: Any) -> dict[str, Any]:
    return {**probe_body(sim), "name": name,
            "members": {m.host_uuid: m.fingerprint for m in sim.members}, **changes}


def rows(region: Region) -> tuple[int, int, int]:
    """(nodes, pools, join tokens) in the region."""
    with region.sessions() as db:
        return (db.scalar(select(func.count()).select_from(Node)) or 0,
                db.scalar(select(func.count()).select_from(XapiPool)) or 0,
                db.scalar(select(func.count()).select_from(JoinToken)) or 0)


def test_a_probe_shows_every_member_and_its_certificate_and_keeps_nothing(
        api: Api, region: Region, sim_pool: SimProcess) -> None:
    r = api.post("/api/v1/xcpng-pools/probe", json=probe_body(sim_pool))
    assert r.status_code == 200, r.json
    pool: dict[str, Any] = r.json  # type: ignore[assignment]
    assert pool["pool_name"] == "sim-pool"
    shown = {m["host_uuid"]: (m["address"], m["sha256"], m["master"]) for m in pool["members"]}
    assert shown == {m.host_uuid: (m.address, format_fingerprint(m.fingerprint), i == 0)
                     for i, m in enumerate(sim_pool.members)}
    assert PASSWORD not in r.get_data(as_text=True)
    assert pool["repositories"] == [{"uuid": sim_pool.sr, "name": "Local storage",
                                     "type": "ext", "default": True}]
    assert rows(region) == (0, 0, 0)


def test_the_pool_s_disks_go_to_the_storage_repository_named(
        api: Api, region: Region, sim_pool: SimProcess) -> None:
    r = api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool, sr="no-such-sr"))
    assert r.status_code == 422 and f"Local storage ({sim_pool.sr})" in r.json["detail"]  # type: ignore[index]
    assert rows(region) == (0, 0, 0)
    r = api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool, sr="Local storage"))
    assert r.status_code == 201, r.json
    assert api.get("/api/v1/nodes/pool-a").json["xcpng"]["sr_uuid"] == sim_pool.sr  # type: ignore[index]


def test_the_pool_s_vms_are_cloned_from_the_template_named(
        api: Api, region: Region, sim_pool: SimProcess) -> None:
    sim_pool.store.add("VM", {"name_label": "Debian Bookworm 12", "is_a_template": True})
    r = api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool, template="Windows 95"))
    assert r.status_code == 422, r.json
    said = r.json["detail"]  # type: ignore[index]
    assert "no VM templates named 'Windows 95'" in said and "Debian Bookworm 12" in said
    assert rows(region) == (0, 0, 0)
    r = api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool,
                                                         template="Debian Bookworm 12"))
    assert r.status_code == 201, r.json
    assert api.get("/api/v1/nodes/pool-a").json["xcpng"]["template"] == "Debian Bookworm 12"  # type: ignore[index]
    with region.sessions() as db:
        (audit,) = db.scalars(select(AuditEvent).where(AuditEvent.action == "node.add-xcpng"))
        assert audit.detail["template"] == "Debian Bookworm 12"


def test_an_enrolled_pool_is_a_node_whose_agent_joins_and_reads_its_pins(
        api: Api, region: Region, sim_pool: SimProcess) -> None:
    r = api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool))
    assert r.status_code == 201, r.json
    enrolled: dict[str, Any] = r.json  # type: ignore[assignment]
    assert PASSWORD not in r.get_data(as_text=True)
    node = api.get("/api/v1/nodes/pool-a")
    assert node.status_code == 200 and node.json["state"] == "new"  # type: ignore[index]
    shown = node.json["xcpng"]  # type: ignore[index]
    assert shown["pool_uuid"] == enrolled["pool"]["pool_uuid"]
    assert {m["host_uuid"]: m["sha256"] for m in shown["members"]} == {
        m.host_uuid: format_fingerprint(m.fingerprint) for m in sim_pool.members}
    assert PASSWORD not in node.get_data(as_text=True)
    with region.sessions() as db:
        stored = db.get_one(XapiPool, enrolled["node_id"])
        sealed = stored.password_sealed  # opens for this node only, to the password
        assert sealed.startswith("vauban-secret:") and PASSWORD not in sealed.split(":", 4)[4]
        assert region.region_key.open(password_purpose(stored.node_id), sealed) == b"secret"
        audit = list(db.scalars(select(AuditEvent).where(
            AuditEvent.action == "node.add-xcpng")))
    assert len(audit) == 1 and PASSWORD not in json.dumps(audit[0].detail)
    # its agent joins the node made for it (by its name only) and reads how to reach it
    agent = speaks_agent_protocol(api.client)
    wrong = agent.post("/api/v1/join", json={"token": enrolled["join_token"], "name": "other",
                                             "csr_pem": make_csr("other")})
    assert wrong.status_code == 422 and "pool-a" in wrong.json["detail"], wrong.json  # type: ignore[index]
    joined = agent.post("/api/v1/join", json={"token": enrolled["join_token"],
                                              "name": "pool-a", "csr_pem": make_csr("pool-a")})
    assert joined.status_code == 201, joined.json
    assert joined.json["node_id"] == enrolled["node_id"]  # type: ignore[index]
    assert rows(region)[0] == 1
    cert = x509.load_pem_x509_certificate(joined.json["certificate_pem"].encode())  # type: ignore[index]
    node = FakeNode(enrolled["node_id"], "pool-a", {
        "subject": ((("commonName", enrolled["node_id"]),),),
        "serialNumber": format(cert.serial_number, "X")})
    settings = agent.get(f"/agent/v1/nodes/{node.id}/xapi", environ_overrides=node.environ())
    assert settings.status_code == 200, settings.json
    assert settings.json["password"] == PASSWORD  # type: ignore[index]
    assert settings.json["pins"] == {m.address: m.fingerprint  # type: ignore[index]
                                     for m in sim_pool.members}
    # each member's certificate as the pool records it: its agent's only trust anchor
    assert settings.json["certificates"] == {m.address: m.cert_pem  # type: ignore[index]
                                             for m in sim_pool.members}
    shown_node = api.get("/api/v1/nodes/pool-a").get_data(as_text=True)
    assert "CERTIFICATE" not in shown_node  # shown as pins only
    assert settings.json["template"] is None  # the default: "Other install media"
    # a KVM agent run on the pool's node by mistake is refused, saying which agent to run
    kvm = agent.get(f"/agent/v1/nodes/{node.id}/storage", environ_overrides=node.environ())
    assert kvm.status_code == 409 and kvm.json["type"].endswith("/wrong-agent"), kvm.json  # type: ignore[index]
    assert 'hypervisor = "xapi"' in kvm.json["detail"]  # type: ignore[index]


def test_a_pools_agent_joins_again_with_a_new_token_and_the_old_one_is_revoked(
        api: Api, region: Region, sim_pool: SimProcess, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A rebuilt agent host (its certificate lost) or a first token lost or expired: the
    pool's node is not lost with it."""
    enrolled = api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool)).json
    agent = speaks_agent_protocol(api.client)
    joined = agent.post("/api/v1/join", json={"token": enrolled["join_token"],
                                              "name": "pool-a", "csr_pem": make_csr("pool-a")})
    assert joined.status_code == 201
    first = joined.json["certificate_pem"]  # type: ignore[index]
    cli_answered_by(api, monkeypatch)
    assert cli.main(["node", "xcpng-token", "pool-a"]) == 0
    out = capsys.readouterr().out
    (unused,) = [w for w in out.split() if w.startswith("vbj_")]
    again = api.post("/api/v1/nodes/pool-a/xcpng/join-token")
    assert again.status_code == 201, again.json
    token = again.json["join_token"]  # type: ignore[index]
    refused = agent.post("/api/v1/join", json={"token": unused, "name": "pool-a",
                                               "csr_pem": make_csr("pool-a")})
    assert refused.status_code == 401  # revoked by the newer one
    rejoined = agent.post("/api/v1/join", json={"token": token, "name": "pool-a",
                                                "csr_pem": make_csr("pool-a")})
    assert rejoined.status_code == 201, rejoined.json
    assert rejoined.json["node_id"] == enrolled["node_id"]  # type: ignore[index]
    assert rejoined.json["certificate_pem"] != first  # type: ignore[index]
    assert rows(region)[0] == 1
    with region.sessions() as db:
        issued = list(db.scalars(select(AuditEvent).where(
            AuditEvent.action == "node.xcpng-token")))
    assert len(issued) == 2 and token not in json.dumps([a.detail for a in issued])
    kvm = api.join_node("kvm")
    r = api.post(f"/api/v1/nodes/{kvm.name}/xcpng/join-token")
    assert r.status_code == 404 and "not an XCP-ng pool" in r.json["detail"]  # type: ignore[index]


@pytest.mark.parametrize("case", ["fingerprint", "password", "url", "member"])
def test_a_refused_enrollment_says_why_and_leaves_nothing(
        api: Api, region: Region, sim_pool: SimProcess, case: str) -> None:
    other = "ab" * 32
    body = {"fingerprint": enroll_body(sim_pool, fingerprint=format_fingerprint(other)),
            "password": enroll_body(sim_pool, password="wrong"),
            "url": enroll_body(sim_pool, url="https://127.0.0.1:1/path"),
            "member": {**enroll_body(sim_pool), **probe_body(sim_pool, 1)}}[case]
    before = sim_pool.members[0].requests
    r = api.post("/api/v1/xcpng-pools", json=body)
    assert r.status_code == 422 and r.content_type == "application/problem+json", r.json
    detail: str = r.json["detail"]  # type: ignore[index]
    if case == "fingerprint":  # both named, and not a byte sent to the host
        assert format_fingerprint(other) in detail
        assert format_fingerprint(sim_pool.members[0].fingerprint) in detail
        assert sim_pool.members[0].requests == before
    elif case == "password":
        assert "refused the credentials" in detail
    elif case == "url":
        assert "https://HOST[:PORT]" in detail
    else:  # a member names its master; its fingerprint is read on its console, not here
        assert f"the master is {sim_pool.members[0].address}" in detail
        assert "master's console" in detail
    assert rows(region) == (0, 0, 0)


def test_an_unreachable_master_is_a_502_and_leaves_nothing(
        api: Api, region: Region, sim_pool: SimProcess) -> None:
    body = enroll_body(sim_pool)
    sim_pool.members[0].stop()
    r = api.post("/api/v1/xcpng-pools", json=body)
    assert r.status_code == 502 and "cannot be reached" in r.json["detail"], r.json  # type: ignore[index]
    assert rows(region) == (0, 0, 0)


def test_members_changed_since_the_probe_are_refused(
        api: Api, region: Region, sim_pool: SimProcess) -> None:
    body = enroll_body(sim_pool)
    sim_pool.members[1].rekey()  # a member's certificate changed after the operator looked
    r = api.post("/api/v1/xcpng-pools", json=body)
    assert r.status_code == 409 and sim_pool.members[1].host_uuid in r.json["detail"], r.json  # type: ignore[index]
    assert rows(region) == (0, 0, 0)


def test_a_pool_is_enrolled_once(api: Api, region: Region, sim_pool: SimProcess) -> None:
    assert api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool)).status_code == 201
    again = api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool, name="pool-b"))
    assert again.status_code == 409 and "already enrolled as node pool-a" in again.json["detail"]  # type: ignore[index]
    assert rows(region) == (1, 1, 1)


@pytest.mark.parametrize("changes", [{"fingerprint": "zz"}, {"name": "Bad_Name"},
                                     {"members": {}}, {"username": ""}, {"extra": 1},
                                     # 255 characters, but 259 with the port written out
                                     {"url": "https://" + "h" * 247}])
def test_enrollment_input_is_checked(api: Api, sim_pool: SimProcess,
                                     changes: dict[str, Any]) -> None:
    r = api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool, **changes))
    assert r.status_code == 422 and r.content_type == "application/problem+json"
    assert sim_pool.members[0].requests == 0


def test_a_pool_whose_name_is_too_long_to_keep_is_refused_in_words(
        api: Api, region: Region, sim_pool: SimProcess) -> None:
    pool = next(iter(sim_pool.store.live("pool")))
    sim_pool.store.modify("pool", pool, name_label="p" * 256)
    r = api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool))
    assert r.status_code == 422 and "pool's name is longer than 255" in r.json["detail"]  # type: ignore[index]
    assert rows(region) == (0, 0, 0)


def test_the_cli_shows_the_members_and_enrolls_on_yes(
        api: Api, sim_pool: SimProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cli_answered_by(api, monkeypatch)
    password_file = tmp_path / "pool-password"
    password_file.write_text(PASSWORD + "\n")
    args = ["node", "add-xcpng", sim_pool.url().rstrip("/"), "--user", "root",
            "--fingerprint", sim_pool.members[0].fingerprint, "--password-file",
            str(password_file)]
    assert cli.main(args) == 1  # no terminal to confirm on, no --yes: not enrolled
    assert api.get("/api/v1/nodes/sim-pool").status_code == 404
    assert cli.main([*args, "--yes"]) == 0
    out = capsys.readouterr().out
    for m in sim_pool.members:
        assert format_fingerprint(m.fingerprint) in out and m.address in out
    assert "vbj_" in out and PASSWORD not in out
    assert cli.main(["node", "show", "sim-pool"]) == 0
    shown = capsys.readouterr().out
    assert "XCP-ng pool sim-pool" in shown
    assert format_fingerprint(sim_pool.members[1].fingerprint) in shown


def test_certificates_changed_on_purpose_are_re_pinned_as_confirmed(
        api: Api, region: Region, sim_pool: SimProcess, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert api.post("/api/v1/xcpng-pools", json=enroll_body(sim_pool)).status_code == 201
    old = sim_pool.members[1].fingerprint
    new = sim_pool.members[1].rekey()
    probed = api.post("/api/v1/nodes/pool-a/xcpng/probe", json={})
    assert probed.status_code == 200, probed.json
    shown = {m["host_uuid"]: m["sha256"] for m in probed.json["members"]}  # type: ignore[index]
    assert shown[sim_pool.members[1].host_uuid] == format_fingerprint(new)
    stale = {m.host_uuid: m.fingerprint for m in sim_pool.members} | {
        sim_pool.members[1].host_uuid: old}
    r = api.put("/api/v1/nodes/pool-a/xcpng/members", json={"members": stale})
    assert r.status_code == 409 and sim_pool.members[1].host_uuid in r.json["detail"]  # type: ignore[index]
    cli_answered_by(api, monkeypatch)
    assert cli.main(["node", "xcpng-repin", "pool-a"]) == 1  # no terminal, no --yes
    assert cli.main(["node", "xcpng-repin", "pool-a", "--yes"]) == 0
    out = capsys.readouterr().out
    assert format_fingerprint(old) in out and format_fingerprint(new) in out
    pinned = api.get("/api/v1/nodes/pool-a").json["xcpng"]["members"]  # type: ignore[index]
    assert {m["host_uuid"]: m["sha256"] for m in pinned} == shown
    with region.sessions() as db:  # the new certificate is kept: the agent's new anchor
        (pool,) = db.scalars(select(XapiPool))
        assert {m["host_uuid"]: m["certificate"] for m in pool.members} == {
            m.host_uuid: m.cert_pem for m in sim_pool.members}
    with region.sessions() as db:
        (entry,) = db.scalars(select(AuditEvent).where(AuditEvent.action == "node.xcpng-repin"))
        assert entry.detail["changed"] == {sim_pool.members[1].host_uuid: {
            "from": format_fingerprint(old), "to": format_fingerprint(new)}}
    # the master's own change: refused with the old pin, taken with the new fingerprint
    master = sim_pool.members[0].rekey()
    refused = api.post("/api/v1/nodes/pool-a/xcpng/probe", json={})
    assert refused.status_code == 422 and format_fingerprint(master) in refused.json["detail"]  # type: ignore[index]
    assert cli.main(["node", "xcpng-repin", "pool-a", "--fingerprint", master, "--yes"]) == 0
    assert cli.main(["node", "xcpng-repin", "pool-a"]) == 0  # nothing changed any more
    with region.sessions() as db:  # the password went to a host trusted on the word given
        probes = [e.detail for e in db.scalars(select(AuditEvent).where(
            AuditEvent.action == "node.xcpng-probe"))]
    assert probes and all(p["trusted"] == format_fingerprint(master) for p in probes)
    assert "every member presents its pinned certificate" in capsys.readouterr().out
