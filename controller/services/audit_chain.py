"""The audit trail's hash chain: canonical form, hashes, and a verifier that says what broke.

Pure: no database, no Flask. The controller chains entries with it, the API and the CLI
verify with it, and so can anyone holding an export (docs/audit.md gives the form).

Format 1: an entry's hash is SHA-256 over the 32 bytes of the previous entry's hash
(`GENESIS` before the first) followed by the canonical JSON of its `FIELDS`: keys sorted,
no spaces, ASCII only (other characters as \\u escapes), timestamps as
`YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC, no floats that JSON cannot carry (NaN, infinities).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64  # the "previous hash" of entry 1
FORMAT = "vauban-audit/1"

# the fields an entry's hash covers; `prev_hash` enters as the chain link, `hash` is the result
FIELDS = ("seq", "at", "actor", "token_id", "source", "action", "target", "project",
          "admin_in_project", "outcome", "detail")

MAX_FINDINGS = 50  # a verification reports this many breaks at most, then only counts


def timestamp(t: datetime) -> str:
    """`t` in the one form hashed and exported: UTC, microseconds, `Z` (naive means UTC)."""
    aware = t if t.tzinfo else t.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plain(value: Any) -> Any:
    """`value` as JSON carries it both ways unchanged: string keys, lists for tuples, and
    a string for anything else JSON has no form for (NaN and infinities included).

    Applied to an entry's detail before it is stored, so that the stored JSON reads back
    to exactly what was hashed."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return timestamp(value)
    return str(value)


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The canonical JSON of `entry`'s hashed fields (KeyError if one is missing)."""
    fields = {name: entry[name] for name in FIELDS}
    if isinstance(fields["at"], datetime):
        fields["at"] = timestamp(fields["at"])
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def chain_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the previous hash's bytes followed by `entry`'s canonical JSON.

    ValueError if `prev_hash` is not 64 hexadecimal digits."""
    if len(prev_hash) != 64:
        raise ValueError(f"a previous hash has 64 hexadecimal digits, not {prev_hash!r}")
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(entry)).hexdigest()


@dataclass(frozen=True)
class Finding:
    """One break of the chain: the entry it shows at (`seq`), what kind, and in words."""

    seq: int
    kind: str  # edited | removed | inserted-or-reordered | out-of-order | beyond-head | head
    message: str


@dataclass
class ChainVerifier:
    """Walks entries in order and notes every break, entry by entry (constant memory).

    Starts after the anchor (`start_seq`, `start_hash`): entry `start_seq + 1` must link to
    `start_hash`. A whole log starts at (0, GENESIS). Call `feed` for each entry in the
    order read, then `finish` with the chain's head.
    """

    start_seq: int = 0
    start_hash: str = GENESIS
    findings: list[Finding] = field(default_factory=list)
    breaks: int = 0  # findings, including those beyond MAX_FINDINGS
    count: int = 0  # entries fed

    def __post_init__(self) -> None:
        self.last_seq = self.start_seq
        self.last_hash = self.start_hash

    def note(self, seq: int, kind: str, message: str) -> None:
        """Count a break; keep its finding while fewer than MAX_FINDINGS are kept."""
        self.breaks += 1
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(Finding(seq, kind, message))

    def feed(self, entry: Mapping[str, Any]) -> None:
        """Check one entry against its own hash and against the entry before it."""
        seq = int(entry["seq"])
        self.count += 1
        gap = False
        if seq <= self.last_seq:
            self.note(seq, "out-of-order", f"entry {seq} comes after entry {self.last_seq}: "
                       "entries were reordered or repeated")
        elif seq > self.last_seq + 1:
            gap = True
            missing = (f"entry {self.last_seq + 1} is" if seq == self.last_seq + 2
                       else f"entries {self.last_seq + 1} to {seq - 1} are")
            self.note(self.last_seq + 1, "removed", f"{missing} missing (removed)")
        try:
            own = chain_hash(str(entry["prev_hash"]), entry)
        except (KeyError, TypeError, ValueError) as e:
            self.note(seq, "edited", f"entry {seq} cannot be hashed ({e}): edited")
            own = None
        if own is not None and own != entry["hash"]:
            self.note(seq, "edited", f"entry {seq} was edited: its fields no longer give "
                       "its hash")
        if not gap and seq > self.last_seq and entry["prev_hash"] != self.last_hash:
            self.note(seq, "inserted-or-reordered",
                       f"entry {seq} does not follow entry {seq - 1} (its previous hash is "
                       f"not that entry's hash): an entry was inserted or entries reordered")
        self.last_seq = max(self.last_seq, seq)
        self.last_hash = str(entry["hash"])

    def finish(self, head_seq: int, head_hash: str) -> None:
        """Check that the walk ended on the chain's head: nothing cut off, nothing added."""
        if head_seq > self.last_seq:
            missing = (f"entry {head_seq} is" if head_seq == self.last_seq + 1
                       else f"entries {self.last_seq + 1} to {head_seq} are")
            self.note(self.last_seq + 1, "removed",
                       f"{missing} missing at the end (removed; the chain's head is "
                       f"entry {head_seq})")
        elif head_seq < self.last_seq:
            self.note(head_seq + 1, "beyond-head",
                       f"entries {head_seq + 1} to {self.last_seq} lie beyond the chain's "
                       f"head (entry {head_seq}): inserted")
        elif head_hash != self.last_hash:
            self.note(head_seq, "head", f"entry {head_seq}'s hash is not the chain head's: "
                       "the entry or the head was changed")

    @property
    def ok(self) -> bool:
        return self.breaks == 0


def verify_export(lines: Iterable[str]) -> tuple[ChainVerifier, Mapping[str, Any] | None]:
    """Verify an export on its own: its entries from its anchor line to its head line.

    Returns the verifier and the head line (None if the export has none: cut short, a
    break too). ValueError, naming the line, if the text is not an export at all."""
    verifier: ChainVerifier | None = None
    head: Mapping[str, Any] | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"line {number} is not JSON: {e}") from e
        kind = record.get("type") if isinstance(record, dict) else None
        if verifier is None:
            if kind != "anchor" or record.get("format") != FORMAT:
                raise ValueError(f"line {number} is not the anchor line of a {FORMAT} export")
            verifier = ChainVerifier(start_seq=int(record["seq"]), start_hash=record["hash"])
        elif head is not None:
            raise ValueError(f"line {number} comes after the head line")
        elif kind == "entry":
            try:
                verifier.feed(record)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"line {number} is an entry without a valid {e}") from e
        elif kind == "head":
            head = record
        else:
            raise ValueError(f"line {number} is neither an entry nor the head line")
    if verifier is None:
        raise ValueError("the export is empty")
    if head is None:
        verifier.note(verifier.last_seq + 1, "removed",
                      f"the export ends after entry {verifier.last_seq} without its head "
                      "line: it was cut short")
    else:
        verifier.finish(int(head["seq"]), str(head["hash"]))
    return verifier, head
