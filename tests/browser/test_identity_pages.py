"""The identity pages in Chromium, as a region admin uses them: a project and a user made
through the pages, the user made a member of the project, a quota set and the usage seen
against it; an API token made and revoked on the account page; and the audit page's
verdict on the chain, with the entries of all of these. And a user's own account page:
its password changed, a one-time code enrolled, then used to log in."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser import chromium
from tests.e2e.region import E2ERegion


@pytest.fixture
def names(ui_region: E2ERegion) -> Iterator[dict[str, str]]:
    """Unique names for what the test makes; afterwards each is deleted by its name
    (a missing one is fine: the test may have stopped before making it)."""
    uid = uuid.uuid4().hex[:6]
    made = {"project": f"idp-{uid}", "user": f"idu-{uid}", "token": f"idt-{uid}",
            "image": f"idi-{uid}", "vm": f"idv-{uid}"}
    yield made
    for args in (("vm", "delete", made["vm"], "--wait"), ("image", "delete", made["image"]),
                 ("user", "delete", made["user"]), ("project", "delete", made["project"])):
        ui_region.run_cli(*args)
    left = ui_region.cli("project", "list") + ui_region.cli("user", "list")
    assert made["project"] not in left and made["user"] not in left


def _goto(page: Page, origin: str, path: str, heading: str) -> None:
    page.goto(f"{origin}/#{path}")
    expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()


def _meter(page: Page, label: str) -> Locator:
    return page.locator(f'[role=meter][aria-label="{label}"]')


def _make_project_with_quotas(page: Page, origin: str, project: str) -> None:
    _goto(page, origin, "/projects", "Projects")
    page.get_by_role("button", name="Create project").click()
    page.get_by_label("Name", exact=True).fill(project)
    page.get_by_label("Description", exact=True).fill("made by the identity pages test")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("heading", name=f"Project {project}")).to_be_visible()
    expect(page.get_by_text("no limit").first).to_be_visible()
    page.get_by_role("button", name="Edit quotas").click()
    page.get_by_label("VMs", exact=True).fill("3")
    page.get_by_label("vCPUs", exact=True).fill("4")
    page.get_by_label("Memory (MiB)").fill("2048")
    page.get_by_label("GPUs per model").fill("H100=2")
    page.get_by_role("button", name="Save quotas").click()
    expect(_meter(page, "vCPUs")).to_have_attribute("aria-valuemax", "4")
    expect(_meter(page, "GPUs H100")).to_have_attribute("aria-valuemax", "2")


def _make_member(page: Page, origin: str, user: str, project: str) -> None:
    _goto(page, origin, "/users", "Users")
    page.get_by_role("button", name="Create user").click()
    page.get_by_label("Name", exact=True).fill(user)
    page.get_by_role("button", name="Create user").click()
    secret = page.locator("#created-password")
    expect(secret).to_be_visible()
    assert len(secret.inner_text().strip()) >= 12  # the made password, shown once
    expect(page.get_by_role("button", name=f"Copy Initial password of {user}")).to_be_visible()
    detail = page.locator(".user-detail")
    expect(detail.get_by_role("heading", name=f"User {user}")).to_be_visible()
    detail.get_by_label("Role", exact=True).select_option("project-member")
    detail.get_by_label("Project", exact=True).select_option(project)
    detail.get_by_role("button", name="Give role").click()
    expect(detail.get_by_role("table")).to_contain_text("project-member")
    expect(detail.get_by_role("table")).to_contain_text(project)
    _goto(page, origin, f"/projects/{project}", f"Project {project}")
    members = page.get_by_role("table", name="Role bindings")
    expect(members.get_by_role("row").filter(has_text=user)).to_contain_text("project-member")


def _see_usage(page: Page, origin: str, ui_region: E2ERegion, names: dict[str, str],
               image: Path) -> None:
    project = names["project"]
    ui_region.cli("image", "import", str(image), "--name", names["image"], "--project", project)
    ui_region.cli("vm", "create", names["vm"], "--image", names["image"], "--cpus", "1",
                  "--memory", "256", "--no-start", "--project", project)
    ui_region.vm(names["vm"])  # recorded: the region removes it even if this test fails
    page.reload()
    expect(_meter(page, "vCPUs")).to_have_attribute("aria-valuenow", "1")
    expect(page.locator(".usage").filter(has_text="vCPUs")).to_contain_text("1 / 4")
    expect(page.locator(".usage").filter(has_text="VMs")).to_contain_text("1 / 3")
    expect(page.locator(".usage").filter(has_text="Networks")).to_contain_text("no limit")


def _token_made_and_revoked(page: Page, origin: str, token: str) -> None:
    _goto(page, origin, "/account", "My account")
    page.get_by_label("Token name").fill(token)
    page.get_by_label("Acts as").select_option("region-admin")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#token-secret")).not_to_be_empty()
    row = page.get_by_role("row").filter(has_text=token)
    expect(row).to_contain_text("valid")
    page.get_by_role("button", name=f"Revoke token {token}").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke", exact=True).click()
    expect(row).to_contain_text("revoked")
    expect(page.get_by_role("button", name=f"Revoke token {token}")).to_have_count(0)


def _audit_shows_it_all(page: Page, origin: str) -> None:
    _goto(page, origin, "/audit", "Audit trail")
    expect(page.get_by_role("status").filter(has_text="Verified")).to_contain_text(
        "the audit trail is intact")
    page.get_by_label("Actor", exact=True).fill("admin")
    page.get_by_role("button", name="Apply filters").click()
    entries = page.get_by_role("table", name="Audit entries")
    for action in ("project.create", "project.quotas", "user.create", "role.grant",
                   "token.create", "token.revoke", "instance.create"):
        expect(entries).to_contain_text(action)
    page.get_by_label("Action", exact=True).fill("token.revoke")
    page.get_by_role("button", name="Apply filters").click()
    expect(entries.locator("tbody tr").first).to_contain_text("token.revoke")
    # waited for, not read once: the rows of the former filter go as the table redraws
    expect(entries.locator("tbody tr").filter(has_not_text="token.revoke")).to_have_count(0)


def _delete_through_the_pages(page: Page, guards: chromium.Guards, origin: str,
                              ui_region: E2ERegion, names: dict[str, str]) -> None:
    project, user = names["project"], names["user"]
    _goto(page, origin, "/projects", "Projects")
    guards.expected_refusals.add((409, f"{origin}/api/v1/projects/{project}"))
    page.get_by_role("button", name=f"Delete project {project}").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(dialog.get_by_role("alert")).to_contain_text(f"project '{project}' still holds 1")
    dialog.get_by_role("button", name="Cancel").click()
    guards.expected_refusals.clear()
    ui_region.cli("vm", "delete", names["vm"], "--wait")
    ui_region.cli("image", "delete", names["image"])
    page.get_by_role("button", name=f"Delete project {project}").click()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_role("link", name=project, exact=True)).to_have_count(0)
    _goto(page, origin, "/users", "Users")
    page.get_by_role("button", name=f"Delete user {user}").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_role("cell", name=user, exact=True)).to_have_count(0)


def test_an_admin_manages_a_project_its_member_a_token_and_reads_the_trail(
        admin: tuple[Page, chromium.Guards], origin: str, ui_region: E2ERegion,
        names: dict[str, str], testguest_image: Path) -> None:
    page, guards = admin
    _make_project_with_quotas(page, origin, names["project"])
    _make_member(page, origin, names["user"], names["project"])
    _see_usage(page, origin, ui_region, names, testguest_image)
    _token_made_and_revoked(page, origin, names["token"])
    _audit_shows_it_all(page, origin)
    _delete_through_the_pages(page, guards, origin, ui_region, names)


def test_a_user_changes_its_password_and_enrolls_a_one_time_code(
        browser: Browser, origin: str, ui_region: E2ERegion, tmp_path: Path) -> None:
    user = f"ida-{uuid.uuid4().hex[:6]}"
    first, second = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    (tmp_path / "password").write_text(first)
    ui_region.cli("user", "create", user, "--password-file", str(tmp_path / "password"))
    ui_region.cli("role", "grant", user, "project-viewer", "--project", "default")
    try:
        with chromium.guarded_page(browser, origin) as (page, guards):
            chromium.log_in(page, guards, user, first)
            _goto(page, origin, "/account", "My account")
            expect(page.get_by_text("You log in with your password only.")).to_be_visible()
            page.get_by_label("Current password").fill(first)
            page.get_by_label("New password", exact=True).fill(second)
            page.get_by_label("New password again").fill(second)
            page.get_by_role("button", name="Change password").click()
            expect(page.get_by_role("status").filter(has_text="Password changed")).to_be_visible()

            page.get_by_role("textbox", name="Password", exact=True).fill(second)
            page.get_by_role("button", name="Enroll a one-time code").click()
            uri = page.locator("#totp-uri").inner_text().strip()
            assert uri.startswith("otpauth://totp/")
            expect(page.locator("#totp-secret")).to_have_text(
                parse_qs(urlsplit(uri).query)["secret"][0])
            page.get_by_label("Code of the new seed").fill(chromium.unused_code(uri))
            page.get_by_role("button", name="Confirm").click()
            expect(page.get_by_role("status").filter(has_text="is active")).to_be_visible()
            expect(page.get_by_role("textbox", name="One-time code", exact=True)).to_be_visible()
            page.get_by_role("button", name="Log out").click()
            expect(page.get_by_label("User name")).to_be_visible()  # logged out for good
            chromium.log_in(page, guards, user, second, uri)  # the new password and code
            expect(page.get_by_role("link", name=user)).to_be_visible()
    finally:
        ui_region.run_cli("user", "delete", user)
    assert user not in ui_region.cli("user", "list")
