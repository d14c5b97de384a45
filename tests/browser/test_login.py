"""Logging in to the web UI in Chromium: password, then the one-time code."""

from __future__ import annotations

from playwright.sync_api import Browser, expect

from tests.browser import chromium
from tests.e2e.region import E2ERegion


def test_admin_logs_in_with_password_then_code_and_out(browser: Browser, origin: str,
                                                       ui_region: E2ERegion) -> None:
    password = ui_region.layout.password_file.read_text().strip()
    seed = ui_region.layout.totp_file.read_text().strip()
    with chromium.guarded_page(browser, origin) as (page, guards):
        chromium.log_in(page, guards, "admin", password, seed)
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        expect(page.get_by_role("link", name="admin")).to_be_visible()
        page.reload()  # the session (cookie) and its CSRF token survive a reload
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_role("heading", name="Vauban")).to_be_visible()
        expect(page.get_by_label("User name")).to_be_visible()
        page.reload()  # logged out for good: the cookie's session ended
        expect(page.get_by_label("User name")).to_be_visible()


def test_wrong_code_is_refused_in_words(browser: Browser, origin: str,
                                        ui_region: E2ERegion) -> None:
    password = ui_region.layout.password_file.read_text().strip()
    with chromium.guarded_page(browser, origin) as (page, guards):
        guards.expected_refusals.add((401, f"{origin}/api/v1/sessions"))
        page.goto(origin + "/")
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        code = page.get_by_label("One-time code")
        code.fill("000000" if chromium.unused_code(
            ui_region.layout.totp_file.read_text().strip()) != "000000" else "111111")
        page.get_by_role("button", name="Verify").click()
        expect(page.get_by_role("alert")).to_contain_text("Login refused")
        expect(page.get_by_role("button", name="Log out")).to_have_count(0)
