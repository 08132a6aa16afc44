"""A task's runs: the first, each follow-up and each resume (issue 18, conversations).

Additive: a new table; tasks from before it have no run rows and read as one run.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("task_id", sa.String(36), primary_key=True),
        sa.Column("run_no", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("requirement", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("first_event_id", sa.Integer),
        sa.Column("last_event_id", sa.Integer),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32)),
        sa.Column("ended_at", sa.String(32)),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("runs")
