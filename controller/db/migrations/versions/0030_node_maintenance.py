"""nodes: maintenance (takes no new VMs; its VMs are moved away); instances: whether the
VM's root disk was made (a VM moved or restarted elsewhere is defined on it); operations:
how one stands, in words

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-02 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0030'
down_revision = '0029'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("maintenance", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("disk_made", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("message", sa.Text(), nullable=True))
    # a VM its node ever reported running or stopped has its disk
    op.execute("UPDATE instances SET disk_made = true "
               "WHERE observed_state IN ('running', 'stopped')")


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("message")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("disk_made")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("maintenance")
