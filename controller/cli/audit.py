"""CLI of the audit trail: `vauban audit list`, `vauban audit verify [--file EXPORT]`,
`vauban audit export [--since TIME] [--output FILE]`.

`verify` exits 0 when the chain is intact, 1 when it is broken or could not be checked.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.cli.client import Client
from controller.cli.formats import Column, emit_list
from controller.cli.output import print_json
from controller.services.audit_chain import verify_export


def cmd_audit_list(c: Client, a: argparse.Namespace) -> int:
    given = (("actor", a.actor), ("action", a.action), ("target", a.target),
             ("project", a.project), ("since", a.since and a.since.isoformat()),
             ("until", a.until and a.until.isoformat()), ("before", a.before),
             ("limit", a.limit))
    # 0 is a value (the API refuses it, saying why), not a missing option
    params = {k: v for k, v in given if v is not None and v != ""}
    return emit_list(a, c.get("/audit-events", params=params), AUDIT_COLUMNS)


AUDIT_COLUMNS: list[Column] = [
    ("SEQ", "seq"), ("TIME", "at"), ("ACTOR", "actor"), ("SOURCE", "source"),
    ("ACTION", "action"), ("TARGET", "target"), ("OUTCOME", "outcome")]


def cmd_audit_verify(c: Client, a: argparse.Namespace) -> int:
    """Verify the controller's chain, or an export file on its own (offline)."""
    if a.file:
        return _verify_file(a.file, a.json)
    report = c.get("/audit-events/verify", timeout=3600)
    if a.json:
        print_json(report)
    else:
        _print_report(report["ok"], report["entries"], report["head_seq"], report["head_hash"],
                      report["breaks"], report["findings"])
    return 0 if report["ok"] else 1


def _verify_file(path: str, as_json: bool) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            verifier, head = verify_export(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        print(f"vauban: error: {path} cannot be verified: {e}", file=sys.stderr)
        return 1
    findings = [{"seq": x.seq, "kind": x.kind, "message": x.message} for x in verifier.findings]
    head_seq, head_hash = (head["seq"], head["hash"]) if head else (None, None)
    if as_json:
        print_json({"ok": verifier.ok, "entries": verifier.count, "head_seq": head_seq,
                    "head_hash": head_hash, "anchor_seq": verifier.start_seq,
                    "anchor_hash": verifier.start_hash, "breaks": verifier.breaks,
                    "findings": findings})
    else:
        _print_report(verifier.ok, verifier.count, head_seq, head_hash, verifier.breaks,
                      findings, f" after entry {verifier.start_seq} ({verifier.start_hash})")
    return 0 if verifier.ok else 1


def _print_report(ok: bool, entries: int, head_seq: int | None, head_hash: str | None,
                  breaks: int, findings: list[dict[str, Any]], anchor: str = "") -> None:
    head = f"head: entry {head_seq} {head_hash}" if head_seq is not None else "no head"
    if ok:
        print(f"audit chain intact: {entries} entries{anchor}; {head}")
        return
    print(f"audit chain BROKEN: {breaks} break(s) in {entries} entries{anchor}; {head}")
    for f in findings:
        print(f"  entry {f['seq']}: {f['kind']}: {f['message']}")
    if breaks > len(findings):
        print(f"  ... and {breaks - len(findings)} more")


def since_arg(text: str) -> datetime:
    """ISO 8601 date or time; without a zone it is UTC (`2026-12-01`, `2026-12-01T08:00Z`)."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"'{text}' is not an ISO 8601 date or time") from e
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def cmd_audit_export(c: Client, a: argparse.Namespace) -> int:
    """Write the export, as JSON lines, to --output (whole or not at all) or stdout."""
    params: dict[str, Any] = {}
    if a.since:
        params["since"] = a.since.isoformat()
    if a.after is not None:
        params["after"] = a.after
    lines = c.lines("/audit-events/export", params=params)
    if not a.output or a.output == "-":
        sys.stdout.writelines(lines)
        return 0
    _write_whole(Path(a.output), lines)
    return 0


def _write_whole(path: Path, lines: Iterable[str]) -> None:
    """`path` holds all of `lines`, or is as it was (a failure leaves no partial export)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def audit_commands(sub: Any, add: Callable[..., Any]) -> None:
    au = sub.add_parser("audit", help="the audit trail").add_subparsers(dest="cmd", required=True)
    al = add(au, "list", cmd_audit_list, "list audit events, newest first",
             columns=AUDIT_COLUMNS)
    al.add_argument("--actor")
    al.add_argument("--action", help="e.g. instance.create")
    al.add_argument("--target", metavar="KIND/ID",
                    help="one object (instance/ID), or every object of a kind (instance/)")
    al.add_argument("--project", help="the project acted in (its name)")
    al.add_argument("--since", type=since_arg, metavar="ISO8601", help="entries from then on")
    al.add_argument("--until", type=since_arg, metavar="ISO8601", help="entries before then")
    al.add_argument("--before", type=int, metavar="SEQ",
                    help="entries before this sequence number (the next page)")
    al.add_argument("--limit", type=int, default=50)
    av = add(au, "verify", cmd_audit_verify, "check the hash chain (exit 1 if broken)",
             json_=True)
    av.add_argument("--file", help="verify this export on its own instead (offline)")
    ae = add(au, "export", cmd_audit_export, "the trail as JSON lines for a SIEM, anchored "
             "so that `vauban audit verify --file` checks it")
    start = ae.add_mutually_exclusive_group()
    start.add_argument("--since", type=since_arg, metavar="ISO8601",
                       help="entries made at or after this time (no zone: UTC)")
    start.add_argument("--after", type=int, metavar="SEQ",
                       help="entries after this one: the previous export's head")
    ae.add_argument("--output", help="write here (default: stdout)")

