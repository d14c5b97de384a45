"""instances: the default user's SSH keys and name, given to cloud-init; what the guest
agent last said; the virtual hardware (firmware, Secure Boot, machine type, disk bus).
images: the firmware they boot with, and whether they are signed for Secure Boot

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
        batch.add_column(sa.Column("firmware", sa.String(8), nullable=False,
                                   server_default="bios"))
        batch.add_column(sa.Column("secure_boot", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("machine", sa.String(8), nullable=False,
                                   server_default="i440fx"))
        batch.add_column(sa.Column("disk_bus", sa.String(16), nullable=False,
                                   server_default="virtio-blk"))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("firmware", sa.String(16), nullable=False,
                                   server_default="bios"))
        batch.add_column(sa.Column("secure_boot", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("secure_boot")
        batch.drop_column("firmware")
    with op.batch_alter_table("instances") as batch:
        for column in ("disk_bus", "machine", "secure_boot", "firmware"):
            batch.drop_column(column)
        batch.drop_column("observed_guest")
        batch.drop_column("default_user")
        batch.drop_column("ssh_keys")
