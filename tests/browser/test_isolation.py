"""The issue's "a project member does not see another project's VMs in any page": a
member of project A, logged in through the login page, visits every page of the UI
(the routes file's list, so a page added later is visited too) and finds neither project
B's name nor its VM's name anywhere; no page logs a console error, and the pages its role
does not reach say so in words."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import chromium
from tests.e2e.region import E2ERegion

ROUTES_FILE = Path(__file__).resolve().parents[2] / "controller/ui/static/pages/routes.js"
ROUTE = re.compile(r'\{\s*path:\s*"(?P<path>[^"]+)",\s*title:\s*"(?P<title>[^"]+)"')


@dataclass(frozen=True)
class Route:
    path: str
    title: str


def routes() -> list[Route]:
    """Every page of the UI, in the order of pages/routes.js."""
    found = [Route(m["path"], m["title"]) for m in ROUTE.finditer(ROUTES_FILE.read_text())]
    assert len(found) > 5, f"no routes read from {ROUTES_FILE}: has its format changed?"
    return found


@dataclass(frozen=True)
class Tenants:
    a: str
    b: str
    member: str
    password: str
    vm_a: str
    vm_b: str
    net_a: str


@pytest.fixture
def tenants(ui_region: E2ERegion, testguest_image: Path, tmp_path: Path) -> Iterator[Tenants]:
    """Projects A and B, a member of A with a password (no one-time code), a stopped VM in
    each and a network in A; everything is deleted by its name afterwards."""
    uid = uuid.uuid4().hex[:6]
    t = Tenants(a=f"iso-a-{uid}", b=f"iso-b-{uid}", member=f"iso-m-{uid}",
                password=secrets.token_urlsafe(18), vm_a=f"iso-va-{uid}",
                vm_b=f"iso-vb-{uid}", net_a=f"iso-na-{uid}")
    image = f"iso-img-{uid}"
    password_file = tmp_path / "password"
    password_file.write_text(t.password)
    cli = ui_region.cli
    try:
        cli("project", "create", t.a)
        cli("project", "create", t.b)
        cli("user", "create", t.member, "--password-file", str(password_file))
        cli("role", "grant", t.member, "project-member", "--project", t.a)
        # shared by both projects for the test's length: one upload instead of two
        cli("image", "import", str(testguest_image), "--name", image, "--public")
        for vm, project in ((t.vm_a, t.a), (t.vm_b, t.b)):
            cli("vm", "create", vm, "--image", image, "--cpus", "1", "--memory", "256",
                "--no-start", "--project", project, "--wait")
            ui_region.vm(vm)  # recorded: the region removes it even if the cleanup fails
        cli("network", "create", t.net_a, "--kind", "tenant", "--project", t.a)
        yield t
    finally:
        for args in (("vm", "delete", t.vm_a, "--wait"), ("vm", "delete", t.vm_b, "--wait"),
                     ("network", "delete", t.net_a), ("image", "delete", image),
                     ("user", "delete", t.member), ("project", "delete", t.a),
                     ("project", "delete", t.b)):
            ui_region.run_cli(*args)
    left = cli("project", "list") + cli("user", "list") + cli("vm", "list")
    assert not [n for n in (t.a, t.b, t.member, t.vm_a, t.vm_b) if n in left], left


def _fill(route: Route, t: Tenants) -> str:
    """The route's address with its parameters filled with A's objects: what the member
    may open. A route of a new kind needs its value here."""
    values = {"projects": t.a, "vms": t.vm_a, "networks": t.net_a,
              "security-groups": "default", "nodes": "any"}
    kind = route.path.split("/")[1]

    def value(m: re.Match[str]) -> str:
        if kind not in values:
            pytest.fail(f"route {route.path}: tell this test which of A's objects fills "
                        f"{m.group(0)} (values by the route's first part)")
        return values[kind]

    return re.sub(r":\w+", value, route.path)


def _reaches(page: Page) -> dict[str, bool]:
    """The member's abilities as the shell computes them from its account."""
    return page.evaluate("""async () => {
      const { abilities } = await import("/ui/lib/session.js");
      const account = await (await fetch("/api/v1/account")).json();
      return abilities(account);
    }""")


def _needs(path: str) -> str | None:
    line = next(ln for ln in ROUTES_FILE.read_text().splitlines() if f'path: "{path}"' in ln)
    found = re.search(r'needs:\s*"(\w+)"', line)
    return found[1] if found else None


def _check_page(page: Page, route: Route, address: str, can: dict[str, bool],
                t: Tenants) -> None:
    """The page at `address` as the member sees it: drawn (or refused in words), and
    nothing of project B in its text."""
    main = page.locator("main")
    needs = _needs(route.path)
    if needs and not can.get(needs):
        expect(main.get_by_role("heading", name="Not allowed")).to_be_visible()
        expect(main).to_contain_text("Your roles do not give access to this page")
    else:
        expect(page).to_have_title(f"{route.title} · Vauban")
        expect(main.locator("h1")).to_be_visible()
        expect(main.get_by_role("status").filter(has_text="Loading")).to_have_count(0)
    text = page.locator("body").inner_text()
    assert main.inner_text().strip(), "a blank page"
    for name in (t.b, t.vm_b):
        assert name not in text, f"it shows {name}: {text}"
    if address == "/vms":  # it does see its own project's VM
        assert t.vm_a in text, text
    if address == "/projects":
        assert t.a in text, text


def test_a_member_sees_nothing_of_another_project_in_any_page(
        browser: Browser, origin: str, tenants: Tenants) -> None:
    t = tenants
    problems: list[str] = []
    with chromium.guarded_page(browser, origin) as (page, guards):
        chromium.log_in(page, guards, t.member, t.password)
        can = _reaches(page)
        visited = []
        for route in routes():
            address = _fill(route, t)
            page.goto(f"{origin}/#{address}")
            try:
                _check_page(page, route, address, can, t)
            except AssertionError as e:
                problems.append(f"{address}: {str(e).splitlines()[0]}")
            # each page's errors are its own: named with it, then cleared for the next one
            problems.extend(f"{address}: {e}" for e in guards.console_errors + guards.page_errors)
            guards.console_errors.clear()
            guards.page_errors.clear()
            visited.append(address)
    assert not problems, "\n".join(problems)
    assert f"/projects/{t.a}" in visited and "/vms" in visited
