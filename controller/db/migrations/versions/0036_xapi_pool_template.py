"""The VM template an XCP-ng pool's VMs are cloned from (None: "Other install media")

Revision ID: 0036
Revises: 0035
Create Date: 2026-12-03 11:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0036'
down_revision = '0035'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("xapi_pools") as batch:
        batch.add_column(sa.Column("template", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("xapi_pools") as batch:
        batch.drop_column("template")
