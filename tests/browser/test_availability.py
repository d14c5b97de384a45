"""Moving VMs and maintenance in Chromium, on the UI region (one node, local disks): the
VM page's move and HA controls answer with the API's own refusal in words (no other node,
no shared storage), and the node page turns maintenance on and off, showing which VM its
operation cannot move and why, and the node's fencing facts."""

from __future__ import annotations

import json
import re
import ssl
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from playwright.sync_api import Page, expect

from tests.browser import chromium
from tests.e2e.region import E2ERegion

EVACUATION_TIMEOUT_MS = 60_000  # the evacuator looks every 5 s
STATE_TIMEOUT_MS = 60_000


def refusal(region: E2ERegion, method: str, path: str, body: Any) -> str:
    """The detail of the API's refusal of this request (asked with the admin's token):
    what the page must show."""
    context = ssl.create_default_context(cafile=str(region.layout.ca_file))
    request = Request(f"{region.layout.url}/api/v1{path}", data=json.dumps(body).encode(),
                      method=method, headers={"Authorization": f"Bearer {region.token}",
                                              "Content-Type": "application/json"})
    with pytest.raises(HTTPError) as refused:
        urlopen(request, context=context, timeout=60)
    assert refused.value.code == 409
    return str(json.loads(refused.value.read())["detail"])


def node_shown(region: E2ERegion, name: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(region.cli("node", "show", name, "--json"))
    return shown


@pytest.fixture
def stopped_vm(ui_region: E2ERegion) -> Iterator[dict[str, Any]]:
    """A VM of this test, created stopped on the region's only node; deleted afterwards."""
    name = f"ui-move-{uuid.uuid4().hex[:6]}"
    ui_region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
                  "--no-start", "--wait")
    try:
        yield ui_region.vm(name)
    finally:
        ui_region.cli("vm", "delete", name, "--wait")


def test_the_vm_page_moves_and_marks_only_as_the_api_allows_and_says_why(
        admin: tuple[Page, chromium.Guards], origin: str, ui_region: E2ERegion,
        stopped_vm: dict[str, Any]) -> None:
    page, guards = admin
    name = stopped_vm["name"]
    guards.expected_refusals |= {(409, f"{origin}/api/v1/instances/{name}/migrate"),
                                 (409, f"{origin}/api/v1/instances/{name}/ha")}
    page.goto(f"{origin}/#/vms/{name}")
    card = page.locator(".placement")
    expect(card.get_by_role("heading", name="Placement and availability")).to_be_visible()
    expect(card).to_contain_text(f"Runs on node {stopped_vm['node_name']}")
    target = card.get_by_label("Move to node")
    expect(target.locator("option")).to_have_text(["Any node (the scheduler chooses)"])
    expect(card).to_contain_text("cold: it stays stopped")
    card.get_by_role("button", name="Migrate").click()
    why = refusal(ui_region, "POST", f"/instances/{name}/migrate", {})
    expect(card.get_by_role("alert")).to_contain_text(why)
    expect(card).to_contain_text("High availability: off")
    card.get_by_role("button", name="Turn HA on").click()
    why = refusal(ui_region, "PUT", f"/instances/{name}/ha", {"enabled": True})
    assert "shared storage" in why
    expect(card.get_by_role("alert").filter(has_text=why)).to_be_visible()
    shown = ui_region.vm(name)  # nothing changed
    assert (shown["node_name"], shown["ha"], shown["migrating_to"]) == \
        (stopped_vm["node_name"], False, None)


def test_maintenance_from_the_node_page_names_the_vm_it_cannot_move(
        admin_page: Page, origin: str, ui_region: E2ERegion,
        stopped_vm: dict[str, Any]) -> None:
    node = stopped_vm["node_name"]
    page = admin_page
    try:
        page.goto(f"{origin}/#/nodes/{node}")
        card = page.locator(".availability")
        expect(card).to_contain_text("Off: the node takes VMs.")
        expect(card).to_contain_text("none configured")  # no BMC in this region
        card.get_by_role("button", name="Start maintenance").click()
        expect(card).to_contain_text("On: the node takes no new VM", timeout=STATE_TIMEOUT_MS)
        status = card.get_by_role("status", name="Maintenance operation")
        # the only node: the VM has nowhere to go, and the operation says so while it runs
        expect(status).to_contain_text(re.compile(
            rf"cannot move: .*{re.escape(stopped_vm['name'])}: "), timeout=EVACUATION_TIMEOUT_MS)
        expect(status).to_contain_text("running")
        assert node_shown(ui_region, node)["maintenance"] is True
        card.get_by_role("button", name="End maintenance").click()
        expect(card).to_contain_text("Off: the node takes VMs.", timeout=STATE_TIMEOUT_MS)
        expect(status).to_contain_text("maintenance was turned off before the node was empty",
                                       timeout=STATE_TIMEOUT_MS)
        assert node_shown(ui_region, node)["maintenance"] is False
        assert ui_region.vm(stopped_vm["name"])["node_name"] == node
    finally:  # never leave the region's only node refusing VMs to the other tests
        ui_region.cli("node", "maintenance", node, "off")
