"""events: the durable log behind the event stream (/api/v1/events), and each node's
state as last told in an event

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01 23:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=True),
        sa.Column("object_kind", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(36), nullable=False),
        sa.Column("object_name", sa.String(255), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
    )
    op.create_index("ix_events_at", "events", ["at"], unique=False)
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("announced_state", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("announced_state")
    op.drop_index("ix_events_at", table_name="events")
    op.drop_table("events")
