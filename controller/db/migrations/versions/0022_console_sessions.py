"""console sessions: a VM console's single-use ticket (hashed) and the state of its tunnel

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01 23:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("ticket_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("node_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_console_sessions_instance_id", "console_sessions", ["instance_id"])
    op.create_index("ix_console_sessions_node_id", "console_sessions", ["node_id"])
    op.create_index("ix_console_sessions_state", "console_sessions", ["state"])
    op.create_index("ix_console_sessions_created_at", "console_sessions", ["created_at"])


def downgrade() -> None:
    op.drop_table("console_sessions")
