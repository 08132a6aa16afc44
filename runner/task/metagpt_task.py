"""The MetaGPT workload: the create request's options -> a FlowSpec -> the real flow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core import settings
from runner.metagpt_flow import FlowCancelled, FlowSpec, run_metagpt
from runner.metagpt_flow.flow import project_name_for
from runner.task.spec import TaskSpec
from runner.task.workload import Cancelled, Emitter

log = logging.getLogger("metastream.task")


class NoLLMConfigured(RuntimeError):
    """The task was created for a real LLM, but none is configured where it runs."""


def flow_spec(requirement: str, test_mode: bool, options: dict[str, Any]) -> FlowSpec:
    """Build the flow's spec; the LLM comes from METASTREAM_LLM_* unless in test mode.

    The gateway records at creation which LLM a task runs on (``options["llm"]``, shown to
    every client); the task keeps to it, so a task tagged "scripted" never quietly reaches a
    real LLM and one created for a real LLM never quietly runs on the scripted one.
    """
    cfg = settings.load()
    base_url = cfg.llm_base_url or None
    recorded = options.get("llm")
    if recorded == "configured" and not test_mode and base_url is None:
        raise NoLLMConfigured(
            "this task was created for a real LLM, but METASTREAM_LLM_BASE_URL is not set "
            "for the supervisor; set it (README: Use a real LLM) or create the task in test mode"
        )
    spec = FlowSpec(
        requirement=requirement,
        test_mode=test_mode or recorded == "scripted",
        use_qa=bool(options.get("use_qa", False)),
        n_round=int(options.get("n_round", 10)),
        investment=float(options.get("investment", 3.0)),
        llm_base_url=cfg.llm_base_url or None,
        llm_api_key=cfg.llm_api_key or None,
        llm_model=cfg.llm_model or None,
        scripted_fault=options.get("scripted_fault"),
        fast_fail=bool(options.get("fast_fail", options.get("scripted_fault") is not None)),
        pace=options.get("pace"),
        llm_timeout=cfg.llm_timeout,
        llm_connect_timeout=cfg.llm_connect_timeout,
        llm_stall_timeout=cfg.llm_stall_timeout,
    )
    if spec.scripted:
        why = "test mode" if test_mode else "no LLM configured (METASTREAM_LLM_BASE_URL unset)"
        log.info("using the offline scripted LLM: %s", why)
    return spec


def run(task: TaskSpec, workspace: Path, out: Emitter) -> None:
    """Run the flow for this run of the task (``run_kind``: start, retry, follow_up, resume)."""
    spec = flow_spec(task.run_requirement or task.requirement, task.test_mode, task.options)
    # Every run of a conversation works on the project the first requirement named.
    spec.project_name = project_name_for(task.requirement)
    spec.incremental = task.run_kind == "follow_up"
    spec.resume = task.run_kind == "resume"
    try:
        run_metagpt(spec, workspace, out)
    except FlowCancelled as exc:
        raise Cancelled(str(exc)) from exc
