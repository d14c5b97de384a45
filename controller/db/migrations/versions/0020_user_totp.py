"""user TOTP: a sealed seed, a pending one being enrolled, and the last step accepted

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        # an existing admin gets its seed at the controller's next start (bootstrap)
        batch.add_column(sa.Column("totp_seed", sa.String(512), nullable=True))
        batch.add_column(sa.Column("totp_pending_seed", sa.String(512), nullable=True))
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("totp_last_step")
        batch.drop_column("totp_pending_seed")
        batch.drop_column("totp_seed")
