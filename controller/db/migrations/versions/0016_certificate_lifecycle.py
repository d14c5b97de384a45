"""certificate lifecycle: a node's previous serial and certificate expiry; revoked join tokens

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("previous_cert_serial", sa.String(64), nullable=True))
        # unknown for nodes joined before: their agent's first renewal sets it
        batch.add_column(sa.Column("cert_expires_at", sa.DateTime(timezone=True),
                                   nullable=True))
    with op.batch_alter_table("join_tokens") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("join_tokens") as batch:
        batch.drop_column("revoked_at")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("cert_expires_at")
        batch.drop_column("previous_cert_serial")
