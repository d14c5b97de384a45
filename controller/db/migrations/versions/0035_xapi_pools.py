"""XCP-ng pools: how the controller reaches each enrolled pool (sealed credentials, pinned
member certificates), join tokens bound to a node made beforehand, the XAPI uuid of a
pool's VM, and the pool network a provider network maps to

Revision ID: 0035
Revises: 0034
Create Date: 2026-12-03 07:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0035'
down_revision = '0034'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xapi_pools",
        sa.Column("node_id", sa.String(length=36), sa.ForeignKey("nodes.id"),
                  primary_key=True),
        sa.Column("url", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_sealed", sa.Text(), nullable=False),
        sa.Column("pool_uuid", sa.String(length=36), nullable=False, unique=True),
        sa.Column("pool_name", sa.String(length=255), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        sa.Column("sr_uuid", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("join_tokens") as batch:
        batch.add_column(sa.Column("node_id", sa.String(length=36), nullable=True))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("hypervisor_uuid", sa.String(length=36), nullable=True))
    with op.batch_alter_table("networks") as batch:
        batch.add_column(sa.Column("xapi_network", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("networks") as batch:
        batch.drop_column("xapi_network")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("hypervisor_uuid")
    with op.batch_alter_table("join_tokens") as batch:
        batch.drop_column("node_id")
    op.drop_table("xapi_pools")
