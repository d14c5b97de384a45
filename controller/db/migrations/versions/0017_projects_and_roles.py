"""projects and roles: projects, role bindings, every tenant resource in a project, named
and scoped API tokens

An existing region keeps working as before: every user becomes a region-admin, and every
VM, volume, tenant network, security group, port and operation on them moves to the
project `default`; images stay shared with every project (public), and provider networks
stay shared. Names are unique within a project now, not in the whole region.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 10:00:00.000000
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

# tables whose names become unique per project, and whether a row may have no project
NAMED = {"instances": False, "volumes": False, "security_groups": False, "networks": True,
         "images": True}
# SQLite's reflected unique constraints have no names: the convention gives them one
CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("created_by", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "role_bindings",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False,
                  index=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), nullable=True,
                  index=True),
        sa.Column("created_by", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_id", "role", "project_id",
                            name="uq_role_bindings_user_role_project"),
    )
    conn = op.get_bind()
    now = datetime.now(UTC)
    default = str(uuid.uuid4())
    conn.execute(sa.text("INSERT INTO projects (id, name, description, created_by, created_at) "
                         "VALUES (:id, 'default', 'resources made before projects existed', "
                         "'migration', :now)"), {"id": default, "now": now})
    for (user_id,) in conn.execute(sa.text("SELECT id FROM users")).all():
        conn.execute(sa.text("INSERT INTO role_bindings (id, user_id, role, project_id, "
                             "created_by, created_at) VALUES (:id, :user, 'region-admin', "
                             "NULL, 'migration', :now)"),
                     {"id": str(uuid.uuid4()), "user": user_id, "now": now})

    for table in ("instances", "volumes", "security_groups", "networks", "images", "ports",
                  "operations"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("project_id", sa.String(36), nullable=True))
    for table in ("instances", "volumes", "security_groups", "ports"):
        conn.execute(sa.text(f"UPDATE {table} SET project_id = :p"), {"p": default})
    conn.execute(sa.text("UPDATE networks SET project_id = :p WHERE kind = 'tenant'"),
                 {"p": default})
    conn.execute(sa.text("UPDATE operations SET project_id = :p WHERE target_id IN "
                         "(SELECT id FROM instances UNION SELECT id FROM volumes "
                         "UNION SELECT id FROM networks WHERE kind = 'tenant')"),
                 {"p": default})

    postgres = conn.dialect.name == "postgresql"
    for table, shared in NAMED.items():
        with op.batch_alter_table(table, naming_convention=CONVENTION) as batch:
            batch.drop_constraint(f"{table}_name_key" if postgres else f"uq_{table}_name",
                                  type_="unique")
            batch.alter_column("project_id", existing_type=sa.String(36), nullable=shared)
            batch.create_foreign_key(f"fk_{table}_project", "projects", ["project_id"], ["id"])
            batch.create_unique_constraint(f"uq_{table}_project_name", ["project_id", "name"])
    with op.batch_alter_table("ports") as batch:
        batch.alter_column("project_id", existing_type=sa.String(36), nullable=False)
        batch.create_foreign_key("fk_ports_project", "projects", ["project_id"], ["id"])
    for table in (*NAMED, "ports", "operations"):
        op.create_index(f"ix_{table}_project_id", table, ["project_id"])

    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("name", sa.String(63), nullable=True))
        batch.add_column(sa.Column("role", sa.String(32), nullable=True))
        batch.add_column(sa.Column("project_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key("fk_api_tokens_project", "projects", ["project_id"], ["id"])
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_api_tokens_user_id", "api_tokens")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint("fk_api_tokens_project", type_="foreignkey")
        for column in ("revoked_at", "last_used_at", "project_id", "role", "name"):
            batch.drop_column(column)
    for table in (*NAMED, "ports", "operations"):
        op.drop_index(f"ix_{table}_project_id", table)
    for table in NAMED:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_project_name", type_="unique")
            batch.drop_constraint(f"fk_{table}_project", type_="foreignkey")
            batch.create_unique_constraint(
                f"{table}_name_key" if op.get_bind().dialect.name == "postgresql"
                else f"uq_{table}_name", ["name"])
    with op.batch_alter_table("ports") as batch:
        batch.drop_constraint("fk_ports_project", type_="foreignkey")
    for table in (*NAMED, "ports", "operations"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("project_id")
    op.drop_table("role_bindings")
    op.drop_table("projects")
