"""Runtime hooks that turn MetaGPT's internals into metastream events.

Importing this module imports MetaGPT. The patches are installed once per process and are inert
unless a `FlowObserver` is active in the current context (a contextvar, inherited by the asyncio
tasks of a run), so two runs in one process, or code outside a run, are not affected.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from loguru import logger as loguru_logger
from metagpt.actions.action import Action
from metagpt.actions.action_node import ActionNode
from metagpt.environment.base_env import Environment
from metagpt.logs import set_llm_stream_logfunc
from metagpt.roles.role import Role
from metagpt.utils.cost_manager import CostManager
from metagpt.utils.file_repository import FileRepository

from runner.metagpt_flow.observer import FlowObserver

CURRENT: contextvars.ContextVar[FlowObserver | None] = contextvars.ContextVar(
    "metastream_flow", default=None
)
ROLE: contextvars.ContextVar[str] = contextvars.ContextVar("metastream_role", default="System")
_installed = False
_install_lock = threading.Lock()
LOG_LEVEL_ENV = "METASTREAM_METAGPT_LOG_LEVEL"  # MetaGPT's own stderr lines


def _role() -> str:
    return ROLE.get()


class ObservedCostManager(CostManager):
    """CostManager that reports every priced LLM call as a COST event."""

    def update_cost(self, prompt_tokens: int, completion_tokens: int, model: str) -> None:
        before = self.total_cost
        super().update_cost(prompt_tokens, completion_tokens, model)
        if obs := CURRENT.get():
            obs.on_cost(
                _role(),
                {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "cost": round(self.total_cost - before, 8),
                    "total_cost": round(self.total_cost, 8),
                    "total_prompt_tokens": self.total_prompt_tokens,
                    "total_completion_tokens": self.total_completion_tokens,
                    "max_budget": self.max_budget,
                    "priced_as": model,
                    "priced": model in self.token_costs,
                },
            )


def _wrap_role_run(orig: Any) -> Any:
    @functools.wraps(orig)
    async def run(self: Role, *args: Any, **kwargs: Any) -> Any:
        # Each role runs in its own asyncio task (env.run gathers them), so this only
        # labels what happens inside this role's turn.
        ROLE.set(type(self).__name__)
        return await orig(self, *args, **kwargs)

    return run


def _wrap_publish(orig: Any) -> Any:
    @functools.wraps(orig)
    def publish_message(self: Environment, message: Any, *args: Any, **kwargs: Any) -> Any:
        if obs := CURRENT.get():
            obs.on_message(_role(), message)
        return orig(self, message, *args, **kwargs)

    return publish_message


def _action_file(action: Any) -> str | None:
    ctx = getattr(action, "i_context", None)
    name = getattr(ctx, "filename", None)
    return name if isinstance(name, str) and name else None


def _wrap_action_run(orig: Any) -> Any:
    @functools.wraps(orig)
    async def run(self: Action, *args: Any, **kwargs: Any) -> Any:
        obs = CURRENT.get()
        if obs is None:
            return await orig(self, *args, **kwargs)
        role, name, filename = _role(), type(self).__name__, _action_file(self)
        obs.check_cancelled()
        started = time.monotonic()
        obs.on_action_start(role, name, filename)
        try:
            result = await orig(self, *args, **kwargs)
        except Exception as exc:
            obs.on_action_error(role, name, filename, exc, time.monotonic() - started)
            raise
        obs.on_action_end(role, name, filename, time.monotonic() - started)
        return result

    return run


def _wrap_fill(orig: Any) -> Any:
    @functools.wraps(orig)
    async def fill(self: ActionNode, *args: Any, **kwargs: Any) -> Any:
        result = await orig(self, *args, **kwargs)
        if (obs := CURRENT.get()) and getattr(self, "instruct_content", None) is not None:
            obs.on_node_filled(_role(), self.key, self.instruct_content.model_dump())
        return result

    return fill


def _wrap_save(orig: Any) -> Any:
    @functools.wraps(orig)
    async def save(self: FileRepository, filename: Any, content: Any, *args: Any, **kw: Any) -> Any:
        result = await orig(self, filename, content, *args, **kw)
        if obs := CURRENT.get():
            obs.on_file_saved(_role(), Path(self.workdir) / filename, content or "")
        return result

    return save


def _stream_log(text: str) -> None:
    obs = CURRENT.get()
    if obs is not None:
        obs.on_stream(_role(), text)
    # Outside a run the text is dropped on purpose: MetaGPT's default prints it to stdout,
    # which belongs to the task process.


def _loguru_sink(message: Any) -> None:
    obs = CURRENT.get()
    if obs is not None:
        record = message.record
        obs.on_log(_role(), record["level"].name, record["message"])


def _stderr_sink(message: Any) -> None:
    """MetaGPT's own log lines: to stderr as loguru formats them, or as JSON records."""
    if os.environ.get("METASTREAM_LOG_FORMAT", "").strip().lower() == "json":
        record = message.record
        logging.getLogger("metagpt").log(record["level"].no, "%s", record["message"])
    else:
        sys.stderr.write(str(message))


def _iter_action_classes(cls: type) -> list[type]:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


def _import_flow_actions() -> None:
    # Subclasses only exist once imported; pull in every action the flow may use.
    import metagpt.actions
    import metagpt.roles  # noqa: F401


def install() -> None:
    """Patch MetaGPT once per process (idempotent, thread-safe)."""
    global _installed
    with _install_lock:
        if not _installed:
            _install()
            _installed = True


def _install() -> None:
    _import_flow_actions()
    Role.run = _wrap_role_run(Role.run)
    Environment.publish_message = _wrap_publish(Environment.publish_message)
    ActionNode.fill = _wrap_fill(ActionNode.fill)
    FileRepository.save = _wrap_save(FileRepository.save)
    for cls in _iter_action_classes(Action):
        if "run" in cls.__dict__:
            cls.run = _wrap_action_run(cls.__dict__["run"])  # type: ignore[attr-defined]
    set_llm_stream_logfunc(_stream_log)
    _reset_logging()
    _patch_retries()
    _confine_run_code()


def _reset_logging() -> None:
    """Replace MetaGPT's import-time sinks (INFO to stderr, a file under the import root)."""
    loguru_logger.remove()
    loguru_logger.add(_stderr_sink, level=os.environ.get(LOG_LEVEL_ENV, "WARNING"))
    loguru_logger.add(_loguru_sink, level="WARNING", filter=lambda r: CURRENT.get() is not None)


def _confine_run_code() -> None:
    """QA's RunCode must not install packages: no network, nothing outside the workspace.

    RunCode already runs the generated code with the project directory as its working
    directory and a 10 s timeout; its pip installs would write into whatever interpreter is
    on PATH, so they are skipped (the run reports a missing module instead).
    """
    from metagpt.actions.run_code import RunCode

    def _no_install(working_directory: Any, env: Any = None) -> None:
        return None

    RunCode._install_dependencies = staticmethod(_no_install)


def _patch_retries() -> None:
    """Make MetaGPT's tenacity retries obey the active run (fast_fail, cancellation)."""
    from metagpt.actions.summarize_code import SummarizeCode
    from metagpt.actions.write_code import WriteCode
    from metagpt.actions.write_code_review import WriteCodeReview
    from metagpt.provider.base_llm import BaseLLM
    from metagpt.provider.openai_api import OpenAILLM

    targets = [
        ActionNode._aask_v1,
        WriteCode.write_code,
        WriteCodeReview.write_code_review_and_rewrite,
        SummarizeCode.summarize_code,
        OpenAILLM.acompletion_text,
        BaseLLM.acompletion_text,
    ]
    for fn in targets:
        retrying = getattr(fn, "retry", None)
        if retrying is None:
            continue
        retrying.wait = _ctx_wait(retrying.wait)
        retrying.stop = _ctx_stop(retrying.stop)


def _ctx_wait(orig: Any) -> Any:
    def wait(retry_state: Any) -> float:
        obs = CURRENT.get()
        if obs is not None and (obs.fast_fail or obs.cancelled.is_set()):
            return 0.05
        return orig(retry_state)

    return wait


def _ctx_stop(orig: Any) -> Any:
    def stop(retry_state: Any) -> bool:
        obs = CURRENT.get()
        if obs is not None:
            if obs.cancelled.is_set():
                return True
            if obs.fast_fail:
                return retry_state.attempt_number >= 2
        return bool(orig(retry_state))

    return stop
