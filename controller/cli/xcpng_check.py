"""`vauban xcpng check URL`: how a real XCP-ng pool answers the calls Vauban makes.

Run on the operator's machine, straight to the pool (not through the controller),
pinned to --fingerprint: only the URL's host is pinned, so a member answers
HOST_IS_SLAVE and is reported as such, with its master's address, and nothing more is
asked. Read-only by default (see xcpng_check_reads); `--write` also makes, boots, stops
and destroys a tiny VM (see xcpng_check_write). One line per check on stdout, and with
`--transcript FILE` the same findings as JSON lines with secrets redacted:

* passwords and session ids never appear; every `OpaqueRef:…` is `OpaqueRef:<redacted>`
  (refs name objects of a session; `OpaqueRef:NULL` is kept, it names nothing);
* uuids of the pool and its hosts are kept: they tell whose pool and which host a
  certificate is, and grant nothing (any pool user reads them); every other uuid (VMs,
  VDIs, tasks) is `<uuid>`: they are the operator's workloads and nothing here needs them.

Exit 0 when every check passed, 1 otherwise, 2 on bad input or an unreachable pool.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from agent.drivers.xapi.errors import CertificateMismatch, MasterRefused, XapiError
from agent.drivers.xapi.events import WATCHED
from agent.drivers.xapi.pool import ORIGINATOR, PoolClient
from agent.drivers.xapi.transport import (
    DEFAULT_TIMEOUT,
    format_fingerprint,
    normalize_fingerprint,
)
from controller import __version__
from controller.cli.client import Client
from controller.cli.xcpng_check_reads import (
    Finding,
    check_certificates,
    check_class,
    check_events,
    check_import_formats,
    check_methods,
)
from controller.cli.xcpng_check_write import WriteCheck

_REF = re.compile(r"OpaqueRef:(?!NULL\b)[0-9A-Za-z-]+")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_SHA = re.compile(r"\b(?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}\b|\b[0-9a-f]{64}\b")
_PORT = re.compile(r"(https://[^/\s:]+|\[[0-9a-fA-F:]+\]):\d+")


class _Brief(logging.Formatter):
    """Log lines without tracebacks: an operator reads the failure, not our stack."""

    def formatException(self, ei: Any) -> str:
        return f"  ({ei[1]})" if ei and ei[1] is not None else ""


def _log_briefly() -> None:
    """Warnings of the drivers (a failed undo step) on stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Brief("vauban: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


class BadInput(Exception):
    """The command cannot start: exit 2, said in words."""


class Transcript:
    """Findings as redacted JSON lines (see the module docstring), and on stdout."""

    def __init__(self, out: IO[str] | None, secrets: list[str]) -> None:
        self.out, self.secrets = out, [s for s in secrets if s]
        self.keep: set[str] = set()  # the pool's and its hosts' uuids
        self.findings: list[Finding] = []

    def hide(self, text: str) -> str:
        """`text` without secrets and refs (what stdout shows too)."""
        for secret in self.secrets:
            text = text.replace(secret, "<secret>")
        return _REF.sub("OpaqueRef:<redacted>", text)

    def redact(self, value: Any) -> Any:
        """`value` as the transcript holds it: also without workload uuids."""
        if isinstance(value, dict):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        if not isinstance(value, str):
            return value
        return _UUID.sub(lambda m: m[0] if m[0] in self.keep else "<uuid>", self.hide(value))

    def line(self, record: dict[str, Any]) -> None:
        if self.out is not None:
            self.out.write(json.dumps(self.redact(record), sort_keys=True) + "\n")
            self.out.flush()

    def record(self, finding: Finding) -> None:
        """Print the finding's line and write it to the transcript."""
        self.findings.append(finding)
        print(f"{finding.outcome:<8} {finding.check:<21} {self.hide(finding.why)}", flush=True)
        self.line({"check": finding.check, "outcome": finding.outcome, "why": finding.why,
                   "data": finding.data, "seconds": finding.seconds})


def normalize(value: Any, key: str = "") -> Any:
    """A transcript line's value as it compares across runs: uuids, fingerprints,
    ports, times and versions as placeholders (keys are sorted when it is dumped)."""
    if key in ("seconds", "started"):
        return f"<{key}>"
    if key in ("port", "vauban"):
        return f"<{key}>"
    if isinstance(value, dict):
        return {k: normalize(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str):
        value = _SHA.sub("<sha256>", _UUID.sub("<uuid>", value))
        return _PORT.sub(r"\1:<port>", value)
    return value


def normalized_lines(text: str) -> list[str]:
    """The lines of a transcript, each normalized and dumped with sorted keys."""
    return [json.dumps(normalize(json.loads(line)), sort_keys=True)
            for line in text.splitlines() if line.strip()]


def _inputs(a: argparse.Namespace) -> tuple[str, int, str, str]:
    """(host, port, pin, password) from the arguments; BadInput when one is wrong."""
    parsed = urllib.parse.urlsplit(a.url)
    try:
        port = parsed.port or 443
    except ValueError as e:
        raise BadInput(f"{a.url!r}: {e}") from e
    if parsed.scheme != "https" or not parsed.hostname or parsed.path not in ("", "/"):
        raise BadInput(f"{a.url!r}: a pool is reached at https://HOST[:PORT] only")
    try:
        pin = normalize_fingerprint(a.fingerprint)
        raw = sys.stdin.read() if a.password_file == "-" else Path(a.password_file).read_text()
    except (ValueError, OSError) as e:
        raise BadInput(str(e)) from e
    password = raw.rstrip("\n")
    if not password:
        raise BadInput(f"the password file {a.password_file} is empty")
    return parsed.hostname, port, pin, password


def _login(client: PoolClient, host: str, port: int, out: Transcript) -> bool:
    """Log in; record how. False (exit 2) when the pool cannot be checked from here."""
    started = time.monotonic()
    try:
        client.connect()
    except MasterRefused as e:
        cause = e.__cause__
        if isinstance(cause, XapiError) and cause.code == "HOST_IS_SLAVE" and cause.params:
            master = cause.params[0]
            out.record(Finding("login", "differs", f"{host} is a member of its pool, not the "
                               f"master; the master is {master}: check "
                               f"https://{master}:{port}/ with its own fingerprint",
                               {"member": True, "master": master}))
            return False
        out.record(Finding("login", "failed", str(e)))
        return False
    except XapiError as e:  # CertificateMismatch (nothing sent), unreachable, refused
        out.record(Finding("login", "failed", str(e), {"certificate_mismatch":
                                                      isinstance(e, CertificateMismatch)}))
        return False
    out.secrets.append(client.session_id())
    out.keep.add(str(client.pool_uuid))
    out.record(Finding("login", "ok", f"logged in as originator {ORIGINATOR}, master "
                       f"{client.address}", {"originator": ORIGINATOR,
                                             "master": client.address,
                                             "pool_uuid": client.pool_uuid},
                       round(time.monotonic() - started, 3)))
    return True


def _timed(out: Transcript, check: str, fn: Callable[[], Finding]) -> Finding | None:
    """Run one read check; a failed call, or an answer of a shape the check cannot
    read, is recorded as the check's failure."""
    started = time.monotonic()
    try:
        finding = fn()
    except Exception as e:  # noqa: BLE001 - an odd answer is a finding, not a crash
        why = str(e) if isinstance(e, XapiError) else f"unexpected answer: {e!r}"
        out.record(Finding(check, "failed", why, {}, round(time.monotonic() - started, 3)))
        return None
    finding.seconds = round(time.monotonic() - started, 3)
    if check == "certificates":
        out.keep.update(str(h["uuid"]) for h in finding.data["hosts"])
    out.record(finding)
    return finding


def _reads(client: PoolClient, host: str, pin: str, out: Transcript) -> None:
    _timed(out, "methods", lambda: check_methods(client))
    counts: dict[str, int] = {}
    for cls in WATCHED:
        def one(cls: str = cls) -> Finding:
            finding, counts[cls] = check_class(client, cls)
            return finding
        _timed(out, f"records.{cls}", one)
    _timed(out, "events", lambda: check_events(client, counts))
    _timed(out, "certificates", lambda: check_certificates(client, host, pin))
    _timed(out, "import-formats", lambda: check_import_formats(client))


def run_check(a: argparse.Namespace, out_file: IO[str] | None,
              inputs: tuple[str, int, str, str]) -> int:
    """Every check against the pool; the exit status (see the module docstring)."""
    host, port, pin, password = inputs
    out = Transcript(out_file, [password])
    out.line({"check": "run", "url": {"host": host, "port": port}, "write": a.write,
              "user": a.user, "fingerprint": format_fingerprint(pin), "vauban": __version__,
              "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})

    def new_client() -> PoolClient:
        # the transport's timeout: above the 30 s event.from of --write's event loop
        return PoolClient(a.url, a.user, password, {host: pin}, timeout=DEFAULT_TIMEOUT, label=host)

    client = new_client()
    try:
        if not _login(client, host, port, out):
            return 2
        _reads(client, host, pin, out)
        if a.write:
            WriteCheck(new_client, out.record).run()
    finally:
        client.close()
    failed = [f.check for f in out.findings if not f.passed]
    print(f"{len(out.findings)} checks, {len(failed)} not passed"
          + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_xcpng_check(_c: Client, a: argparse.Namespace) -> int:
    """`vauban xcpng check` (see the module docstring)."""
    try:
        inputs = _inputs(a)
        out_file = open(a.transcript, "w", encoding="utf-8") if a.transcript else None
    except (BadInput, OSError) as e:
        print(f"vauban: error: {e}", file=sys.stderr)
        return 2
    _log_briefly()
    try:
        return run_check(a, out_file, inputs)
    finally:
        if out_file is not None:
            out_file.close()


def xcpng_commands(sub: Any, add: Callable[..., Any]) -> None:
    """The `xcpng` command group."""
    group = sub.add_parser("xcpng", help="XCP-ng pools, straight over XAPI").add_subparsers(
        dest="cmd", required=True)
    ck = add(group, "check", cmd_xcpng_check, "record how a pool answers the calls Vauban "
             "makes (read-only; --write makes and destroys a tiny VM)")
    ck.add_argument("url", help="the pool master: https://HOST[:PORT]")
    ck.add_argument("--user", required=True, help="a pool user (e.g. root)")
    ck.add_argument("--fingerprint", required=True, help="SHA-256 of the host's "
                    "certificate, as its console shows it (AA:BB:… or 64 hex digits)")
    ck.add_argument("--password-file", required=True, metavar="FILE",
                    help="a file holding the password ('-': standard input)")
    ck.add_argument("--write", action="store_true", help="also create, start, stop and "
                    "destroy a tiny VM and its 1 MiB VDI on the default SR")
    ck.add_argument("--transcript", metavar="FILE", help="write the findings there as "
                    "JSON lines (secrets redacted)")
