"""nodes: when the node last fenced itself (its agent's report) and which of its fences
the controller cleared (sent back in its desired state)

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-02 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0032'
down_revision = '0031'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("self_fenced_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("fence_cleared_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("fence_cleared_at")
        batch.drop_column("self_fenced_at")
