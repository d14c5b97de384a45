"""browser sessions: a token row's kind ("api" or "session") and a session's CSRF token hash

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 20:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        # every existing row is a bearer token
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="api"))
        batch.add_column(sa.Column("csrf_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM api_tokens WHERE kind = 'session'")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("csrf_sha256")
        batch.drop_column("kind")
