"""instances: how the node carries out the latest power action (reboot, reset, force off)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01 23:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        # every earlier power action was a plain start or stop
        batch.add_column(sa.Column("power_mode", sa.String(16), nullable=False,
                                   server_default="normal"))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("power_mode")
