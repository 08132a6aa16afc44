"""The schema as the first release created it (``metadata.create_all``).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("requirement", sa.Text, nullable=False),
        sa.Column("test_mode", sa.Boolean, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("current_agent", sa.String(64)),
        sa.Column("last_message", sa.Text),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("queued_at", sa.String(32)),
        sa.Column("started_at", sa.String(32)),
        sa.Column("completed_at", sa.String(32)),
        sa.Column("last_event_id", sa.Integer, nullable=False),
        sa.Column("state_version", sa.Integer, nullable=False),
        sa.Column("run_count", sa.Integer, nullable=False),
        sa.Column("node", sa.String(64)),
        sa.Column("pid", sa.Integer),
        sa.Column("pid_create_time", sa.Float),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_tasks_status", "tasks", ["status"])
    op.create_index("ix_tasks_created_ns", "tasks", ["created_ns"])
    op.create_table(
        "events",
        sa.Column("task_id", sa.String(36), primary_key=True),
        sa.Column("event_id", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_index("ix_tasks_created_ns", "tasks")
    op.drop_index("ix_tasks_status", "tasks")
    op.drop_table("tasks")
