"""The region's pages in Chromium: the dashboard's capacity numbers against the API's, the
node page (qualification, inventory, labels edited through the page), the operations page
following an operation live, a project member's dashboard, and every page on a phone."""

from __future__ import annotations

import contextlib
import json
import math
import re
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest
from playwright.sync_api import Browser, Page, Route, expect
from playwright.sync_api import Error as PlaywrightError

from tests.browser import chromium
from tests.e2e.region import E2ERegion


def api(region: E2ERegion, method: str, path: str, body: Any = None) -> Any:
    """The API's answer, asked with the admin's token (what the page is compared with)."""
    context = ssl.create_default_context(cafile=str(region.layout.ca_file))
    data = json.dumps(body).encode() if body is not None else None
    request = Request(f"{region.layout.url}/api/v1{path}", data=data, method=method,
                      headers={"Authorization": f"Bearer {region.token}",
                               "Content-Type": "application/json"})
    with urlopen(request, context=context, timeout=60) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def node(ui_region: E2ERegion) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = api(ui_region, "GET", "/nodes")
    assert nodes, "the test region has a node"
    return nodes[0]


def mib(n: int) -> str:
    """As the UI writes MiB (lib/format.js)."""
    v, unit = float(n) * 1024 * 1024, 0
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    while v >= 1024 and unit < len(units) - 1:
        v, unit = v / 1024, unit + 1
    return f"{math.floor(v + 0.5) if v >= 10 or unit == 0 else f'{v:.1f}'} {units[unit]}"


def mark_no_reload(page: Page) -> None:
    """A mark in the page's window (gone if the page reloads), once the page follows the
    event stream: what happens before it connected is not told to it."""
    expect(page.get_by_role("status").filter(has_text=re.compile(r"^\s*live\s*$"))).to_be_visible()
    page.evaluate("window.__notReloaded = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__notReloaded === true"), "the page reloaded"


def test_dashboard_shows_the_node_and_its_capacity(admin_page: Page, origin: str,
                                                   ui_region: E2ERegion,
                                                   node: dict[str, Any]) -> None:
    admin_page.goto(origin + "/#/")
    expect(admin_page.get_by_role("heading", name="Dashboard")).to_be_visible()
    fresh = api(ui_region, "GET", f"/nodes/{node['name']}")
    vcpus = admin_page.get_by_role("table", name="vCPUs used per node").get_by_role(
        "row", name=node["name"]).get_by_role("cell")
    expect(vcpus).to_have_text([str(fresh["vcpus_used"]), str(fresh["cpus"])])
    memory = admin_page.get_by_role("table", name="Memory used per node").get_by_role(
        "row", name=node["name"]).get_by_role("cell")
    expect(memory).to_have_text([mib(fresh["memory_mib_used"]), mib(fresh["memory_mib"])])
    # the chart itself is an image whose name says the same numbers
    expect(admin_page.get_by_role("img", name=re.compile(
        rf"^vCPUs used per node: .*{re.escape(node['name'])}: {fresh['vcpus_used']} of "
        rf"{fresh['cpus']}"))).to_be_visible()
    health = admin_page.get_by_role("table", name="Node health")
    expect(health.get_by_role("row", name=re.compile(re.escape(node["name"])))).to_contain_text(
        fresh["state"])
    # Chart.js was loaded from the controller and draws every chart of the page
    admin_page.wait_for_function(
        "() => document.querySelectorAll('figure.chart canvas').length > 0 && window.Chart && "
        "Object.keys(window.Chart.instances).length === "
        "document.querySelectorAll('figure.chart canvas').length")
    # the axis is written in the chart's units
    ticks = admin_page.evaluate("""() => window.Chart.getChart(document.querySelector(
        'canvas[aria-label^="Memory used per node"]')).scales.x.ticks.map((t) => t.label)""")
    assert ticks and all(str(t).endswith("iB") or t == "0 B" for t in ticks), ticks
    status = api(ui_region, "GET", "/status")
    expect(admin_page.get_by_text("nodes up")).to_be_visible()
    expect(admin_page.locator(".stat").first).to_have_text(str(status["nodes_up"]))


def test_node_page_shows_qualification_and_inventory(admin_page: Page, origin: str,
                                                     node: dict[str, Any]) -> None:
    admin_page.goto(origin + f"/#/nodes/{node['name']}")
    expect(admin_page.get_by_role("heading", name=node["name"], exact=True)).to_be_visible()
    inventory = node["inventory"]
    # the real agent probes its hardware and qualifies itself against its profile
    report, hardware = inventory["qualification"], inventory["hardware"]
    expect(admin_page.get_by_text(f"Profile {report['profile']}")).to_contain_text(
        report["verdict"])
    checks = admin_page.get_by_role("table", name="Qualification checks")
    for result in report["results"]:
        row = checks.get_by_role("row").filter(has=admin_page.get_by_text(result["check"],
                                                                           exact=True))
        expect(row).to_contain_text(result["verdict"])
        expect(row).to_contain_text(result["reason"])
    expect(admin_page.get_by_text(hardware["cpu"]["model"], exact=True)).to_be_visible()
    disks = admin_page.get_by_role("table", name="Disks")
    for disk in hardware["disks"]:
        expect(disks).to_contain_text(disk["name"])
    nics = admin_page.get_by_role("table", name="Network interfaces")
    for nic in hardware["nics"]:
        expect(nics).to_contain_text(nic["name"])
    expect(admin_page.get_by_text("not onboarded through the fleet")).to_be_visible()


def test_labels_are_added_and_removed_through_the_node_page(
        admin_page: Page, origin: str, ui_region: E2ERegion, node: dict[str, Any]) -> None:
    key = f"ui-test-{uuid.uuid4().hex[:8]}"
    try:
        admin_page.goto(origin + f"/#/nodes/{node['name']}")
        admin_page.get_by_label("Label key").fill(key)
        admin_page.get_by_label("Label value").fill("blue")
        admin_page.get_by_role("button", name="Add label").click()
        remove = admin_page.get_by_role("button", name=f"Remove label {key}")
        expect(remove).to_be_visible()
        assert api(ui_region, "GET", f"/nodes/{node['name']}")["labels"].get(key) == "blue"
        remove.click()
        expect(remove).to_have_count(0)
        assert key not in api(ui_region, "GET", f"/nodes/{node['name']}")["labels"]
    finally:
        api(ui_region, "POST", f"/nodes/{node['name']}/labels", {"remove": [key]})


def test_operations_page_shows_an_operation_live(admin_page: Page, origin: str,
                                                  ui_region: E2ERegion) -> None:
    name = f"ui-ops-{uuid.uuid4().hex[:6]}"
    admin_page.goto(origin + "/#/operations")
    expect(admin_page.get_by_role("heading", name="Operations")).to_be_visible()
    expect(admin_page.get_by_role("status").filter(has_text="Loading")).to_have_count(0)
    mark_no_reload(admin_page)
    try:
        ui_region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1",
                      "--memory", "128", "--no-start", "--wait")
        ui_region.vm(name)  # recorded: removed at the end of the session whatever happens
        created = admin_page.get_by_role("row").filter(has_text="instance.create").filter(
            has=admin_page.get_by_role("link", name=name))
        expect(created).to_contain_text("succeeded")
        expect(created.get_by_role("progressbar")).to_have_attribute("value", "100")
        ui_region.cli("vm", "delete", name, "--wait")
        deleted = admin_page.get_by_role("row").filter(has_text="instance.delete").filter(
            has_text=name)
        expect(deleted).to_contain_text("succeeded")
        # the filters narrow the list to the operations of that kind, in that state
        admin_page.get_by_label("Kind").select_option("instance.delete")
        expect(created).to_have_count(0)
        expect(deleted).to_contain_text("succeeded")
        admin_page.get_by_label("State").select_option("failed")
        expect(deleted).to_have_count(0)
        assert_not_reloaded(admin_page)
    finally:
        if ui_region.run_cli("vm", "show", name).returncode == 0:
            ui_region.cli("vm", "delete", name, "--wait")


def test_dashboard_and_node_page_follow_a_vm_and_removal_is_refused_while_it_is_there(
        browser: Browser, origin: str, admin_state: dict[str, Any], ui_region: E2ERegion,
        node: dict[str, Any]) -> None:
    name = f"ui-keep-{uuid.uuid4().hex[:6]}"
    try:
        with chromium.guarded_page(browser, origin, storage_state=admin_state) as (page, guards):
            # the VM is made after the dashboard read the nodes but before its event stream
            # starts (the browser holds the stream's request): once the stream opens, the
            # dashboard reads again what it shows
            held: list[Route] = []
            page.route("**/api/v1/events", lambda route: held.append(route))
            with page.expect_request("**/api/v1/events"):
                page.goto(origin + "/#/")
            before = api(ui_region, "GET", f"/nodes/{node['name']}")
            vms = page.get_by_role("table", name="Node health").get_by_role(
                "row", name=node["name"]).get_by_role("cell").nth(3)
            expect(vms).to_have_text(str(before["instances"]))
            page.evaluate("window.__notReloaded = true")
            ui_region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1",
                          "--memory", "128", "--no-start", "--node", node["name"], "--wait")
            ui_region.vm(name)
            assert len(held) == 1
            held[0].continue_()
            expect(vms).to_have_text(str(before["instances"] + 1))
            expect(page.get_by_role("table", name="vCPUs used per node").get_by_role(
                "row", name=node["name"]).get_by_role("cell").first).to_have_text(
                str(before["vcpus_used"] + 1))
            assert_not_reloaded(page)

            guards.expected_refusals.add((409, f"{origin}/api/v1/nodes/{node['name']}"))
            page.goto(origin + f"/#/nodes/{node['name']}")
            page.get_by_role("button", name="Remove node").click()
            dialog = page.get_by_role("dialog", name="Remove node")
            dialog.get_by_role("button", name="Remove", exact=True).click()
            expect(dialog.get_by_role("alert")).to_contain_text(f"still has 1 VM(s) ({name})")
            dialog.get_by_role("button", name="Cancel").click()
            expect(dialog).to_be_hidden()
            assert api(ui_region, "GET", f"/nodes/{node['name']}")["id"] == node["id"]
            # the node's page follows the VM's deletion live
            on_node = page.get_by_role("table", name="VMs on this node").get_by_role(
                "link", name=name)
            expect(on_node).to_be_visible()
            ui_region.cli("vm", "delete", name, "--wait")
            expect(on_node).to_have_count(0)
            assert_not_reloaded(page)
    finally:
        if ui_region.run_cli("vm", "show", name).returncode == 0:
            ui_region.cli("vm", "delete", name, "--wait")


def test_region_pages_fit_a_phone_and_the_menu_opens(admin_page: Page, origin: str,
                                                     node: dict[str, Any]) -> None:
    admin_page.set_viewport_size({"width": 390, "height": 844})
    # from a page with a parameter to one without: the old page is never drawn with the
    # new address's (missing) parameters, which asked the API for /nodes/undefined
    for path in ["/", "/nodes", f"/nodes/{node['name']}", "/operations"]:
        admin_page.goto(origin + "/#" + path)
        expect(admin_page.get_by_role("heading", level=1)).to_be_visible()
        expect(admin_page.get_by_role("status").filter(has_text="Loading")).to_have_count(0)
        overflow = admin_page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 390 px"
        nav_link = admin_page.get_by_role("navigation", name="Main").get_by_role(
            "link", name="Operations")
        expect(nav_link).not_to_be_in_viewport()
        admin_page.get_by_role("button", name="Menu").click()
        expect(nav_link).to_be_in_viewport()
        admin_page.get_by_role("button", name="Menu").click()


@pytest.fixture
def member(ui_region: E2ERegion, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A user who is a member of a new project, and nothing else: (user, password, project)."""
    suffix = uuid.uuid4().hex[:6]
    user, project = f"ui-member-{suffix}", f"ui-proj-{suffix}"
    password = f"pw-{uuid.uuid4().hex}"
    secret = tmp_path / "password"
    secret.write_text(password)
    ui_region.cli("project", "create", project)
    try:
        ui_region.cli("user", "create", user, "--password-file", str(secret))
        try:
            ui_region.cli("role", "grant", user, "project-member", "--project", project)
            yield user, password, project
        finally:
            ui_region.cli("user", "delete", user)
    finally:
        ui_region.cli("project", "delete", project)


def test_project_member_sees_only_the_project_part(browser: Browser, origin: str,
                                                   member: tuple[str, str, str]) -> None:
    user, password, project = member
    with chromium.guarded_page(browser, origin) as (page, guards):
        chromium.log_in(page, guards, user, password)
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        expect(page.get_by_role("table", name="vCPUs per project (against quota)")
               .get_by_role("row", name=project)).to_be_attached()
        expect(page.get_by_role("heading", name="VMs by state")).to_be_visible()
        expect(page.get_by_role("heading", name="Capacity per node")).to_have_count(0)
        expect(page.get_by_role("link", name="Nodes")).to_have_count(0)
        # logging out while the dashboard still loads: its requests are dropped before the
        # session ends, none reaches the controller afterwards to be answered 401 (a console
        # error); the browser holds the project list's request until the login page shows
        held: list[Route] = []
        page.route("**/api/v1/projects", lambda route: held.append(route))
        with page.expect_request("**/api/v1/projects"):
            page.reload()
        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_label("User name")).to_be_visible()
        assert len(held) == 1
        with contextlib.suppress(PlaywrightError):  # the page dropped it: nothing to send
            held[0].continue_()
        expect(page.get_by_label("User name")).to_be_visible()
