"""ports: whether the guest is told to configure the NIC's IPv4 by DHCP

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-02 11:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ports") as batch:
        # every earlier NIC was given its addresses statically by its seed
        batch.add_column(sa.Column("dhcp", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("ports") as batch:
        batch.drop_column("dhcp")
