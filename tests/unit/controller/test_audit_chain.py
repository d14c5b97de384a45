"""The audit chain's canonical form, its hashes, and what the verifier says of each break."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from controller.services.audit_chain import (
    FORMAT,
    GENESIS,
    ChainVerifier,
    canonical,
    chain_hash,
    plain,
    timestamp,
    verify_export,
)

AT = datetime(2026, 12, 1, 8, 30, 5, 120, tzinfo=UTC)


def _entry(seq: int, **over: Any) -> dict[str, Any]:
    e = {"seq": seq, "at": AT + timedelta(seconds=seq), "actor": "admin", "token_id": "t-1",
         "source": "192.0.2.10", "action": "instance.create", "target": f"instance/{seq}",
         "project": None, "admin_in_project": None, "outcome": "accepted",
         "detail": {"name": f"vm-{seq}"}}
    e.update(over)
    return e


def _chain(n: int) -> list[dict[str, Any]]:
    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        e = _entry(seq, prev_hash=prev)
        e["hash"] = prev = chain_hash(prev, e)
        out.append(e)
    return out


def _verify(entries: list[dict[str, Any]], head: tuple[int, str]) -> ChainVerifier:
    v = ChainVerifier()
    for e in entries:
        v.feed(e)
    v.finish(*head)
    return v


def test_timestamps_have_one_form_whatever_the_zone() -> None:
    assert timestamp(AT) == "2026-12-01T08:30:05.000120Z"
    paris = AT.astimezone(timezone(timedelta(hours=1)))
    assert timestamp(paris) == timestamp(AT) == timestamp(AT.replace(tzinfo=None))


def test_canonical_form_is_sorted_compact_ascii() -> None:
    e = _entry(7, actor="zoé", detail={"b": 1, "a": [1.5, None, True]})
    text = canonical(e).decode("ascii")
    assert text == (
        '{"action":"instance.create","actor":"zo\\u00e9","admin_in_project":null,'
        '"at":"2026-12-01T08:30:12.000120Z","detail":{"a":[1.5,null,true],"b":1},'
        '"outcome":"accepted","project":null,"seq":7,"source":"192.0.2.10",'
        '"target":"instance/7","token_id":"t-1"}')
    # fields outside the hashed ones (the link, the hash, an export's "type") do not count
    assert canonical({**e, "hash": "x", "prev_hash": "y", "type": "entry"}) == canonical(e)
    # key order of the entry and of its detail does not matter
    assert canonical(dict(reversed(list(e.items())))) == canonical(e)


def test_plain_keeps_what_json_carries_and_names_the_rest() -> None:
    assert plain({1: (2, 3), "f": float("nan"), "g": float("inf"), "t": AT, "x": 0.1}) == {
        "1": [2, 3], "f": "nan", "g": "inf", "t": "2026-12-01T08:30:05.000120Z", "x": 0.1}
    detail = plain({"size": 10**19, "ok": False, "ratio": 1 / 3})
    assert json.loads(json.dumps(detail)) == detail  # reads back as it was hashed


def test_hash_is_sha256_of_previous_hash_bytes_and_canonical_json() -> None:
    e = _entry(1)
    assert chain_hash(GENESIS, e) == hashlib.sha256(bytes(32) + canonical(e)).hexdigest()
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        chain_hash("abc", e)


def test_an_intact_chain_verifies() -> None:
    chain = _chain(5)
    v = _verify(chain, (5, chain[-1]["hash"]))
    assert v.ok and v.count == 5 and v.findings == []


def test_an_edited_entry_is_named() -> None:
    chain = _chain(5)
    chain[2]["actor"] = "mallory"
    v = _verify(chain, (5, chain[-1]["hash"]))
    assert [(f.seq, f.kind) for f in v.findings] == [(3, "edited")]
    assert v.findings[0].message == "entry 3 was edited: its fields no longer give its hash"


def test_removed_entries_are_named_in_the_middle_and_at_the_end() -> None:
    chain = _chain(6)
    v = _verify(chain[:2] + chain[4:], (6, chain[-1]["hash"]))
    assert [(f.seq, f.kind, f.message) for f in v.findings] == [
        (3, "removed", "entries 3 to 4 are missing (removed)")]
    v = _verify(chain[:5], (6, chain[-1]["hash"]))
    assert [(f.seq, f.kind) for f in v.findings] == [(6, "removed")]
    assert "entry 6 is missing at the end" in v.findings[0].message


def test_an_entry_beyond_the_head_is_inserted() -> None:
    chain = _chain(4)
    v = _verify(chain, (3, chain[2]["hash"]))
    assert [(f.seq, f.kind) for f in v.findings] == [(4, "beyond-head")]


def test_a_forged_entry_that_hashes_right_breaks_the_link_after_it() -> None:
    chain = _chain(4)
    forged = _entry(3, actor="mallory", prev_hash=chain[1]["hash"])
    forged["hash"] = chain_hash(chain[1]["hash"], forged)
    v = _verify([*chain[:2], forged, chain[3]], (4, chain[3]["hash"]))
    assert [(f.seq, f.kind) for f in v.findings] == [(4, "inserted-or-reordered")]
    assert "entry 4 does not follow entry 3" in v.findings[0].message


def test_reordered_entries_are_named() -> None:
    chain = _chain(5)
    swapped = [*chain[:2], {**chain[3], "seq": 3}, {**chain[2], "seq": 4}, chain[4]]
    v = _verify(swapped, (5, chain[-1]["hash"]))
    assert {f.seq for f in v.findings} == {3, 4, 5}
    assert {f.kind for f in v.findings if f.seq == 5} == {"inserted-or-reordered"}
    # lines of a file out of order
    v = _verify([chain[0], chain[2], chain[1], chain[3], chain[4]], (5, chain[-1]["hash"]))
    assert ("out-of-order", 2) in {(f.kind, f.seq) for f in v.findings}


def test_a_changed_head_is_named() -> None:
    chain = _chain(3)
    v = _verify(chain, (3, "f" * 64))
    assert [(f.seq, f.kind) for f in v.findings] == [(3, "head")]


def _export(entries: list[dict[str, Any]], anchor: tuple[int, str], head: tuple[int, str]
            ) -> list[str]:
    lines = [json.dumps({"type": "anchor", "format": FORMAT, "seq": anchor[0],
                         "hash": anchor[1], "since": None})]
    lines += [json.dumps({"type": "entry", **e, "at": timestamp(e["at"])}) for e in entries]
    lines.append(json.dumps({"type": "head", "seq": head[0], "hash": head[1]}))
    return [line + "\n" for line in lines]


def test_an_export_verifies_from_its_anchor_to_its_head() -> None:
    chain = _chain(6)
    v, head = verify_export(_export(chain[3:], (3, chain[2]["hash"]), (6, chain[5]["hash"])))
    assert v.ok and v.count == 3 and head is not None and head["seq"] == 6
    # an export with no entry: anchor and head are the same entry
    v, _ = verify_export(_export([], (6, chain[5]["hash"]), (6, chain[5]["hash"])))
    assert v.ok and v.count == 0


def test_a_broken_export_is_named() -> None:
    chain = _chain(6)
    lines = _export(chain[3:], (3, chain[2]["hash"]), (6, chain[5]["hash"]))
    edited = lines[:2] + [lines[2].replace('"admin"', '"mallory"')] + lines[3:]
    v, _ = verify_export(edited)
    assert [(f.seq, f.kind) for f in v.findings] == [(5, "edited")]
    v, _ = verify_export(lines[:1] + lines[2:])  # entry 4 cut out
    assert [(f.seq, f.kind) for f in v.findings] == [(4, "removed")]
    v, head = verify_export(lines[:-1])  # head line cut off
    assert head is None and [f.kind for f in v.findings] == ["removed"]
    assert "without its head line" in v.findings[0].message
    # anchored elsewhere: the first entry does not link to the anchor
    v, _ = verify_export(_export(chain[3:], (3, chain[1]["hash"]), (6, chain[5]["hash"])))
    assert [(f.seq, f.kind) for f in v.findings] == [(4, "inserted-or-reordered")]


def test_text_that_is_no_export_is_refused() -> None:
    with pytest.raises(ValueError, match="line 1 is not the anchor line"):
        verify_export(['{"type": "entry"}\n'])
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        verify_export([_export([], (0, GENESIS), (0, GENESIS))[0], "{nope\n"])
    with pytest.raises(ValueError, match="the export is empty"):
        verify_export([])
