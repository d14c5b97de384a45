"""drop the unused image signature

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 06:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nothing ever set or checked it: a field that looks like a guarantee and is none
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('signature')


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('signature', sa.Text(), nullable=True))
