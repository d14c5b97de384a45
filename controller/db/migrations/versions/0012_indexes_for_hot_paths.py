"""indexes for the per-node hot paths (desired state, status ingest, operations)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 07:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# (table, column): every lookup of a node's or an instance's rows used to scan its table
INDEXES = [
    ("instances", "node_id"),
    ("instances", "image_id"),
    ("gpu_assignments", "instance_id"),
    ("vgpu_assignments", "instance_id"),
    ("volumes", "steward_node_id"),
    ("volumes", "instance_id"),
    ("ports", "network_id"),
    ("ports", "instance_id"),
    ("operations", "target_id"),
    ("operations", "node_id"),
    ("operations", "created_at"),
    ("image_tombstones", "deleted_at"),
]


def upgrade() -> None:
    for table, column in INDEXES:
        op.create_index(f"ix_{table}_{column}", table, [column], unique=False)


def downgrade() -> None:
    for table, column in reversed(INDEXES):
        op.drop_index(f"ix_{table}_{column}", table_name=table)
