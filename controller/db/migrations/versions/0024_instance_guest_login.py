"""instances: the default user's SSH keys and name, given to cloud-init; what the guest
agent last said

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-02 07:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("ssh_keys", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("default_user", sa.String(32), nullable=True))
        batch.add_column(sa.Column("observed_guest", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("observed_guest")
        batch.drop_column("default_user")
        batch.drop_column("ssh_keys")
