"""Run MetaGPT's software-company flow for one task, reporting through an Emitter.

Importing this module is cheap; MetaGPT is imported by `preimport()` or on the first
`run_metagpt()` call, after its environment (METAGPT_PROJECT_ROOT, config file) is prepared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.metagpt_flow import checkpoint
from runner.metagpt_flow.events import (
    ERROR,
    FLOW_END,
    FLOW_START,
    RESUMED,
    ROUND,
    BudgetExceeded,
    Emitter,
    FlowCancelled,
    FlowError,
    describe,
    truncate,
)
from runner.metagpt_flow.llm_check import host_of
from runner.metagpt_flow.setup import (
    MINIMAL_CONFIG,
    build_context,
    import_metagpt,
    new_llm,
    retarget,
)

SCRIPTED_MODEL = "scripted-metagpt"
# Priced as a cheap real model so COST events and the budget check have real numbers.
SCRIPTED_PRICING = "gpt-4o-mini"
STREAM_TICK_S = 0.05


@dataclass
class FlowSpec:
    """What to run: the requirement and how to reach the LLM."""

    requirement: str
    test_mode: bool = True
    use_qa: bool = False
    n_round: int = 10
    investment: float = 3.0
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str | None = None
    llm_api_type: str = "openai"
    scripted_fault: str | None = None  # None, "http500", "garbage", "slow"
    fast_fail: bool = False
    project_name: str | None = None  # directory under the workspace; derived if None
    pace: str | None = None  # the scripted LLM's streaming speed: None/"fast" or "demo"
    llm_timeout: float = 60.0  # read timeout of one call (between streamed chunks)
    llm_connect_timeout: float = 5.0
    llm_stall_timeout: float = 180.0  # no LLM progress for this long: FAILED (0 = never)
    # A follow-up: MetaGPT's incremental mode (inc=True, project_path) on the existing project.
    incremental: bool = False
    # Continue from the team serialized in the workspace (runner.metagpt_flow.checkpoint).
    resume: bool = False

    @property
    def scripted(self) -> bool:
        """True when the offline scripted LLM answers (test mode or no LLM configured)."""
        return self.test_mode or not self.llm_base_url


def project_name_for(requirement: str) -> str:
    """A safe directory/package name for the generated project."""
    words = re.findall(r"[a-z0-9]+", requirement.lower())[:4]
    name = "_".join(words) or "project"
    return (name if name[0].isalpha() else f"p_{name}")[:40]


def preimport() -> None:
    """Import MetaGPT's heavy modules now (for a fork server); per-task paths are set later.

    If METAGPT_PROJECT_ROOT is unset, a private temporary root absorbs what MetaGPT writes at
    import (log file, default workspace), so nothing lands in the working directory.
    """
    from_env = os.environ.get("METAGPT_PROJECT_ROOT")
    root = Path(from_env) if from_env else Path(tempfile.mkdtemp(prefix="metagpt-preimport-"))
    import_metagpt(root)
    from runner.metagpt_flow import hooks

    hooks.install()  # also drops the log sink MetaGPT opened under `root` at import
    if not from_env:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _llm_endpoint(spec: FlowSpec) -> Iterator[dict[str, Any]]:
    """Yield the LLM settings, starting the scripted LLM for the run if needed."""
    if not spec.scripted:
        yield {
            "api_type": spec.llm_api_type,
            "base_url": spec.llm_base_url,
            "api_key": spec.llm_api_key or "sk-none",
            "model": spec.llm_model or "gpt-4o-mini",
        }
        return
    from runner.scripted_llm import ScriptedLLM

    with ScriptedLLM(fault=spec.scripted_fault, pace=spec.pace) as llm:
        yield {
            "api_type": "openai",
            "base_url": llm.base_url,
            "api_key": "sk-scripted",
            "model": SCRIPTED_MODEL,
            "pricing_plan": SCRIPTED_PRICING,
        }


def run_metagpt(spec: FlowSpec, workspace: Path, emitter: Emitter) -> None:
    """Run the flow to completion in `workspace`; raise FlowError (or a subclass) on failure."""
    from runner.scripted_llm import FAULTS

    if spec.scripted_fault not in FAULTS:
        raise ValueError(f"scripted_fault must be one of {FAULTS}, not {spec.scripted_fault!r}")
    workspace = Path(workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    if not spec.scripted and spec.llm_base_url:
        # Before MetaGPT's import (seconds, when cold): a wrong host fails the task at once.
        from runner.metagpt_flow.llm_check import check_llm

        emitter.set_state(last_message=f"Checking the LLM at {host_of(spec.llm_base_url)}")
        check_llm(spec.llm_base_url, spec.llm_api_key, spec.llm_model)
    mg_root = workspace / ".metagpt"
    (mg_root / "config").mkdir(parents=True, exist_ok=True)
    (mg_root / "config" / "config2.yaml").write_text(MINIMAL_CONFIG)
    import_metagpt(mg_root)
    from runner.metagpt_flow import hooks
    from runner.metagpt_flow.observer import FlowObserver

    hooks.install()
    project = spec.project_name or project_name_for(spec.requirement)
    obs = FlowObserver(emitter, workspace, project, spec.fast_fail)
    log_sink = retarget(mg_root, obs)
    token = hooks.CURRENT.set(obs)
    try:
        if spec.scripted:
            emitter.set_state(last_message="Using the offline scripted LLM")
        with _llm_endpoint(spec) as llm_settings:
            asyncio.run(_run(spec, workspace, project, llm_settings, obs))
    except Exception as exc:
        obs.system(ERROR, {"error": str(exc)[:2000], "kind": type(exc).__name__, "fatal": True})
        raise
    finally:
        hooks.CURRENT.reset(token)
        _remove_sink(log_sink)


def _remove_sink(sink_id: int) -> None:
    from loguru import logger

    with contextlib.suppress(ValueError):
        logger.remove(sink_id)


async def _run(
    spec: FlowSpec, workspace: Path, project: str, llm: dict[str, Any], obs: Any
) -> None:
    started = time.monotonic()
    req, meta = truncate(spec.requirement)
    # FLOW_START goes out before the roles are built (a few hundred ms): it is the task's
    # first sign of life, and the roles' first message belongs after it.
    obs.system(
        FLOW_START,
        {
            "requirement": req,
            **meta,
            "llm": "scripted" if spec.scripted else "configured",
            "note": "Using the offline scripted LLM" if spec.scripted else None,
            "scripted_fault": spec.scripted_fault,
            "pace": spec.pace if spec.scripted else None,
            "model": llm["model"],
            # No base URL and no server path: every client of the task sees this event.
            "project_dir": project,
            "n_round": _rounds(spec),
            "investment": spec.investment,
            "use_qa": spec.use_qa,
            "incremental": spec.incremental,
        },
    )
    ctx, env, done = _team(spec, workspace, project, llm, obs)
    drive = asyncio.create_task(_drive(spec, env, ctx, obs, workspace, done))
    stall = Stall(spec.llm_stall_timeout, host_of(llm["base_url"]))
    obs.llm_progress()
    ticker = asyncio.create_task(_ticker(obs, drive, stall))
    rounds = 0
    try:
        rounds = await drive
    except asyncio.CancelledError:
        if stall.reason:
            raise LLMStalled(stall.reason) from None
        if not obs.cancelled.is_set():
            raise
        raise FlowCancelled("cancelled by request") from None
    except FlowError:
        raise
    except Exception as exc:
        raise _explain(exc, obs) from exc
    finally:
        ticker.cancel()
        obs.flush_stream()
    written = sorted(obs.code_files)
    missing = sorted(set(obs.task_list) - obs.code_files)
    if missing or not obs.task_list:
        raise FlowError(
            f"flow ended after {rounds} rounds without writing "
            + (", ".join(missing) if missing else "a task list")
        )
    checkpoint.clear(workspace)  # completed: nothing left to resume
    obs.advance(1.0, "System", f"Done: {len(written)} files written in {project}/")
    obs.system(
        FLOW_END,
        {
            "ok": True,
            "rounds": rounds,
            "total_cost": round(ctx.cost_manager.total_cost, 8),
            "files": written,
            "project_dir": project,
            "duration_ms": int((time.monotonic() - started) * 1000),
        },
    )


def _rounds(spec: FlowSpec) -> int:
    # MetaGPT itself needs at least 8 rounds once QA takes part.
    return max(spec.n_round, 8) if spec.use_qa else spec.n_round


def _team(
    spec: FlowSpec, workspace: Path, project: str, llm: dict[str, Any], obs: Any
) -> tuple[Any, Any, int]:
    """Context, environment and rounds already done: a new team, or the serialized one."""
    if not spec.resume:
        checkpoint.clear(workspace)  # an older run's team must not be resumed into this one
        ctx, env = build_context(spec, workspace, project, llm, obs.fast_fail, _timeouts(spec))
        return ctx, env, 0
    saved = checkpoint.read_run(workspace)
    spec.requirement, spec.incremental = saved["requirement"], saved["incremental"]
    timeouts = _timeouts(spec)
    ctx, _ = build_context(spec, workspace, project, llm, obs.fast_fail, timeouts, hire=False)
    env = checkpoint.restore(workspace, ctx, lambda: new_llm(ctx, obs.fast_fail, timeouts))
    ctx.cost_manager.total_cost = float(saved.get("total_cost", 0.0))
    obs.recall()
    # Which roles have nothing left to do: the resumed run skips them (visible in the events).
    obs.system(
        RESUMED,
        {"after_round": saved["rounds"], "roles": [type(r).__name__ for r in env.roles.values()]},
    )
    return ctx, env, int(saved["rounds"])


async def _drive(
    spec: FlowSpec, env: Any, ctx: Any, obs: Any, workspace: Path, done: int = 0
) -> int:
    """Run rounds until every role is idle; Team.run would swallow errors, so not used.

    After each round the team is serialized into the workspace, so a cancelled or killed run
    resumes from its last completed round (``done`` rounds are skipped on resume).
    """
    cost_manager = ctx.cost_manager
    n_round = _rounds(spec)
    for rnd in range(done + 1, n_round + 1):
        obs.check_cancelled()
        if env.is_idle:
            return rnd - 1
        if cost_manager.total_cost >= cost_manager.max_budget:
            raise BudgetExceeded(
                f"budget exhausted: spent ${cost_manager.total_cost:.4f} of "
                f"${cost_manager.max_budget:.4f} before round {rnd}"
            )
        obs.round = rnd
        obs.system(ROUND, {"round": rnd, "n_round": n_round, "total_cost": cost_manager.total_cost})
        await env.run()
        run = {
            "requirement": spec.requirement,
            "incremental": spec.incremental,
            "rounds": rnd,
            "total_cost": cost_manager.total_cost,
        }
        await asyncio.to_thread(checkpoint.save, workspace, env, ctx, run)
    if not env.is_idle:
        busy = [type(r).__name__ for r in env.roles.values() if not r.is_idle]
        raise FlowError(f"flow not finished after {n_round} rounds (still busy: {busy})")
    return n_round


def _explain(exc: BaseException, obs: Any) -> FlowError:
    """Turn whatever escaped MetaGPT into a FlowError naming the role, action and cause."""
    if obs.cancelled.is_set():
        return FlowCancelled("cancelled by request")
    if obs.first_error is not None:
        role, action, cause = obs.first_error
        return FlowError(f"{role} failed in {action}: {describe(cause)}")
    return FlowError(f"MetaGPT flow failed: {describe(exc)}")


def _timeouts(spec: FlowSpec) -> tuple[float, float]:
    """(read, connect) seconds for one LLM call; fault drills fail faster."""
    read = min(spec.llm_timeout, 60.0) if spec.fast_fail else spec.llm_timeout
    return read, spec.llm_connect_timeout


class LLMStalled(FlowError):
    """The LLM made no progress for too long (a server that accepts and never answers)."""


@dataclass
class Stall:
    """The stall watchdog's verdict: set once the LLM has made no progress for ``limit`` s."""

    limit: float
    host: str
    reason: str = ""

    def check(self, idle: float) -> bool:
        if self.limit > 0 and idle >= self.limit:
            self.reason = (
                f"LLM stalled: no response from {self.host} for {self.limit:g} s "
                "(METASTREAM_LLM_STALL_TIMEOUT)"
            )
        return bool(self.reason)


async def _ticker(obs: Any, drive: asyncio.Task[int], stall: Stall) -> None:
    """Flush coalesced LLM text older than the flush interval; cancel `drive` on request.

    Cancelling the task interrupts an LLM call in flight, so a slow model does not delay a
    cancel until the next action boundary.
    """
    while not drive.done():
        await asyncio.sleep(STREAM_TICK_S)
        obs.flush_stream(only_due=True)
        if obs.cancelled.is_set() or stall.check(obs.llm_idle()):
            drive.cancel()
            return
