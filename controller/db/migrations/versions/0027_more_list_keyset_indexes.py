"""indexes on the keyset orders of the lists paged since: (created_at, id) of role
bindings and join tokens, (user_id, created_at, id) of API tokens

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-02 11:20:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_role_bindings_created_at_id", "role_bindings", ["created_at", "id"]),
    ("ix_join_tokens_created_at_id", "join_tokens", ["created_at", "id"]),
    ("ix_api_tokens_user_id_created_at_id", "api_tokens", ["user_id", "created_at", "id"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
