"""Workspaces across nodes (issue 18): which snapshot of a task's workspace the store holds.

Additive. One row per task: the snapshot's generation (bumped by every share, at each
checkpoint and at each run's end), the run epoch it was taken at (a taken-over run's share is
refused), and whether it was taken at its run's end. ``task_files`` keeps the files; hidden
ones (the serialized team under ``.metastream/``, the project's ``.git``) are stored too, and
never served (store.files).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_shares",
        sa.Column("task_id", sa.String(36), primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("run_no", sa.Integer, nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("final", sa.Boolean, nullable=False),
        sa.Column("taken_at", sa.String(32), nullable=False),
        sa.Column("files", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("task_shares")
