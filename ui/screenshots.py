"""Screenshots of the web UI's main pages, for docs/screenshots/ and the README.

Starts a throwaway all-in-one region (controller, agent, the test guest image) in a new
folder under /var/tmp, fills it with a small demonstration (a project, a tenant network,
two VMs, one of them running), logs in through the login page in
Debian's Chromium as the admin (password, then one-time code), and writes one PNG per
page at 1280×800, plus the VM list at a phone's width. Afterwards the region's processes
are stopped by their PIDs, its VMs undefined and its folder removed, whether or not the
run succeeded.

Usage (as root, after `make deps image`): python -m ui.screenshots --out docs/screenshots
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from controller.allinone import Layout
from tests.browser import chromium
from tests.e2e.region import E2ERegion

ROOT = Path(__file__).resolve().parents[1]
TESTGUEST = ROOT / "var" / "images" / "testguest.raw"


def demonstration(region: E2ERegion) -> None:
    """What the pages show: a network and VMs in the default project (where the region's
    test guest image is), one of them running, and a second project with quotas."""
    region.cli("project", "create", "shop")
    region.cli("project", "quota", "shop", "--vcpus", "16", "--memory-mib", "32768")
    region.cli("network", "create", "blue", "--kind", "tenant", "--subnet", "10.10.0.0/24",
               "--gateway", "10.10.0.1")
    # no NIC: a network is made on the node with its first port, and this host may hold
    # another region whose tenant network has the same VNI
    region.cli("vm", "create", "web-1", "--image", "testguest", "--cpus", "1", "--memory",
               "256", "--wait")
    region.cli("vm", "create", "db-1", "--image", "testguest", "--cpus", "1", "--memory",
               "256", "--no-start", "--wait")
    region.vm("web-1")  # known to the region's cleanup from here on
    region.vm("db-1")


def heading(name: str) -> Callable[[Page], None]:
    return lambda p: expect(p.get_by_role("heading", name=name)).to_be_visible()


# (file name, address, what must be on the page before the picture is taken)
PAGES: list[tuple[str, str, Callable[[Page], None]]] = [
    ("dashboard", "/", heading("Dashboard")),
    ("vms", "/vms", lambda p: expect(p.get_by_role("link", name="web-1")).to_be_visible()),
    ("vm", "/vms/web-1", heading("web-1")),
    ("console", "/vms/web-1/console",
     lambda p: expect(p.get_by_role("status").filter(has_text="Graphical console"))
     .to_contain_text("connected", timeout=60_000)),
    ("nodes", "/nodes", heading("Nodes")),
    ("images", "/images", lambda p: expect(p.get_by_text("testguest").first).to_be_visible()),
    ("networks", "/networks", lambda p: expect(p.get_by_text("blue").first).to_be_visible()),
    ("operations", "/operations", heading("Operations")),
    ("audit", "/audit", heading("Audit trail")),
    ("projects", "/projects", lambda p: expect(p.get_by_text("shop").first).to_be_visible()),
]


def shoot(lay: Layout, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = chromium.launch(pw, lay.url)
        try:
            with chromium.guarded_page(browser, lay.url) as (page, guards):
                chromium.log_in(page, guards, "admin", lay.password_file.read_text().strip(),
                                lay.totp_file.read_text().strip())
                for name, address, ready in PAGES:
                    page.goto(f"{lay.url}/#{address}")
                    ready(page)
                    expect(page.locator(".loading")).to_have_count(0, timeout=30_000)
                    page.screenshot(path=str(out / f"{name}.png"))
                page.set_viewport_size({"width": 390, "height": 844})
                page.goto(f"{lay.url}/#/vms")
                PAGES[1][2](page)
                page.screenshot(path=str(out / "vms-narrow.png"))
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--image", type=Path, default=TESTGUEST)
    args = parser.parse_args()
    region = E2ERegion.create()
    try:
        region.start(args.image)
        chromium.note_code_used(region.layout.totp_file.read_text().strip())
        demonstration(region)
        shoot(region.layout, args.out)
    finally:
        region.stop()  # its processes by PID, its VMs, its folder
    print(f"screenshots written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
