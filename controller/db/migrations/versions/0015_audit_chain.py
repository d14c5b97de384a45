"""audit chain: sequence numbers, hashes, token, source and project of each entry; the
chain's head; existing entries chained in their id order; triggers refusing UPDATE and DELETE

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# the hash chain's format 1 is fixed for good (older entries must verify forever), so the
# migration may use the controller's own implementation of it
from controller.services.audit_chain import GENESIS, chain_hash, plain

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

BATCH = 1000
REFUSAL = "audit_events is append-only"

_old = sa.table(
    "audit_events",
    sa.column("id", sa.Integer()), sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor", sa.String()), sa.column("action", sa.String()),
    sa.column("target", sa.String()), sa.column("outcome", sa.String()),
    sa.column("detail", sa.JSON()),
)


def _new_table(name: str) -> sa.Table:
    return op.create_table(
        name,
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(63), nullable=False),
        sa.Column("token_id", sa.String(36), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("action", sa.String(63), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("project", sa.String(63), nullable=True),
        sa.Column("admin_in_project", sa.Boolean(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


def upgrade() -> None:
    conn = op.get_bind()
    chained = _new_table("audit_events_chained")
    seq, prev = 0, GENESIS
    after = -1
    while True:  # in batches: a long-lived region has a long trail
        rows = conn.execute(sa.select(_old).where(_old.c.id > after)
                            .order_by(_old.c.id).limit(BATCH)).mappings().all()
        if not rows:
            break
        out = []
        for r in rows:
            seq += 1
            entry = {"seq": seq, "at": r["at"], "actor": r["actor"], "token_id": None,
                     "source": None, "action": r["action"], "target": r["target"],
                     "project": None, "admin_in_project": None, "outcome": r["outcome"],
                     "detail": plain(r["detail"] or {}), "prev_hash": prev}
            entry["hash"] = prev = chain_hash(prev, entry)
            out.append(entry)
        conn.execute(sa.insert(chained), out)
        after = rows[-1]["id"]
    op.drop_table("audit_events")
    op.rename_table("audit_events_chained", "audit_events")
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": seq, "hash": prev}])
    _refuse_changes(conn.dialect.name)


def _refuse_changes(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute(f"""
            CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{REFUSAL}: % refused', TG_OP;
            END $$""")
        op.execute("""
            CREATE TRIGGER audit_events_append_only
            BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
            FOR EACH STATEMENT EXECUTE PROCEDURE audit_events_append_only()""")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""
                CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events
                BEGIN SELECT RAISE(ABORT, '{REFUSAL}: {verb} refused'); END""")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
    else:
        op.execute("DROP TRIGGER audit_events_no_update")
        op.execute("DROP TRIGGER audit_events_no_delete")
    op.drop_table("audit_chain_head")
    op.drop_index("ix_audit_events_at", "audit_events")
    op.rename_table("audit_events", "audit_events_chained")
    old = op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(63), nullable=False),
        sa.Column("action", sa.String(63), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    chained = sa.table("audit_events_chained", *(sa.column(c) for c in (
        "seq", "at", "actor", "action", "target", "outcome", "detail")))
    conn.execute(sa.insert(old).from_select(
        ["id", "at", "actor", "action", "target", "outcome", "detail"],
        sa.select(chained.c.seq, chained.c.at, chained.c.actor, chained.c.action,
                  chained.c.target, chained.c.outcome, chained.c.detail)))
    op.drop_table("audit_events_chained")
    if conn.dialect.name == "postgresql":  # ids were given: the serial goes on after them
        op.execute("SELECT setval(pg_get_serial_sequence('audit_events', 'id'), "
                   "COALESCE(MAX(id), 0) + 1, false) FROM audit_events")
