"""The VM pages in Chromium: create a VM through the form and watch it boot for real, stop
and delete it; the API's field errors in the form; the pages on a phone-sized screen."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.browser import chromium
from tests.e2e.region import E2ERegion

BOOT_TIMEOUT_MS = 240_000  # a real VM: image copy, define, start (TCG on a loaded machine)
STATE_TIMEOUT_MS = 120_000  # a stop or a delete, seen through the event stream


class HostNetworkGuards(chromium.Guards):
    """Guards for a test whose VM has a NIC: the node (this very host) then adds a bridge
    and tap devices, Chromium on the same host sees its network change and cancels the
    requests in flight (net::ERR_NETWORK_CHANGED). That is the host, not the page: only
    that message is let through; every other guard holds."""

    def on_console(self, message: ConsoleMessage) -> None:
        if message.text == "Failed to load resource: net::ERR_NETWORK_CHANGED":
            return
        super().on_console(message)


def _tag() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def parked_vm(ui_region: E2ERegion) -> Iterator[str]:
    """A VM created stopped (no boot): its name is taken, its page can be shown."""
    name = f"ui-parked-{_tag()}"
    ui_region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
                  "--no-start", "--wait")
    ui_region.vm(name)  # recorded for the region's cleanup
    try:
        yield name
    finally:
        ui_region.cli("vm", "delete", name, "--wait")


@pytest.fixture
def network(ui_region: E2ERegion) -> Iterator[tuple[str, str]]:
    """A tenant network of this test with one subnet: (name, CIDR); deleted afterwards."""
    tag = _tag()
    name, cidr = f"ui-net-{tag}", f"10.{70 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}.0/24"
    ui_region.cli("network", "create", name, "--kind", "tenant", "--subnet", cidr)
    try:
        yield name, cidr
    finally:
        ui_region.cli("network", "delete", name)


def _state(page: Page) -> Any:
    """The VM's state badge in its page's header."""
    return page.locator(".page-header .badge")


@pytest.fixture
def nic_admin_page(browser: Browser, origin: str, admin_state: dict[str, Any]
                   ) -> Iterator[Page]:
    """Like admin_page, with HostNetworkGuards."""
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  storage_state=admin_state)  # type: ignore[arg-type]
    guards = HostNetworkGuards(origin)
    with chromium.guard(context, guards) as page:
        yield page
    guards.check()


def test_vm_created_in_the_form_boots_stops_and_is_deleted(
        nic_admin_page: Page, origin: str, ui_region: E2ERegion,
        network: tuple[str, str]) -> None:
    page = nic_admin_page
    name = f"ui-vm-{_tag()}"
    net, cidr = network
    page.goto(origin + "/#/vms")
    page.get_by_role("link", name="Create VM").click()
    expect(page.get_by_role("heading", name="Create a VM")).to_be_visible()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Image").select_option("testguest")
    page.get_by_label("vCPUs").fill("1")
    page.get_by_label("Memory (MiB)").fill("256")
    page.get_by_role("button", name="Add a NIC").click()
    page.get_by_label("NIC 1 network").select_option(net)
    prefix = cidr.rsplit(".", 1)[0]
    expect(page.get_by_text(f"Subnet {cidr}: empty takes the lowest free address.")).to_be_visible()
    expect(page.get_by_role("checkbox", name="default")).to_be_checked()
    page.get_by_role("checkbox", name="NIC 1: IPv4 by DHCP").check()
    try:
        page.get_by_role("button", name="Create VM").click()
        # the form hands over to the VM's page, which follows the create operation
        expect(page.get_by_role("heading", name=name)).to_be_visible()
        expect(page.get_by_role("status").filter(has_text="Creating")).to_be_visible()
        # on the list, without a reload: the event stream brings it to "running"
        page.get_by_role("link", name="VMs", exact=True).click()
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
        expect(row.locator(".badge")).to_have_text("running", timeout=BOOT_TIMEOUT_MS)
        expect(row).to_contain_text(prefix + ".")
        row.get_by_role("link", name=name, exact=True).click()
        expect(_state(page)).to_have_text("running")
        nic = page.get_by_role("row").filter(has=page.get_by_role("link", name=net, exact=True))
        expect(nic).to_contain_text(prefix + ".")
        expect(nic).to_contain_text("(IPv4 by DHCP)")
        expect(nic.get_by_role("link", name="default")).to_be_visible()
        expect(page.get_by_role("button", name="Start")).to_be_disabled()

        page.get_by_role("button", name="Stop").click()
        expect(_state(page)).to_have_text("stopped", timeout=STATE_TIMEOUT_MS)
        expect(page.get_by_role("button", name="Start")).to_be_enabled()
        expect(page.get_by_role("button", name="Reboot")).to_be_disabled()
        ops = page.get_by_role("table", name="Operations of this VM")
        expect(ops.get_by_role("row").filter(has_text="stop")).to_contain_text("succeeded")

        page.get_by_role("button", name="Delete").click()
        dialog = page.get_by_role("dialog", name="Delete")
        expect(dialog).to_contain_text(f"Delete {name} and its disks?")
        dialog.get_by_role("button", name="Delete").click()
        expect(page.get_by_text(f"There is no VM {name}")).to_be_visible(timeout=STATE_TIMEOUT_MS)
        page.get_by_role("link", name="Back to the VMs").click()
        expect(page.get_by_role("heading", name="Virtual machines")).to_be_visible()
        expect(page.get_by_role("link", name=name, exact=True)).to_have_count(0)
    finally:
        listed = json.loads(ui_region.cli("vm", "list", "--json"))
        if any(v["name"] == name for v in listed):
            ui_region.vm(name)
            ui_region.cli("vm", "delete", name, "--wait")


def test_create_form_shows_the_apis_field_error_in_words(
        admin: tuple[Page, chromium.Guards], origin: str, parked_vm: str) -> None:
    page, guards = admin
    guards.expected_refusals.add((409, f"{origin}/api/v1/instances"))
    page.goto(origin + "/#/vms/new")
    name = page.get_by_label("Name", exact=True)
    # checked in the browser first: the API's own rule, in words, before anything is sent
    name.fill("Not_A_Name")
    page.get_by_label("Image").select_option("testguest")
    page.get_by_role("button", name="Create VM").click()
    rule = page.get_by_role("alert").filter(has_text="The name must be 1-63 characters")
    expect(rule).to_be_visible()
    # the API is the judge: a name taken in the project is its refusal, next to the field
    name.fill(parked_vm)
    page.get_by_role("button", name="Create VM").click()
    taken = f"an instance named '{parked_vm}' already exists in project 'default'"
    field = page.locator(".field").filter(has=page.get_by_label("Name", exact=True))
    expect(field.get_by_role("alert")).to_have_text(taken)
    refusal = page.get_by_role("alert").filter(has_text="The VM was not created")
    expect(refusal).to_contain_text(taken)
    expect(page.get_by_role("heading", name="Create a VM")).to_be_visible()


def _no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"))


def test_vm_list_and_page_on_a_phone(browser: Browser, origin: str,
                                     admin_state: dict[str, Any], parked_vm: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844},
                                  storage_state=admin_state)  # type: ignore[arg-type]
    guards = chromium.Guards(origin)
    with chromium.guard(context, guards) as page:
        page.goto(origin + "/#/")
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="VMs")).not_to_be_in_viewport()
        page.get_by_role("button", name="Menu").click()
        expect(nav.get_by_role("link", name="VMs")).to_be_in_viewport()
        nav.get_by_role("link", name="VMs").click()
        expect(page.get_by_role("heading", name="Virtual machines")).to_be_visible()
        link = page.get_by_role("link", name=parked_vm, exact=True)
        expect(link).to_be_in_viewport()
        assert _no_horizontal_scroll(page)
        link.click()
        expect(page.get_by_role("heading", name=parked_vm)).to_be_visible()
        expect(_state(page)).to_have_text("stopped")
        for action in ("Start", "Stop", "Reboot", "Force off", "Delete"):
            expect(page.get_by_role("button", name=action)).to_be_visible()
        expect(page.get_by_role("link", name="Console", exact=True)).to_be_visible()
        page.get_by_role("button", name="Delete").click()  # the dialog fits: cancel it
        dialog = page.get_by_role("dialog", name="Delete")
        expect(dialog.get_by_role("button", name="Cancel")).to_be_in_viewport()
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        assert _no_horizontal_scroll(page)
        assert re.search(r"#/vms/" + re.escape(parked_vm) + "$", page.url)
    guards.check()


def test_a_project_viewer_sees_the_vm_but_no_action(
        browser: Browser, origin: str, ui_region: E2ERegion, parked_vm: str,
        tmp_path: Path) -> None:
    user = f"ui-viewer-{_tag()}"
    password = f"{user}-password-1234"
    secret = tmp_path / "password"
    secret.write_text(password)
    ui_region.cli("user", "create", user, "--password-file", str(secret))
    try:
        ui_region.cli("role", "grant", user, "project-viewer", "--project", "default")
        with chromium.guarded_page(browser, origin) as (page, guards):
            chromium.log_in(page, guards, user, password)
            page.goto(origin + "/#/vms")
            expect(page.get_by_role("link", name=parked_vm, exact=True)).to_be_visible()
            expect(page.get_by_role("link", name="Create VM")).to_have_count(0)
            page.get_by_role("link", name=parked_vm, exact=True).click()
            expect(page.get_by_role("heading", name=parked_vm)).to_be_visible()
            expect(_state(page)).to_have_text("stopped")
            expect(page.get_by_role("table", name="Operations of this VM")).to_contain_text(
                "create")
            expect(page.get_by_role("group", name="Power actions")).to_have_count(0)
            for action in ("Start", "Stop", "Reboot", "Force off", "Delete"):
                expect(page.get_by_role("button", name=action, exact=True)).to_have_count(0)
    finally:
        ui_region.cli("user", "delete", user)
