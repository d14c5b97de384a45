"""Debian's Chromium driven by Playwright against a real controller, with guards that fail
a test on any browser console error, uncaught page error, or request that would leave the
controller's origin (the UI must work air-gapped)."""

from __future__ import annotations

import base64
import hashlib
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    Route,
)

from controller.services.totp import STEP_S, code_from_uri, step_of

CHROMIUM = Path("/usr/bin/chromium")
# no sync, updates or metrics: otherwise Chromium keeps trying to reach outside hosts
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-domain-reliability", "--metrics-recording-only",
         "--no-pings", "--disable-features=MediaRouter,OptimizationHints,Translate"]


def spki_sha256(host: str, port: int) -> str:
    """The base64 SHA-256 of the server's public key, as Chromium's
    --ignore-certificate-errors-spki-list takes it: the browser trusts exactly that key."""
    pem = ssl.get_server_certificate((host, port))
    cert = x509.load_pem_x509_certificate(pem.encode())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def launch(pw: Playwright, url: str) -> Browser:
    """Chromium with a fresh profile (Playwright makes one per launch) that trusts the
    controller's key and no other certificate error."""
    parts = urlsplit(url)
    pin = spki_sha256(parts.hostname or "127.0.0.1", parts.port or 443)
    return pw.chromium.launch(executable_path=str(CHROMIUM),
                              args=[*FLAGS, f"--ignore-certificate-errors-spki-list={pin}"])


@dataclass
class Guards:
    """What a page did that it must not: console errors, page errors, outside requests."""

    origin: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    # (status, URL) of refusals the test expects, e.g. a login without its one-time code:
    # Chromium logs every 4xx answer as a console error
    expected_refusals: set[tuple[int, str]] = field(default_factory=set)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if any(message.text.startswith(f"Failed to load resource: the server responded with "
                                       f"a status of {status} ") and url == expected
               for status, expected in self.expected_refusals):
            return
        self.console_errors.append(f"{message.text} ({url})")

    def on_route(self, route: Route, request: Request) -> None:
        if request.url.startswith(("data:", "blob:")) or \
                request.url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.outside_requests.append(request.url)
            route.abort("blockedbyclient")

    def on_websocket(self, url: str) -> None:
        ws_origin = self.origin.replace("https://", "wss://", 1)
        if not url.startswith(ws_origin + "/"):
            self.outside_requests.append(url)

    def check(self) -> None:
        assert not self.outside_requests, f"requests left the controller: {self.outside_requests}"
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        assert not self.console_errors, f"browser console errors: {self.console_errors}"


@contextmanager
def guarded_page(browser: Browser, origin: str, *, width: int = 1280, height: int = 800,
                 storage_state: dict[str, Any] | None = None
                 ) -> Iterator[tuple[Page, Guards]]:
    """A page in a new browser context (its own cookies, or those of `storage_state`: a
    logged-in user's), guarded; the guards are checked when the block ends without an
    exception, and the context is closed in every case."""
    context: BrowserContext = browser.new_context(
        viewport={"width": width, "height": height},
        storage_state=storage_state)  # type: ignore[arg-type]
    guards = Guards(origin)
    with guard(context, guards) as page:
        yield page, guards
    guards.check()


@contextmanager
def guard(context: BrowserContext, guards: Guards) -> Iterator[Page]:
    """A new page of `context` whose console errors, page errors and outside requests go
    to `guards`; the context is closed when the block ends."""
    context.route("**/*", guards.on_route)
    page = context.new_page()
    page.on("console", guards.on_console)
    page.on("pageerror", lambda e: guards.page_errors.append(str(e)))
    page.on("websocket", lambda ws: guards.on_websocket(ws.url))
    try:
        yield page
    finally:
        context.close()


_last_steps: dict[str, int] = {}  # per seed, the last time step this process logged in with


def note_code_used(totp_uri: str) -> None:
    """Tell unused_code that the current step's code of `totp_uri` was spent elsewhere
    (e.g. the admin's bearer token of an all-in-one region)."""
    _last_steps[totp_uri] = step_of(datetime.now(UTC))


def unused_code(totp_uri: str) -> str:
    """A code of `totp_uri` the controller has not accepted yet from this process: the
    current step's, or the next one's (accepted too, for clock drift) when the current one
    was used; if both were, this waits for the clock to reach a new step."""
    while True:
        now = datetime.now(UTC)
        current = step_of(now)
        step = max(current, _last_steps.get(totp_uri, current - 1) + 1)
        if step <= current + 1:
            _last_steps[totp_uri] = step
            return code_from_uri(totp_uri, datetime.fromtimestamp(step * STEP_S, UTC))
        time.sleep(1.0)  # waiting for the clock to reach the next time step


def log_in(page: Page, guards: Guards, username: str, password: str,
           totp_uri: str | None = None) -> None:
    """Log in through the login page as a person would: the password, then the code (the
    password alone is answered 401 "a one-time code is needed" when the user has one)."""
    origin = guards.origin
    if totp_uri is not None:
        guards.expected_refusals.add((401, f"{origin}/api/v1/sessions"))
    page.goto(origin + "/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    if totp_uri is not None:
        page.get_by_label("One-time code").fill(unused_code(totp_uri))
        page.get_by_role("button", name="Verify").click()
    page.get_by_role("button", name="Log out").wait_for()
    guards.expected_refusals.discard((401, f"{origin}/api/v1/sessions"))
