"""indexes on the lists' keyset orders: (name, id) of named objects, (created_at, id) of ports

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-02 07:45:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_instances_name_id", "instances", ["name", "id"]),
    ("ix_images_name_id", "images", ["name", "id"]),
    ("ix_volumes_name_id", "volumes", ["name", "id"]),
    ("ix_networks_name_id", "networks", ["name", "id"]),
    ("ix_security_groups_name_id", "security_groups", ["name", "id"]),
    ("ix_ports_created_at_id", "ports", ["created_at", "id"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
