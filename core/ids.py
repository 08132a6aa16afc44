"""Task ids and the topics they start: fixed-length canonical UUIDs."""

from __future__ import annotations

import uuid

TASK_ID_LENGTH = 36  # str(uuid.uuid4()); fixed length is what makes topic prefixes unambiguous
SYSTEM_TOPIC_PREFIX = b"_sys/"  # never a prefix of a task id (those are hex and dashes)


def new_task_id() -> str:
    return str(uuid.uuid4())


def is_task_id(value: str) -> bool:
    """True for a canonical task id (so it can't be a prefix of another)."""
    if len(value) != TASK_ID_LENGTH:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
