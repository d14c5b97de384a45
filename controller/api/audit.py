"""/api/v1/audit-events: list, verify and export the audit trail (any user, for now every
user is an administrator; with roles, only administrators and auditors)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Response
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint
from controller.api.paging import page
from controller.authz import Perm, Region
from controller.db.models import AuditEvent
from controller.errors import Conflict
from controller.services import audit
from controller.services.audit_chain import FORMAT, timestamp

api = ApiBlueprint("audit", "/api/v1/audit-events", "audit")

JSON_LINES = "application/jsonl"


@api.route("GET", "", access=Region(Perm.AUDIT_READ),
           summary="The audit trail, newest first", query=schemas.AuditQuery,
           responses={200: list[schemas.AuditEvent]})
def list_audit_events(query: schemas.AuditQuery) -> Any:
    """Entries of the trail, a page at a time, newest first: follow the Link header's
    cursor, or give `before` the last sequence number of the page before."""
    stmt = select(AuditEvent)
    if query.actor:
        stmt = stmt.where(AuditEvent.actor == query.actor)
    if query.action:
        stmt = stmt.where(AuditEvent.action == query.action)
    if query.target:
        stmt = stmt.where(AuditEvent.target.startswith(query.target, autoescape=True)
                          if query.target.endswith("/") else AuditEvent.target == query.target)
    if query.project:
        stmt = stmt.where(AuditEvent.project == query.project)
    if query.since is not None:
        stmt = stmt.where(AuditEvent.at >= query.since)
    if query.until is not None:
        stmt = stmt.where(AuditEvent.at < query.until)
    if query.before is not None:
        stmt = stmt.where(AuditEvent.seq < query.before)
    return page(db(), stmt, AuditEvent.seq, AuditEvent.seq, query.limit, query.cursor,
                newest_first=True, key_type=int).map(schemas.AuditEvent.model_validate)


@api.route("GET", "/verify", access=Region(Perm.AUDIT_READ),
           summary="Check the whole chain: every entry against its hash, "
           "the one before it and the chain's head", responses={200: schemas.AuditVerification})
def verify_audit_chain() -> Any:
    verifier, head = audit.verify(db())
    return schemas.AuditVerification(
        ok=verifier.ok, entries=verifier.count,
        head_seq=head[0] if head else None, head_hash=head[1] if head else None,
        breaks=verifier.breaks,
        findings=[schemas.AuditFinding.model_validate(f) for f in verifier.findings])


@api.route("GET", "/export", access=Region(Perm.AUDIT_READ),
           summary="The trail as JSON lines for a SIEM, between an anchor "
           "line and the chain's head, so the export verifies on its own",
           query=schemas.AuditExportQuery, responses={200: "JSON lines (docs/audit.md)"})
def export_audit_trail(query: schemas.AuditExportQuery) -> Any:
    reads = region().reads
    with reads() as session:
        try:
            head = audit.head(session)
        except LookupError as e:
            raise Conflict(f"{e}: the trail was tampered with (vauban audit verify)") from e
        start = 1
        if query.after is not None:
            start = min(query.after, head[0]) + 1
        elif query.since is not None:
            found = audit.first_since(session, query.since)
            # nothing since then, up to the head: an export of no entries, head to head
            start = head[0] + 1 if found is None else min(found, head[0] + 1)
        anchor = audit.anchor_before(session, start)
    return Response(_lines(reads, anchor, head, query.since), mimetype=JSON_LINES)


def _lines(reads: sessionmaker[Session], anchor: tuple[int, str], head: tuple[int, str],
           since: datetime | None) -> Iterator[str]:
    """The export: an anchor line, the entries after it up to the head, the head line.

    Entries up to a head once read never change (append-only), so batches read one after
    another give one consistent export however long it takes."""
    yield _line({"type": "anchor", "format": FORMAT, "seq": anchor[0], "hash": anchor[1],
                 "since": timestamp(since) if since else None})
    with reads() as session:
        for e in audit.entries(session, anchor[0], upto=head[0]):
            entry = audit.as_dict(e)
            entry["at"] = timestamp(entry["at"])
            yield _line({"type": "entry", **entry})
    yield _line({"type": "head", "seq": head[0], "hash": head[1],
                 "exported_at": timestamp(datetime.now(UTC))})


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
