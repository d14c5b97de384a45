"""A VM's consoles in Chromium: the graphical console (noVNC) shows the guest's screen and
follows it as it changes; the serial console (xterm.js) reads the guest and types into it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.region import E2ERegion, console_count, console_has, wait_for

CONNECT_TIMEOUT_MS = 60_000  # ticket, the agent's dial-back, the VNC or serial handshake
BOOT_TIMEOUT_MS = 240_000  # a real boot under TCG on a loaded machine

# a digest of the noVNC canvas's pixels and how many colours they hold
CANVAS_DIGEST = """() => {
  const canvas = document.querySelector('.console-screen canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    hash = (Math.imul(hash, 31) + rgb) | 0;
    if (colours.size < 64) colours.add(rgb);
  }
  return { hash, colours: colours.size };
}"""


@pytest.fixture(scope="module")
def running_vm(ui_region: E2ERegion) -> Iterator[str]:
    """A running VM without NICs (none of the host's network changes under Chromium)."""
    name = f"ui-console-{uuid.uuid4().hex[:6]}"
    ui_region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
                  "--wait")
    vm = ui_region.vm(name)  # recorded for the region's cleanup
    # booted to its shell: what is typed on the serial console from now on is read
    wait_for(lambda: console_has(vm["console_log"], "VAUBAN-TESTGUEST-READY"), 240,
             "the test guest to boot")
    try:
        yield name
    finally:
        ui_region.cli("vm", "delete", name, "--wait")


def test_graphical_console_shows_the_screen_and_its_changes(
        admin_page: Page, origin: str, ui_region: E2ERegion, running_vm: str) -> None:
    page = admin_page
    page.goto(f"{origin}/#/vms/{running_vm}/console")
    expect(page.get_by_role("status").filter(has_text="Graphical console")).to_contain_text(
        "connected", timeout=CONNECT_TIMEOUT_MS)
    page.wait_for_function(f"() => {{ const d = ({CANVAS_DIGEST})(); return d && d.colours > 1; }}",
                           timeout=CONNECT_TIMEOUT_MS)  # not blank: the guest's text on it
    before = page.evaluate(CANVAS_DIGEST)
    log = ui_region.vm(running_vm)["console_log"]
    ready = console_count(log, "VAUBAN-TESTGUEST-READY")
    # a hard reset: firmware and kernel write the screen anew, noVNC must follow
    ui_region.cli("vm", "reboot", running_vm, "--force", "--wait")
    page.wait_for_function(
        f"() => {{ const d = ({CANVAS_DIGEST})(); return d && d.hash !== {before['hash']}; }}",
        timeout=BOOT_TIMEOUT_MS)
    # the VM is shared with the module's other tests: it is left booted to its shell again
    # (the serial test typed into a guest still booting, and its first keys were lost)
    wait_for(lambda: console_count(log, "VAUBAN-TESTGUEST-READY") > ready,
             BOOT_TIMEOUT_MS / 1000, "the test guest to boot again after the reset")
    audit = ui_region.cli("audit", "list", "--json")
    assert '"console.ticket"' in audit and running_vm in audit


def test_serial_console_reads_and_types(admin_page: Page, origin: str, ui_region: E2ERegion,
                                        running_vm: str) -> None:
    page = admin_page
    page.goto(f"{origin}/#/vms/{running_vm}/console?kind=serial")
    expect(page.get_by_role("status").filter(has_text="Serial console")).to_contain_text(
        "connected", timeout=CONNECT_TIMEOUT_MS)
    screen = page.locator(".serial-screen .xterm-rows")
    page.locator(".serial-screen").click()  # the terminal takes the keyboard
    # the guest's shell answers a command typed in the browser; its result proves the echo
    # is not ours: 6*7 is worked out by the guest
    page.keyboard.type("echo vauban-$((6*7))\n")
    expect(screen).to_contain_text("vauban-42", timeout=BOOT_TIMEOUT_MS)


def test_the_vm_page_shows_the_serial_log(admin_page: Page, origin: str,
                                          running_vm: str) -> None:
    page = admin_page
    page.goto(f"{origin}/#/vms/{running_vm}")
    page.get_by_role("button", name="Show the serial log").click()
    expect(page.get_by_label("Serial log")).to_contain_text("VAUBAN-TESTGUEST-READY",
                                                            timeout=CONNECT_TIMEOUT_MS)
