"""The UI by keyboard alone: the skip link comes first, the navigation and a page's
controls are reached with Tab and used with Enter and Space, and focus is visible."""

from __future__ import annotations

from playwright.sync_api import Page, expect


def focused_name(page: Page) -> str:
    """The accessible text of the focused element (its label, or its text)."""
    return str(page.evaluate("""() => {
      const el = document.activeElement;
      if (!el) return '';
      const label = el.labels && el.labels.length ? el.labels[0].textContent : '';
      return (el.getAttribute('aria-label') || label || el.textContent || '').trim();
    }"""))


def tab_to(page: Page, name: str, limit: int = 60) -> None:
    """Press Tab until the focused element is named `name`; fails after `limit` presses."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if focused_name(page) == name:
            return
    raise AssertionError(f"no control named {name!r} within {limit} Tab presses")


def test_pages_are_usable_by_keyboard(admin_page: Page, origin: str) -> None:
    page = admin_page
    page.goto(f"{origin}/#/")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    page.keyboard.press("Tab")
    assert focused_name(page) == "Skip to content"  # the first stop of every page
    tab_to(page, "VMs")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Virtual machines")).to_be_visible()
    tab_to(page, "Create VM")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # where the focus is can be seen
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Create a VM")).to_be_visible()
    # every control of the form is reached by Tab and has a name a screen reader reads
    unnamed = page.evaluate("""() => [...document.querySelectorAll(
        'main input, main select, main textarea, main button')]
      .filter((el) => !el.disabled && el.offsetParent !== null)
      .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label') ||
                        el.getAttribute('aria-labelledby') || el.textContent.trim()))
      .map((el) => el.outerHTML.slice(0, 120))""")
    assert unnamed == []
    tab_to(page, "Name")
    page.keyboard.type("kbd-only")
    expect(page.get_by_label("Name", exact=True)).to_have_value("kbd-only")
