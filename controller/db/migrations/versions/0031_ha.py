"""high availability: VMs marked ha, nodes' BMCs (password sealed), failovers, fenced nodes

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-02 16:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0031'
down_revision = '0030'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("ha", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("fenced_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "node_bmcs",
        sa.Column("node_id", sa.String(36), sa.ForeignKey("nodes.id"), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "failovers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(36), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_failovers_node_id", "failovers", ["node_id"])
    op.create_index("ix_failovers_state", "failovers", ["state"])
    # one open failover per node, whatever several controller processes do at once
    open_ones = sa.text("state IN ('detected', 'powered-off', 'fenced')")
    op.create_index("uq_failovers_open_node", "failovers", ["node_id"], unique=True,
                    sqlite_where=open_ones, postgresql_where=open_ones)


def downgrade() -> None:
    op.drop_index("uq_failovers_open_node", "failovers")
    op.drop_index("ix_failovers_state", "failovers")
    op.drop_index("ix_failovers_node_id", "failovers")
    op.drop_table("failovers")
    op.drop_table("node_bmcs")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("fenced_at")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("ha")
