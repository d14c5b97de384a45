"""nodes: the address other nodes migrate to (an IP SAN of the node's hypervisor
certificate) and that certificate's serial

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-02 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0033'
# 0029 is taken by the migration stage on another branch: point this at it when both land
down_revision = '0032'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("migration_address", sa.String(length=45), nullable=True))
        batch.add_column(sa.Column("hypervisor_cert_serial", sa.String(length=64),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("hypervisor_cert_serial")
        batch.drop_column("migration_address")
