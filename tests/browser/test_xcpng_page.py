"""An XCP-ng pool's node page in Chromium, on the UI region: an enrolled pool (the XAPI
simulator) whose agent runs as a process shows the pool, whether its agent reads it, and
each host with its pinned certificate, instead of this machine's hardware; the VM form
names the pool as such."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from agent.drivers.xapi.transport import format_fingerprint
from tests.e2e.region import E2ERegion
from tests.e2e.test_xcpng import _pool_node_up
from tests.xapi_sim.fixtures import sim_pool, sim_pools
from tests.xapi_sim.process import SimProcess

__all__ = ["sim_pool", "sim_pools"]  # the fixtures used here


@pytest.fixture
def pool_node(ui_region: E2ERegion, sim_pool: SimProcess) -> Iterator[dict[str, Any]]:
    """The pool enrolled as node "pool", its agent up; afterwards the agent is stopped
    by its PID and the node removed from the UI region."""
    try:
        yield _pool_node_up(ui_region, sim_pool)
    finally:
        ui_region.layout.service("pool-agent").stop()
        ui_region.run_cli("node", "remove", "pool")


def test_a_pool_s_page_shows_its_hosts_and_their_pins(
        admin_page: Page, origin: str, ui_region: E2ERegion, sim_pool: SimProcess,
        pool_node: dict[str, Any]) -> None:
    admin_page.goto(origin + "/#/nodes/pool")
    card = admin_page.locator(".xcpng-pool")
    expect(card.get_by_role("heading", name="XCP-ng pool")).to_be_visible()
    expect(card).to_contain_text("sim-pool")
    expect(card).to_contain_text("read now, master 127.0.0.1")
    hosts = card.get_by_role("table", name="Hosts of the pool")
    for member in sim_pool.members:
        row = hosts.get_by_role("row").filter(has_text=member.address)
        expect(row).to_contain_text(format_fingerprint(member.fingerprint))
        expect(row).to_contain_text("live")
    expect(hosts.get_by_role("row").filter(has_text="127.0.0.1")).to_contain_text("(master)")
    # a pool is not this machine: no qualification, hardware or HA of the agent's host
    expect(admin_page.get_by_role("heading", name="Qualification")).to_have_count(0)
    shown = json.loads(ui_region.cli("node", "show", "pool", "--json"))
    assert shown["xcpng"]["pool_uuid"] in card.inner_text()
    # the VM form names the pool as such
    admin_page.goto(origin + "/#/vms/new")
    expect(admin_page.get_by_label("Node (optional)").locator("option", has_text="pool")
           ).to_have_text("pool (up, XCP-ng pool)")
