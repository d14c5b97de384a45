"""volumes: which of the snapshots the steward reports were taken with the guest's
filesystems frozen (filesystem-consistent; the others are crash-consistent)

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-02 11:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("volumes") as batch:
        batch.add_column(sa.Column("observed_quiesced_snapshots", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("volumes") as batch:
        batch.drop_column("observed_quiesced_snapshots")
