"""The resource pages in Chromium: images (upload with the checksum computed in the page,
delete, the refusal of an image a VM uses), security groups and networks made through the
pages and checked against the API."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, Route, expect

from tests.browser import chromium
from tests.e2e.region import E2ERegion

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


def _name(kind: str) -> str:
    return f"ui-{kind}-{uuid.uuid4().hex[:6]}"


def _api(region: E2ERegion, method: str, path: str, body: Any = None) -> Any:
    """The API's answer to the admin's token (None for 204)."""
    r = requests.request(method, f"{region.layout.url}/api/v1{path}", json=body,
                         verify=str(region.layout.ca_file), timeout=60,
                         headers={"Authorization": f"Bearer {region.token}"})
    r.raise_for_status()
    return r.json() if r.status_code != 204 else None


def _raw_image(tmp_path: Path) -> Path:
    """A raw disk the region accepts: 1 MiB (2048 sectors) of a pattern no format claims."""
    path = tmp_path / "pattern.img"
    path.write_bytes(bytes(range(256)) * (MIB // 256))
    return path


def _upload(page: Page, origin: str, image: Path, name: str) -> str:
    """Upload `image` as `name` through the images page; the SHA-256 the page computed."""
    page.goto(origin + "/#/images")
    page.get_by_role("button", name="Upload image").click()
    qcow2 = image.with_suffix(".qcow2")  # only its first bytes are read, for the format
    qcow2.write_bytes(b"QFI\xfb" + bytes(508))
    page.get_by_label("Image file").set_input_files(str(qcow2))
    expect(page.get_by_label("Format")).to_have_value("qcow2")
    expect(page.get_by_label("Name", exact=True)).to_have_value("pattern")  # from the file
    page.get_by_label("Image file").set_input_files(str(image))
    expect(page.get_by_label("Format")).to_have_value("raw")
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_text("Checksum done")).to_be_visible()
    expect(page.get_by_text("Upload done")).to_be_visible()
    computed = page.get_by_test_id("computed-sha").inner_text().strip()
    expect(page.get_by_test_id("stored-sha")).to_have_text(computed)
    expect(page.get_by_text("matches")).to_be_visible()
    return computed


def test_image_upload_shows_checksums_and_delete(
        admin: tuple[Page, chromium.Guards], origin: str, ui_region: E2ERegion,
        tmp_path: Path) -> None:
    admin_page, _ = admin
    image = _raw_image(tmp_path)
    name = _name("img")
    try:
        computed = _upload(admin_page, origin, image, name)
        assert computed == hashlib.sha256(image.read_bytes()).hexdigest()
        stored = _api(ui_region, "GET", f"/images/{name}")
        assert (stored["sha256"], stored["size_bytes"], stored["disk_format"]) == \
            (computed, MIB, "raw")
        row = admin_page.get_by_role("row").filter(has_text=name)
        expect(row).to_contain_text(computed)
        row.get_by_role("button", name="Delete").click()
        admin_page.get_by_role("button", name=f"Delete {name}").click()
        expect(admin_page.get_by_role("row").filter(has_text=name)).to_have_count(0)
        assert name not in [i["name"] for i in _api(ui_region, "GET", "/images")]
    finally:
        if ui_region.run_cli("image", "show", name).returncode == 0:
            ui_region.cli("image", "delete", name)


def test_image_in_use_refusal_in_words(admin: tuple[Page, chromium.Guards], origin: str,
                                       ui_region: E2ERegion, tmp_path: Path) -> None:
    admin_page, guards = admin
    image_name, vm_name = _name("img"), _name("vm")
    try:
        _upload(admin_page, origin, _raw_image(tmp_path), image_name)
        ui_region.cli("vm", "create", vm_name, "--image", image_name, "--cpus", "1",
                      "--memory", "128", "--no-start")
        ui_region.vm(vm_name)
        image_id = _api(ui_region, "GET", f"/images/{image_name}")["id"]
        admin_page.reload()
        admin_page.get_by_role("button", name="Upload image").wait_for()
        guards.expected_refusals.add((409, f"{origin}/api/v1/images/{image_id}"))
        row = admin_page.get_by_role("row").filter(has_text=image_name)
        expect(row).to_contain_text("1 VM")
        row.get_by_role("button", name="Delete").click()
        admin_page.get_by_role("button", name=f"Delete {image_name}").click()
        dialog = admin_page.get_by_role("dialog")
        expect(dialog.get_by_role("alert")).to_contain_text(
            f"image '{image_name}' is used by 1 instance(s): {vm_name}")
        dialog.get_by_role("button", name="Cancel").click()
        assert _api(ui_region, "GET", f"/images/{image_name}")["id"] == image_id
    finally:
        if ui_region.run_cli("vm", "show", vm_name).returncode == 0:
            ui_region.cli("vm", "delete", vm_name, "--wait")
        if ui_region.run_cli("image", "show", image_name).returncode == 0:
            ui_region.cli("image", "delete", image_name)



def test_security_group_made_through_the_pages_is_what_the_api_shows(
        admin: tuple[Page, chromium.Guards], origin: str, ui_region: E2ERegion) -> None:
    page, guards = admin
    name, peer = _name("sg"), _name("sg")
    try:
        page.goto(origin + "/#/security-groups")
        page.get_by_role("button", name="Create security group").click()
        page.get_by_label("Name", exact=True).fill(name)
        page.get_by_label("Description").fill("made in the browser")
        page.get_by_role("button", name="Add a rule").click()
        rule = page.get_by_role("group", name="Rule 1")
        rule.get_by_label("Protocol").select_option("tcp")
        rule.get_by_label("First port").fill("22")
        rule.get_by_label("Peers").select_option("cidr")
        rule.get_by_label("Remote network").fill("10.0.0.0/33")  # refused before it is sent
        page.get_by_role("button", name="Create security group").last.click()
        expect(rule.get_by_text("an IPv4 network such as 10.0.0.0/24")).to_be_visible()
        rule.get_by_label("Remote network").fill("10.0.0.0/8")
        page.get_by_role("button", name="Create security group").last.click()
        expect(page.get_by_role("heading", name=f"Security group {name}")).to_be_visible()

        add = page.get_by_role("form", name="Add a rule")
        add.get_by_label("Protocol").select_option("udp")
        add.get_by_label("First port").fill("5000")
        add.get_by_label("Last port").fill("5010")
        add.get_by_role("button", name="Add rule").click()
        expect(page.get_by_role("cell", name="5000-5010", exact=True)).to_be_visible()
        group = _api(ui_region, "GET", f"/security-groups/{name}")
        got = sorted((r["direction"], r["protocol"], r["port_min"], r["port_max"],
                      r["remote_cidr"]) for r in group["rules"])
        assert got == [("ingress", "tcp", 22, 22, "10.0.0.0/8"),
                       ("ingress", "udp", 5000, 5010, None)]
        assert group["description"] == "made in the browser"

        page.get_by_role("button", name="Delete rule ingress udp 5000-5010").click()
        expect(page.get_by_role("cell", name="5000-5010", exact=True)).to_have_count(0)
        assert len(_api(ui_region, "GET", f"/security-groups/{name}")["rules"]) == 1

        # a rule of another group names this one: its deletion is refused, in words
        _api(ui_region, "POST", "/security-groups", {"name": peer, "rules": [
            {"direction": "ingress", "remote_group": name}]})
        guards.expected_refusals.add((409, f"{origin}/api/v1/security-groups/{group['id']}"))
        page.get_by_role("button", name="Delete group").click()
        page.get_by_role("button", name=f"Delete {name}").click()
        expect(page.get_by_role("dialog").get_by_role("alert")).to_contain_text(
            f"security group '{name}' is in use: rules of security group(s) '{peer}' name it "
            "as remote group")
        page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
        _api(ui_region, "DELETE", f"/security-groups/{peer}")
        page.get_by_role("button", name="Delete group").click()
        page.get_by_role("button", name=f"Delete {name}").click()
        expect(page.get_by_role("heading", name="Security groups")).to_be_visible()
        assert name not in [g["name"] for g in _api(ui_region, "GET", "/security-groups")]
    finally:
        for made in (peer, name):
            if ui_region.run_cli("security-group", "show", made).returncode == 0:
                ui_region.cli("security-group", "delete", made)


def test_network_subnet_and_port_made_through_the_pages(
        admin: tuple[Page, chromium.Guards], origin: str, ui_region: E2ERegion) -> None:
    page, guards = admin
    name = _name("net")
    octet = int(uuid.uuid4().hex[:2], 16)
    first, second = f"10.{octet}.1.0/24", f"10.{octet}.2.0/24"
    try:
        page.goto(origin + "/#/networks")
        page.get_by_role("button", name="Create network").click()
        page.get_by_label("Name", exact=True).fill(name)
        page.get_by_label("CIDR").fill(first)
        page.get_by_label("Gateway").fill(f"10.{octet}.1.1")
        page.get_by_role("button", name="Create network").last.click()
        expect(page.get_by_role("heading", name=f"Network {name}")).to_be_visible()
        expect(page.get_by_role("cell", name=first, exact=True)).to_be_visible()

        add = page.get_by_role("form", name="Add a subnet")
        add.get_by_label("CIDR").fill(second)
        add.get_by_label("Name servers").fill(f"10.{octet}.2.53")
        add.get_by_role("button", name="Add subnet").click()
        expect(page.get_by_role("cell", name=second, exact=True)).to_be_visible()

        reserve = page.get_by_role("form", name="Reserve an address (new port)")
        reserve.get_by_label(f"Address in {first}").fill(f"10.{octet}.1.10")
        reserve.get_by_role("button", name="Create port").click()
        expect(page.get_by_role("row").filter(has_text=f"10.{octet}.1.10")).to_be_visible()

        net = _api(ui_region, "GET", f"/networks/{name}")
        assert net["kind"] == "tenant" and net["ports"] == 1
        assert [(s["cidr"], s["gateway"], s["dns"]) for s in net["subnets"]] == \
            [(first, f"10.{octet}.1.1", []), (second, None, [f"10.{octet}.2.53"])]
        port, = [p for p in _api(ui_region, "GET", "/ports") if p["network"] == name]
        assert f"10.{octet}.1.10" in port["addresses"] and len(port["addresses"]) == 2

        row = page.get_by_role("row").filter(has_text=f"10.{octet}.1.10")
        assert port["security_groups"] == ["default"]  # the API's default
        row.get_by_role("button", name=f"Security groups of port {port['mac']}").click()
        edit = page.get_by_role("form", name=f"Security groups of port {port['mac']}")
        edit.get_by_label("default").uncheck()
        edit.get_by_role("button", name="Save groups").click()
        expect(row).to_contain_text("none (unfiltered)")
        assert [p["security_groups"] for p in _api(ui_region, "GET", "/ports")
                if p["id"] == port["id"]] == [[]]
        row.get_by_role("button", name="Delete").click()
        page.get_by_role("button", name=f"Delete port {port['mac']}").click()
        expect(page.get_by_role("row").filter(has_text=f"10.{octet}.1.10")).to_have_count(0)
        page.get_by_role("button", name="Delete network").click()
        page.get_by_role("button", name=f"Delete {name}").click()
        expect(page.get_by_role("heading", name="Networks")).to_be_visible()
        assert name not in [n["name"] for n in _api(ui_region, "GET", "/networks")]
    finally:
        for p in _api(ui_region, "GET", "/ports"):
            if p["network"] == name:
                _api(ui_region, "DELETE", f"/ports/{p['id']}")
        if ui_region.run_cli("network", "show", name).returncode == 0:
            ui_region.cli("network", "delete", name)


def test_a_network_deleted_elsewhere_is_shown_deleted_without_asking_for_it_again(
        admin: tuple[Page, chromium.Guards], origin: str, ui_region: E2ERegion) -> None:
    # the page asked for the network again on its deletion's event, answered 404 (a console
    # error): seen when the user deleted it from this very page and the event came first
    page, _guards = admin
    name = _name("net")
    net = _api(ui_region, "POST", "/networks", {"name": name, "kind": "tenant"})
    try:
        page.goto(f"{origin}/#/networks/{name}")
        expect(page.get_by_role("heading", name=f"Network {name}")).to_be_visible()
        expect(page.get_by_role("status").filter(has_text=re.compile(r"^\s*live\s*$"))
               ).to_be_visible()  # the page follows the event stream
        _api(ui_region, "DELETE", f"/networks/{net['id']}")
        expect(page.get_by_role("alert")).to_contain_text(f"{name} was deleted")
    finally:
        if ui_region.run_cli("network", "show", name).returncode == 0:
            ui_region.cli("network", "delete", name)


def test_a_network_deleted_from_its_page_is_not_asked_for_again(
        admin: tuple[Page, chromium.Guards], origin: str, ui_region: E2ERegion) -> None:
    # a refresh of the network in flight when the user deleted it could be answered 404
    # after the deletion, a console error (make test failed on it once). Here the refresh
    # is held until the deletion is done, then let through before the page hears of it:
    # the page must have dropped it when it sent the deletion
    page, _guards = admin
    name = _name("net")
    net = _api(ui_region, "POST", "/networks", {"name": name, "kind": "tenant"})
    shown, deleted = f"{origin}/api/v1/networks/{name}", f"{origin}/api/v1/networks/{net['id']}"
    held: dict[str, Route] = {}
    try:
        page.goto(f"{origin}/#/networks/{name}")
        expect(page.get_by_role("heading", name=f"Network {name}")).to_be_visible()
        expect(page.get_by_role("status").filter(has_text=re.compile(r"^\s*live\s*$"))
               ).to_be_visible()
        page.route(shown, lambda route: held.setdefault("refresh", route))
        page.route(deleted, lambda route: held.setdefault("delete", route))
        with page.expect_request(shown):  # the subnet's event makes the page refresh
            _api(ui_region, "POST", f"/networks/{net['id']}/subnets", {"cidr": "10.9.9.0/24"})
        page.get_by_role("button", name="Delete network").click()
        with page.expect_request(deleted):
            page.get_by_role("button", name=f"Delete {name}").click()
        _api(ui_region, "DELETE", f"/networks/{net['id']}")  # what the held request asks
        held["refresh"].continue_()
        assert held["refresh"].request.response() is None  # the page had dropped it
        held["delete"].fulfill(status=204)
        expect(page.get_by_role("heading", name="Networks", exact=True)).to_be_visible()
    finally:
        page.unroute(shown)
        page.unroute(deleted)
        if ui_region.run_cli("network", "show", name).returncode == 0:
            ui_region.cli("network", "delete", name)


@pytest.mark.parametrize("path,heading", [("images", "Images"), ("volumes", "Volumes"),
                                          ("networks", "Networks"),
                                          ("security-groups", "Security groups")])
def test_resource_pages_fit_a_narrow_screen(browser: Browser, origin: str,
                                            admin_state: dict[str, Any], path: str,
                                            heading: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844},
                                  storage_state=admin_state)  # type: ignore[arg-type]
    guards = chromium.Guards(origin)
    with chromium.guard(context, guards) as page:
        page.goto(f"{origin}/#/{path}")
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        create = page.get_by_role("button", name=re.compile(r"^(Create|Upload) "))
        create.click()
        expect(page.get_by_role("form")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), \
            f"#/{path} is wider than the screen"
    guards.check()


def test_volume_refusal_on_local_storage_in_words(admin: tuple[Page, chromium.Guards],
                                                  origin: str) -> None:
    """The test region stores disks locally: a volume is refused, and the page says why."""
    page, guards = admin
    guards.expected_refusals.add((409, f"{origin}/api/v1/volumes"))
    page.goto(origin + "/#/volumes")
    page.get_by_role("button", name="Create volume").click()
    page.get_by_label("Name", exact=True).fill(_name("vol"))
    page.get_by_label("Size (GiB)").fill("1")
    page.get_by_role("button", name="Create volume").last.click()
    expect(page.get_by_role("alert")).to_contain_text("volumes need shared storage (rbd)")


def test_a_member_is_not_offered_public_images_or_provider_networks(
        browser: Browser, origin: str, ui_region: E2ERegion) -> None:
    project, user = _name("proj"), _name("user")
    ui_region.cli("project", "create", project)
    try:
        made = ui_region.cli("user", "create", user).splitlines()
        password = made[1].rsplit(" ", 1)[1]
        ui_region.cli("role", "grant", user, "project-member", "--project", project)
        with chromium.guarded_page(browser, origin, width=390, height=844) as (page, guards):
            # the skeleton's dashboard, where the login lands, asks a member for the region's
            # status (region roles only): not these pages' concern
            guards.expected_refusals.add((403, f"{origin}/api/v1/status"))
            chromium.log_in(page, guards, user, password)
            page.goto(origin + "/#/images")
            page.get_by_role("button", name="Upload image").click()
            expect(page.get_by_label("Image file")).to_be_visible()
            expect(page.get_by_label("Public (every project may use it)")).to_have_count(0)
            page.goto(origin + "/#/networks")
            page.get_by_role("button", name="Create network").click()
            expect(page.get_by_label("Name", exact=True)).to_be_visible()
            expect(page.get_by_label("Kind")).to_have_count(0)
            expect(page.get_by_label("VLAN id")).to_have_count(0)
    finally:
        if ui_region.run_cli("user", "show", user).returncode == 0:
            ui_region.cli("user", "delete", user)
        ui_region.cli("project", "delete", project)
