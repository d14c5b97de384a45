"""A node's BMC set through the API against a real BMC (OpenIPMI's ipmi_sim), its password
sealed, and the region's fencer powering the node off through it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from controller.app import create_app
from controller.cli import main as cli
from controller.db.models import AuditEvent, NodeBmc
from controller.ha.failover import FenceError, LostNode
from controller.region import Region
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import Api
from tests.integration.test_bmc import Sim, sim

__all__ = ["sim"]  # the fixture this module uses


@pytest.fixture
def api(rbd_region: Region) -> Api:
    return Api(create_app(rbd_region).test_client(), rbd_region)


def settings(sim: Sim, **changes: object) -> dict[str, object]:
    return {"address": sim.bmc.address, "port": sim.bmc.port, "username": sim.bmc.username,
            "password": sim.bmc.password, **changes}


def test_a_bmc_is_kept_once_it_answered_and_its_password_never_shows(
        api: Api, rbd_region: Region, sim: Sim) -> None:
    api.join_node("a")
    r = api.put("/api/v1/nodes/a/bmc", json=settings(sim))
    assert r.status_code == 200, r.json
    assert r.json["power_state"] == "on" and "password" not in r.json  # type: ignore[index]
    shown = api.get("/api/v1/nodes/a/bmc")
    assert shown.status_code == 200 and sim.bmc.password not in shown.get_data(as_text=True)
    node = api.get("/api/v1/nodes/a")  # the node's page shows it too, never the password
    assert node.json["bmc"] == {"kind": "ipmi", "address": sim.bmc.address,  # type: ignore[index]
                                "port": sim.bmc.port, "username": sim.bmc.username}
    assert sim.bmc.password not in node.get_data(as_text=True)
    assert all(n["bmc"] is None for n in api.get("/api/v1/nodes").json)  # type: ignore[union-attr]
    with rbd_region.sessions() as db:
        stored = db.get_one(NodeBmc, api.get("/api/v1/nodes/a").json["id"])
        assert sim.bmc.password not in stored.password_sealed
        entries = list(db.scalars(select(AuditEvent).where(AuditEvent.action == "node.bmc")))
        logged = json.dumps([e.detail for e in entries])
    assert len(entries) == 1 and sim.bmc.password not in logged, logged


def test_settings_the_bmc_refuses_are_not_kept(api: Api, sim: Sim) -> None:
    api.join_node("a")
    r = api.put("/api/v1/nodes/a/bmc", json=settings(sim, password="wrong-password"))
    assert r.status_code == 422 and "refused the password" in r.json["detail"], r.json  # type: ignore[index]
    assert api.get("/api/v1/nodes/a/bmc").status_code == 404


@pytest.mark.parametrize("changes", [{"port": 0}, {"username": ""}, {"password": "x" * 21},
                                     {"address": "bad address"}, {"kind": "redfish"},
                                     {"extra": 1}])
def test_bmc_settings_are_checked(api: Api, sim: Sim, changes: dict[str, object]) -> None:
    api.join_node("a")
    r = api.put("/api/v1/nodes/a/bmc", json=settings(sim, **changes))
    assert r.status_code == 422 and r.content_type == "application/problem+json"


def test_the_region_fencer_powers_the_node_off_through_its_bmc(
        api: Api, rbd_region: Region, sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    api.join_node("a")
    cli_answered_by(api, monkeypatch)
    password_file = sim.power_file.parent / "bmc-password"
    password_file.write_text(sim.bmc.password + "\n")
    assert cli.main(["node", "bmc", "set", "a", "--address", sim.bmc.address, "--port",
                     str(sim.bmc.port), "--user", sim.bmc.username, "--password-file",
                     str(password_file)]) == 0
    node_id = api.get("/api/v1/nodes/a").json["id"]
    with rbd_region.sessions() as db:
        bmc = db.get_one(NodeBmc, node_id)
        db.expunge(bmc)
    assert rbd_region.fencer is not None
    rbd_region.fencer.power_off(LostNode(node_id, "a", None, bmc))
    assert sim.power_file.read_text().strip() == "0"
    # sealed for this node alone: another node's record cannot use it
    with pytest.raises(FenceError, match="cannot be opened"):
        rbd_region.fencer.power_off(LostNode("another-node", "b", None, bmc))
    assert cli.main(["node", "bmc", "unset", "a"]) == 0
    assert api.get("/api/v1/nodes/a/bmc").status_code == 404
