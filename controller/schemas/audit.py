"""The audit trail: its entries, exports and verification."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from agent.protocol import UtcDatetime
from controller.schemas.base import Input, Output, PageQuery, UtcInput


class AuditQuery(PageQuery):
    """Which entries to list, newest first; every filter given must hold."""

    actor: str | None = Field(default=None, max_length=63)
    action: str | None = Field(default=None, max_length=63, examples=["instance.create"])
    target: str | None = Field(
        default=None, max_length=255, examples=["project/5d0c…", "project/"],
        description="The object acted on; ending with '/', every object of that kind")
    project: str | None = Field(default=None, max_length=63, description="Project acted in")
    since: UtcInput | None = Field(default=None, examples=["2026-12-01T00:00:00Z"],
                                        description="Entries made at or after this time")
    until: UtcInput | None = Field(default=None, examples=["2026-12-02T00:00:00Z"],
                                        description="Entries made before this time")
    before: int | None = Field(
        default=None, ge=1, lt=2**63, examples=[4711],
        description="Entries before this sequence number: the next page after one that "
        "ended with it")


class AuditEvent(Output):
    """One entry of the audit trail: who, with which token, from where, did what to which
    object in which project, and how it ended; `hash` chains it to the entry before."""

    seq: int = Field(description="Its place in the chain: 1, 2, 3... without gaps")
    at: UtcDatetime
    actor: str = Field(examples=["admin", "node:n1", "controller"])
    token_id: str | None = Field(description="Id of the API token used (never its secret)")
    source: str | None = Field(description="Address the request came from",
                               examples=["192.0.2.10"])
    action: str = Field(examples=["instance.create"])
    target: str = Field(examples=["instance/5d0c…"])
    project: str | None = Field(description="Project acted in (none before projects exist)")
    admin_in_project: bool | None = Field(
        description="An administrator acted inside a customer's project")
    outcome: str = Field(examples=["accepted", "succeeded", "refused", "failed"])
    detail: dict[str, Any]
    prev_hash: str = Field(description="Hash of the entry before (64 zeros before entry 1)")
    hash: str = Field(description="SHA-256 of prev_hash's bytes and the entry's canonical "
                      "JSON (docs/audit.md)")


class AuditExportQuery(Input):
    since: UtcInput | None = Field(
        default=None, description="First entry made at or after this time (ISO 8601 with a "
        "zone); all entries when absent", examples=["2026-12-01T00:00:00Z"])
    after: int | None = Field(
        default=None, ge=0, description="Entries after this sequence number: the head of the "
        "previous export, so that consecutive exports link up", examples=[97])

    @model_validator(mode="after")
    def _one_start(self) -> AuditExportQuery:
        if self.since is not None and self.after is not None:
            raise ValueError("give 'since' or 'after', not both")
        return self


class AuditFinding(Output):
    """One break of the chain, at the entry where it shows."""

    seq: int
    kind: Literal["edited", "removed", "inserted-or-reordered", "out-of-order",
                  "beyond-head", "head"]
    message: str = Field(examples=["entry 12 was edited: its fields no longer give its hash"])


class AuditVerification(Output):
    """The whole chain checked entry by entry against its hashes and its head."""

    ok: bool
    entries: int = Field(description="Entries checked")
    head_seq: int | None = Field(description="The chain head's entry (None if its row is gone)")
    head_hash: str | None
    breaks: int = Field(description="Breaks found; `findings` lists the first 50")
    findings: list[AuditFinding]
