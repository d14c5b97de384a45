"""The audit trail as a hash chain on each database: appends (also concurrent ones), the
append-only guard, tampering of every kind named by `verify`, exports, and the migration."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.exc import DBAPIError

from controller.db.migrate import migrate
from controller.db.models import ApiToken, AuditChainHead, AuditEvent, as_utc
from controller.region import Region
from controller.services import audit
from controller.services.audit_chain import GENESIS, chain_hash, verify_export
from tests.functional.helpers import Api


def _record(region: Region, n: int, action: str = "test.poke") -> None:
    for i in range(n):
        audit.record_now(region.sessions, "admin", action, f"thing/{i}", "accepted", n=i)


def _chain(region: Region) -> list[AuditEvent]:
    with region.reads() as db:
        return list(db.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def _verify(api: Api) -> dict[str, Any]:
    r = api.get("/api/v1/audit-events/verify")
    assert r.status_code == 200, r.json
    report: dict[str, Any] = r.json  # type: ignore[assignment]
    return report


def _unguarded(engine: Engine, *statements: str) -> None:
    """Run raw SQL on the trail as a database superuser could: the guard dropped first."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
            conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))
        for s in statements:
            conn.execute(text(s))


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def test_entries_name_token_and_source_and_chain_up(api: Api, region: Region) -> None:
    api.post("/api/v1/join-tokens", json={"description": "rack 3"})
    r = api.client.post("/api/v1/tokens", json={"username": "admin", "password": "wrong"})
    assert r.status_code == 401
    with region.reads() as db:
        token_id = db.scalar(select(ApiToken.id))
    first, login, created, refused = _chain(region)
    assert first.action == "security-group.create"  # the default group, made at the start
    assert first.actor == "system" and first.source is None and first.token_id is None
    assert (login.seq, login.action, login.outcome) == (2, "session.login", "succeeded")
    assert login.token_id == token_id and login.target == f"token/{token_id}"
    assert (created.seq, created.action, created.actor) == (3, "join-token.create", "admin")
    assert created.token_id == token_id and created.source == "127.0.0.1"
    assert (refused.seq, refused.outcome, refused.token_id) == (4, "refused", None)
    assert refused.source == "127.0.0.1" and refused.actor == "admin"
    assert first.prev_hash == GENESIS and login.prev_hash == first.hash
    assert created.prev_hash == login.hash
    assert refused.prev_hash == created.hash
    assert (login.project, login.admin_in_project) == (None, None)  # no projects yet
    report = _verify(api)
    assert report == {"ok": True, "entries": 4, "head_seq": 4, "head_hash": refused.hash,
                      "breaks": 0, "findings": []}
    listed = api.get("/api/v1/audit-events?limit=1").json
    assert listed[0]["seq"] == 4 and listed[0]["hash"] == refused.hash  # type: ignore[index]


def test_a_rolled_back_transaction_leaves_no_entry_and_no_gap(region: Region) -> None:
    _record(region, 1)
    with region.sessions() as db:
        db.begin()
        audit.record(db, "admin", "test.undone", "thing/x")
        db.rollback()
        db.commit()  # nothing pending any more: this commit chains nothing
    _record(region, 1)
    assert [(e.seq, e.action) for e in _chain(region)][1:] == [(2, "test.poke"),
                                                              (3, "test.poke")]


def test_concurrent_appends_make_one_gapless_chain(api: Api, region: Region) -> None:
    threads, each = 8, 15
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def append(n: int) -> None:
        try:
            start.wait()
            for i in range(each):
                if i % 5 == 4:  # some transactions roll back: they must leave no gap
                    with region.sessions() as db:
                        db.begin()
                        audit.record(db, f"writer-{n}", "test.undone", f"thing/{i}")
                        db.rollback()
                audit.record_now(region.sessions, f"writer-{n}", "test.append", f"thing/{i}",
                                 "accepted", i=i)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    workers = [threading.Thread(target=append, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    chain = _chain(region)
    total = 2 + threads * each  # the default security group and the test's login first
    assert [e.seq for e in chain] == list(range(1, total + 1))
    assert all(b.prev_hash == a.hash for a, b in zip(chain, chain[1:], strict=False))
    assert "test.undone" not in {e.action for e in chain}
    assert _verify(api)["ok"] and _verify(api)["head_seq"] == total


def test_the_trail_refuses_updates_and_deletes(region: Region) -> None:
    _record(region, 2)
    for statement in ("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1",
                      "DELETE FROM audit_events WHERE seq = 2"):
        with pytest.raises(DBAPIError, match="audit_events is append-only"), \
                region.engine.begin() as conn:
            conn.execute(text(statement))
    assert [e.actor for e in _chain(region)] == ["system", "admin", "admin"]


def _findings(api: Api) -> list[tuple[int, str]]:
    report = _verify(api)
    assert not report["ok"]
    return [(f["seq"], f["kind"]) for f in report["findings"]]


def test_verify_names_an_edited_entry(api: Api, region: Region) -> None:
    _record(region, 5)
    _unguarded(region.engine, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    assert _findings(api) == [(3, "edited")]
    assert "entry 3 was edited" in _verify(api)["findings"][0]["message"]


def test_verify_names_removed_entries(api: Api, region: Region) -> None:
    _record(region, 5)
    _unguarded(region.engine, "DELETE FROM audit_events WHERE seq = 3")
    assert _findings(api) == [(3, "removed")]
    assert _verify(api)["findings"][0]["message"] == "entry 3 is missing (removed)"
    _unguarded(region.engine, "DELETE FROM audit_events WHERE seq = 6")
    assert _findings(api) == [(3, "removed"), (6, "removed")]


def test_verify_names_inserted_entries(api: Api, region: Region) -> None:
    _record(region, 5)
    chain = _chain(region)
    # a forger who knows the format: a well-hashed entry after the head, head left alone
    forged = {"seq": chain[-1].seq + 1, "at": datetime.now(UTC), "actor": "mallory",
              "token_id": None, "source": None, "action": "test.poke", "target": "thing/x",
              "project": None, "admin_in_project": None, "outcome": "accepted", "detail": {},
              "prev_hash": chain[-1].hash}
    forged["hash"] = chain_hash(chain[-1].hash, forged)
    with region.engine.begin() as conn:
        conn.execute(insert(AuditEvent), [forged])
    assert _findings(api) == [(forged["seq"], "beyond-head")]
    # and one in the middle, in place of entry 3, linked to entry 2
    middle = {**forged, "seq": 3, "prev_hash": chain[1].hash}
    middle["hash"] = chain_hash(chain[1].hash, middle)
    _unguarded(region.engine, f"DELETE FROM audit_events WHERE seq IN (3, {forged['seq']})")
    with region.engine.begin() as conn:
        conn.execute(insert(AuditEvent), [middle])
    assert _findings(api) == [(4, "inserted-or-reordered")]


def test_verify_names_reordered_entries(api: Api, region: Region) -> None:
    _record(region, 5)
    _unguarded(region.engine, "UPDATE audit_events SET seq = -3 WHERE seq = 3",
               "UPDATE audit_events SET seq = 3 WHERE seq = 4",
               "UPDATE audit_events SET seq = 4 WHERE seq = -3")
    findings = _findings(api)
    assert {seq for seq, _ in findings} == {3, 4, 5}
    assert (3, "inserted-or-reordered") in findings and (4, "inserted-or-reordered") in findings


def test_verify_names_a_changed_or_missing_head(api: Api, region: Region) -> None:
    _record(region, 2)
    with region.engine.begin() as conn:
        conn.execute(text("UPDATE audit_chain_head SET hash = :h"), {"h": "f" * 64})
    assert _findings(api) == [(4, "head")]
    with region.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_chain_head"))
    report = _verify(api)
    assert not report["ok"] and report["head_seq"] is None
    assert "head row is missing" in report["findings"][0]["message"]


def test_an_export_since_a_time_verifies_on_its_own(api: Api, region: Region) -> None:
    _record(region, 3)
    chain = _chain(region)  # the default security group, the login, then 3 entries
    # in another zone than the stored UTC: the same instant
    since = as_utc(chain[2].at).astimezone(timezone(timedelta(hours=-5)))
    r = api.get("/api/v1/audit-events/export", query_string={"since": since.isoformat()})
    assert r.status_code == 200 and r.mimetype == "application/jsonl"
    lines = r.get_data(as_text=True).splitlines(keepends=True)
    assert len(lines) == 1 + 3 + 1
    verifier, head = verify_export(lines)
    assert verifier.ok and verifier.count == 3
    assert (verifier.start_seq, verifier.start_hash) == (2, chain[1].hash)
    assert head is not None and (head["seq"], head["hash"]) == (5, chain[-1].hash)
    whole = api.get("/api/v1/audit-events/export").get_data(as_text=True).splitlines()
    assert verify_export(whole)[0].count == 5
    later = api.get("/api/v1/audit-events/export",
                    query_string={"since": "2999-01-01T00:00:00Z"}).get_data(as_text=True)
    verifier, head = verify_export(later.splitlines())
    assert verifier.ok and verifier.count == 0 and head is not None and head["seq"] == 5


def test_consecutive_exports_link_up(api: Api, region: Region) -> None:
    first = api.get("/api/v1/audit-events/export").get_data(as_text=True).splitlines()
    _, head = verify_export(first)
    assert head is not None
    _record(region, 2)
    r = api.get("/api/v1/audit-events/export", query_string={"after": head["seq"]})
    verifier, _ = verify_export(r.get_data(as_text=True).splitlines())
    assert verifier.ok and verifier.count == 2
    assert (verifier.start_seq, verifier.start_hash) == (head["seq"], head["hash"])


def test_an_export_needs_a_time_with_a_zone_and_one_start(api: Api) -> None:
    r = api.get("/api/v1/audit-events/export", query_string={"since": "2026-12-01T00:00:00"})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert "since" in r.json["detail"]  # type: ignore[index]
    r = api.get("/api/v1/audit-events/export",
                query_string={"since": "2026-12-01T00:00:00Z", "after": "3"})
    assert r.status_code == 422 and "not both" in r.json["detail"]  # type: ignore[index]


def test_the_migration_chains_the_entries_it_finds(region: Region) -> None:
    """Down to 0014 (entries as they were), some more old-style entries, and up again."""
    _record(region, 2)

    migrate(region.engine, "0014", down=True)
    with region.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO audit_events (at, actor, action, target, outcome, detail) VALUES "
            "(:at, 'admin', 'old.one', 'thing/old', 'accepted', :detail)"),
            [{"at": datetime(2026, 1, 1, tzinfo=UTC), "detail": '{"b": 2, "a": 0.5}'},
             {"at": datetime(2026, 1, 2, tzinfo=UTC), "detail": "{}"}])
    migrate(region.engine, "head")
    chain = _chain(region)
    assert [(e.seq, e.action) for e in chain][1:] == [
        (2, "test.poke"), (3, "test.poke"), (4, "old.one"), (5, "old.one")]
    assert chain[3].detail == {"a": 0.5, "b": 2} and chain[3].token_id is None
    with region.reads() as db:
        verifier, head = audit.verify(db)
        assert verifier.ok and head == (5, chain[-1].hash)
        assert db.scalar(select(func.count()).select_from(AuditChainHead)) == 1
    _record(region, 1)  # appends go on from the migrated head
    assert [e.seq for e in _chain(region)][-1] == 6
