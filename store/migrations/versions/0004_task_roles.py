"""Per-task database roles (issue 20): a task's rows only, by row-level security.

A task process on PostgreSQL connects as a role of its own (store.taskroles), named
``metastream_task_<database tag>_<task id>``. Row-level security on ``events`` and the new
``task_meta`` lets such a role see and write the rows of the task its name carries, and no
other; the tables' owner (the stack's own role, which runs this migration) is exempt, as
owners are unless RLS is forced. On SQLite the table is made (one schema) and unused.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The task id is what follows ``metastream_task_`` + an 8-character database tag + ``_``.
_OWN = r"current_user LIKE 'metastream\_task\_%' AND task_id = substr(current_user::text, 26)"


def upgrade() -> None:
    op.create_table(
        "task_meta",
        sa.Column("task_id", sa.String(36), primary_key=True),
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("value", sa.LargeBinary),
        sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("events", "task_meta"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY task_own_rows ON {table} USING ({_OWN}) WITH CHECK ({_OWN})")
    # The events fence (0003) reads and share-locks the tasks row, which a task's role may not
    # touch: it runs as its owner (the stack's role), with a fixed search path that names the
    # schema and puts pg_temp LAST. "FROM CURRENT" left pg_temp implicitly first, so a task's
    # temporary table named "tasks" would have been read (and its policies' functions run) as
    # the stack's role (PostgreSQL's "Writing SECURITY DEFINER Functions Safely").
    schema = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one()
    quoted = '"' + schema.replace('"', '""') + '"'
    op.execute(
        "ALTER FUNCTION metastream_events_fence() SECURITY DEFINER "
        f"SET search_path = {quoted}, pg_temp"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER FUNCTION metastream_events_fence() SECURITY INVOKER RESET search_path")
        op.execute("DROP POLICY IF EXISTS task_own_rows ON events")
        op.execute("ALTER TABLE events DISABLE ROW LEVEL SECURITY")
    op.drop_table("task_meta")
