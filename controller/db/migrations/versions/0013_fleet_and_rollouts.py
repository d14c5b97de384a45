"""fleet: node labels, SSH hosts with pinned keys, rollout jobs and their hosts

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 14:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("labels", sa.JSON(), nullable=False, server_default="{}"))
    op.create_table(
        "fleet_hosts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(32), nullable=False),
        sa.Column("host_key", sa.Text(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("qualification", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rollout_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("upgrade", sa.Boolean(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("tasks_expected", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("operation_id", sa.String(36), nullable=True),
        sa.Column("requested_by", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_rollout_jobs_created_at", "rollout_jobs", ["created_at"])
    op.create_table(
        "rollout_hosts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("rollout_jobs.id"), nullable=False),
        sa.Column("host", sa.String(63), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("tasks_done", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.UniqueConstraint("job_id", "host"),
    )
    op.create_index("ix_rollout_hosts_job_id", "rollout_hosts", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_hosts_job_id", "rollout_hosts")
    op.drop_table("rollout_hosts")
    op.drop_index("ix_rollout_jobs_created_at", "rollout_jobs")
    op.drop_table("rollout_jobs")
    op.drop_table("fleet_hosts")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("labels")
