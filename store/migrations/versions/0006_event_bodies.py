"""Event bodies (issue 17): each event's bus body (MessagePack) beside its seed JSON.

Additive: a nullable ``body`` column on ``events``. The task process already encodes the body
for the bus, and stores it so that a binary client's replay is a read and a join instead of a
JSON decode and a MessagePack encode per event. Rows logged before this migration keep
``body`` NULL and are converted on reading, as before. The task roles' table grants
(``SELECT, INSERT ON events``, 0004) cover the new column.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("body", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    op.drop_column("events", "body")
