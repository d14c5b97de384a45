"""instances: a live migration in flight (target node, its number, phase, limits); instance
tombstones, so a deleted VM's disks are still removed by a node that was away

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-02 15:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0029'
down_revision = '0028'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("migration_target_node_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("migration_seq", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("migration_phase", sa.String(16), nullable=True))
        batch.add_column(sa.Column("migration_bandwidth_mib_s", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("migration_max_downtime_ms", sa.Integer(), nullable=False,
                                   server_default="300"))
        batch.create_foreign_key("fk_instances_migration_target_node_id_nodes", "nodes",
                                 ["migration_target_node_id"], ["id"])
        batch.create_index("ix_instances_migration_target_node_id",
                           ["migration_target_node_id"])
    op.create_table(
        "instance_tombstones",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(36), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_instance_tombstones_node_id_deleted_at", "instance_tombstones",
                    ["node_id", "deleted_at"])


def downgrade() -> None:
    op.drop_index("ix_instance_tombstones_node_id_deleted_at", "instance_tombstones")
    op.drop_table("instance_tombstones")
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_migration_target_node_id")
        batch.drop_constraint("fk_instances_migration_target_node_id_nodes",
                              type_="foreignkey")
        for column in ("migration_max_downtime_ms", "migration_bandwidth_mib_s",
                       "migration_phase", "migration_seq", "migration_target_node_id"):
            batch.drop_column(column)
