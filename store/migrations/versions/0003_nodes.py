"""Several nodes (issue 15): the nodes table, a run epoch and a cancel request per task, files.

Additive. On PostgreSQL two triggers fence writes from a stale run: a task process's
connection carries its run's epoch (``metastream.epoch``, set at connect), and its event
inserts and its own row updates are refused once the task's epoch moved on (the run was
taken over by another node or re-run). Connections without the setting (supervisors,
gateways) are not checked: they fence themselves with ``WHERE epoch = ...``.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Statement-level, after the rows are in: one lock on the task row per COPY, not one per
# event. The row is locked whatever its epoch (a lock taken only on a stale row would let a
# write race a takeover: the takeover would not wait for it), so a takeover waits for a write
# under way and the write that follows it sees the new epoch: the taker's "last event id" is
# exact.
_EVENTS_FENCE = """
CREATE FUNCTION metastream_events_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  want text := current_setting('metastream.epoch', true);
  r record;
BEGIN
  IF want IS NULL OR want = '' THEN
    RETURN NULL;
  END IF;
  FOR r IN SELECT t.id, t.epoch FROM tasks t
      WHERE t.id IN (SELECT DISTINCT task_id FROM new_rows) FOR SHARE OF t LOOP
    IF r.epoch::text <> want THEN
      RAISE EXCEPTION 'stale run epoch % for task %: its run was taken over', want, r.id
        USING ERRCODE = 'MS409';
    END IF;
  END LOOP;
  RETURN NULL;
END $$;
CREATE TRIGGER events_fence AFTER INSERT ON events
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
  EXECUTE FUNCTION metastream_events_fence();
"""

_TASKS_FENCE = """
CREATE FUNCTION metastream_tasks_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  want text := current_setting('metastream.epoch', true);
BEGIN
  IF want IS NOT NULL AND want <> '' AND OLD.epoch::text <> want THEN
    RAISE EXCEPTION 'stale run epoch % for task %: its run was taken over', want, OLD.id
      USING ERRCODE = 'MS409';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER tasks_fence BEFORE UPDATE ON tasks
  FOR EACH ROW EXECUTE FUNCTION metastream_tasks_fence();
"""


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("capacity", sa.Integer, nullable=False),
        sa.Column("running", sa.Integer, nullable=False),
        sa.Column("control", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cancel_request", sa.Text))
    op.create_table(
        "task_files",
        sa.Column("task_id", sa.String(36), primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime", sa.Float, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_EVENTS_FENCE)
        op.execute(_TASKS_FENCE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER tasks_fence ON tasks; DROP FUNCTION metastream_tasks_fence()")
        op.execute("DROP TRIGGER events_fence ON events; DROP FUNCTION metastream_events_fence()")
    op.drop_table("task_files")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("cancel_request")
        batch.drop_column("epoch")
    op.drop_table("nodes")
