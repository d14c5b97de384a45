"""volumes: which of the snapshots the steward reports were taken with the guest's
filesystems frozen (filesystem-consistent; the others are crash-consistent)

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-02 11:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("volumes") as batch:
        batch.add_column(sa.Column("observed_quiesced_snapshots", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("volumes") as batch:
        batch.drop_column("observed_quiesced_snapshots")
