"""The resource pages in Chromium: images (upload with the checksum computed in the page,
delete, the refusal of an image a VM uses), security groups and networks made through the
pages and checked against the API."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from tests.browser import chromium
from tests.e2e.region import E2ERegion

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


@pytest.fixture
def admin(browser: Browser, origin: str, admin_state: dict[str, Any]
          ) -> Iterator[tuple[Page, chromium.Guards]]:
    """A guarded page logged in as the admin, with its guards (to expect a refusal)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  storage_state=admin_state)  # type: ignore[arg-type]
    guards = chromium.Guards(origin)
    with chromium.guard(context, guards) as page:
        yield page, guards
    guards.check()


def _name(kind: str) -> str:
    return f"ui-{kind}-{uuid.uuid4().hex[:6]}"


def _api(region: E2ERegion, method: str, path: str) -> Any:
    """The API's answer to the admin's token (None for 204)."""
    r = requests.request(method, f"{region.layout.url}/api/v1{path}",
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

