"""A task's options as created (``POST /api/tasks`` minus requirement and test_mode)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

DisconnectMode = Literal["continue", "kill", "grace"]


class TaskOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Per-task options; stored as a JSON object, unknown keys refused.

    The gateway's request model (gateway/models.py) checks ranges and answers 422; this type is
    what the store accepts and what the runner reads, so an option nobody reads can't slip in.
    """

    # The synthetic workload's spec; runner.task.synthetic.SyntheticSpec checks it.
    synthetic: dict[str, Any] | None = None
    use_qa: bool = False
    n_round: int = 10
    investment: float = 3.0
    disconnect_policy: DisconnectMode | None = None  # None: the server default
    grace_seconds: float | None = None
    timeout_seconds: float | None = None
    memory_limit_mb: float | None = None
    scripted_fault: Literal["http500", "garbage", "slow"] | None = None
    fast_fail: bool | None = None  # internal: no LLM retries (defaults on with scripted_fault)
    pace: Literal["fast", "demo"] | None = None  # the scripted LLM's streaming speed
    # Which LLM the task runs on, decided by the gateway at creation (never sent by clients):
    # "scripted" (test mode, or no real LLM configured), "configured" or "synthetic".
    llm: Literal["scripted", "configured", "synthetic"] | None = None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> TaskOptions:
        """Options from their stored object; raises msgspec.ValidationError naming a bad key."""
        return msgspec.convert(raw, cls)

    def to_dict(self) -> dict[str, Any]:
        """The stored object: only what differs from the defaults."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out
