"""Fixtures of the browser tests: one real region (controller, agent, test guest image)
and one Chromium for the whole package; each test gets its own guarded page.

Package scope, not session: Playwright's sync API runs an asyncio event loop in this
thread for as long as it is open, and the tests after this package (pyroute2's netlink
sockets) need to run their own; the region and Chromium end with the package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser import chromium
from tests.e2e.region import E2ERegion


@pytest.fixture(scope="package")
def ui_region(testguest_image: Path, libvirtd: list[int]) -> Iterator[E2ERegion]:
    with E2ERegion.running(testguest_image) as region:
        # the admin's code of this step was spent getting the region's bearer token
        chromium.note_code_used(region.layout.totp_file.read_text().strip())
        yield region


@pytest.fixture(scope="package")
def origin(ui_region: E2ERegion) -> str:
    return ui_region.layout.url


@pytest.fixture(scope="package")
def browser(ui_region: E2ERegion) -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = chromium.launch(pw, ui_region.layout.url)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="package")
def admin_state(browser: Browser, ui_region: E2ERegion, origin: str) -> dict[str, Any]:
    """The browser state (cookie and stored CSRF token) of the admin, logged in once
    through the login page with the password and the one-time code."""
    with chromium.guarded_page(browser, origin) as (page, guards):
        chromium.log_in(page, guards, "admin",
                        ui_region.layout.password_file.read_text().strip(),
                        ui_region.layout.totp_file.read_text().strip())
        state: dict[str, Any] = page.context.storage_state()
    return state


@pytest.fixture
def admin(browser: Browser, origin: str, admin_state: dict[str, Any]
          ) -> Iterator[tuple[Page, chromium.Guards]]:
    """A guarded page logged in as the admin (its own browser context), with its guards
    (for a test that expects a refusal)."""
    with chromium.guarded_page(browser, origin, storage_state=admin_state) as (page, guards):
        yield page, guards


@pytest.fixture
def admin_page(admin: tuple[Page, chromium.Guards]) -> Page:
    """A guarded page logged in as the admin (its own browser context)."""
    return admin[0]
