"""Import MetaGPT with a per-task root and build its Config, Context, roles and Environment.

MetaGPT computes paths from METAGPT_PROJECT_ROOT once, at import (`metagpt.const`), and opens a
log file there. A process imports it once (possibly before any task is known, see
`flow.preimport`), so every run re-points those paths at its own workspace and passes the
workspace explicitly in Config; nothing of a run is written outside its workspace.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

MINIMAL_CONFIG = """\
# Written by metastream so that `import metagpt` succeeds; the real Config is built in code.
llm:
  api_type: "openai"
  base_url: "http://127.0.0.1:9/v1"
  api_key: "sk-unused"
  model: "unused"
"""

# Names bound from metagpt.const at import time by modules the flow may touch.
_import_lock = threading.Lock()
_CONST_USERS = ("metagpt.const", "metagpt.logs", "metagpt.team", "metagpt.config2")


def import_metagpt(root: Path) -> None:
    """Import MetaGPT (once per process) with `root` as METAGPT_PROJECT_ROOT."""
    with _import_lock:
        if "metagpt.roles" not in sys.modules:
            _import(root)


def _import(root: Path) -> None:
    (root / "config").mkdir(parents=True, exist_ok=True)
    cfg = root / "config" / "config2.yaml"
    if not cfg.exists():
        cfg.write_text(MINIMAL_CONFIG)
    previous = os.environ.get("METAGPT_PROJECT_ROOT")
    os.environ["METAGPT_PROJECT_ROOT"] = str(root)
    try:
        import metagpt.actions
        import metagpt.config2
        import metagpt.context
        import metagpt.environment
        import metagpt.roles  # noqa: F401
    finally:
        # Keep the variable only if the caller set it; a pre-import root must not leak into
        # later tasks' environment (child processes, e.g. QA's RunCode, inherit it).
        if previous is None:
            os.environ.pop("METAGPT_PROJECT_ROOT", None)
        else:
            os.environ["METAGPT_PROJECT_ROOT"] = previous


def retarget(root: Path, obs: Any) -> int:
    """Point MetaGPT's computed paths and this run's DEBUG log at `root`; returns the sink id."""
    from loguru import logger

    from runner.metagpt_flow import hooks

    paths = {
        "METAGPT_ROOT": root,
        "DEFAULT_WORKSPACE_ROOT": root / "workspace",
        "SERDESER_PATH": root / "workspace" / "storage",
        "TMP": root / "tmp",
        "DATA_PATH": root / "data",
    }
    for name in _CONST_USERS:
        module = sys.modules.get(name)
        for attr, value in paths.items():
            if module is not None and hasattr(module, attr):
                setattr(module, attr, value)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    # Filtered by run, so concurrent runs in one process keep separate logs.
    return logger.add(
        root / "logs" / "metagpt.log",
        level="DEBUG",
        encoding="utf-8",
        filter=lambda record: hooks.CURRENT.get() is obs,
    )


def build_context(
    spec: Any,
    workspace: Path,
    project: str,
    llm: dict[str, Any],
    fast_fail: bool,
    timeouts: tuple[float, float] = (600.0, 600.0),
    hire: bool = True,
) -> tuple[Any, Any]:
    """Config, Context, roles and Environment for one run (nothing read from files).

    ``hire=False``: no roles and no requirement (a resume brings its own serialized team).
    """
    from metagpt.actions import UserRequirement
    from metagpt.config2 import Config
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.configs.mermaid_config import MermaidConfig
    from metagpt.configs.workspace_config import WorkspaceConfig
    from metagpt.const import MESSAGE_ROUTE_TO_ALL
    from metagpt.context import Context
    from metagpt.environment import Environment
    from metagpt.roles import Architect, Engineer, ProductManager, ProjectManager, QaEngineer
    from metagpt.schema import Message

    from runner.metagpt_flow.hooks import ObservedCostManager

    read = timeouts[0]
    # MetaGPT passes this to every call (it overrides the client's own timeout); a float
    # would be the connect timeout too, so the client gets the pair below as well.
    llm_config = LLMConfig(**llm, timeout=int(max(1, read)))
    incremental = bool(getattr(spec, "incremental", False))
    config = Config(
        llm=llm_config,
        workspace=WorkspaceConfig(path=workspace),
        project_name=project,
        # A path switches MetaGPT to incremental mode: the project is kept and refined, not
        # deleted and rewritten (what `generate_repo(inc=True, project_path=...)` does).
        project_path=str(workspace / project) if incremental else "",
        inc=incremental,
        mermaid=MermaidConfig(engine="none"),
    )
    cost_manager = ObservedCostManager(max_budget=spec.investment)
    ctx = Context(config=config, cost_manager=cost_manager)
    env = Environment(context=ctx)
    if not hire:
        return ctx, env
    roles = [ProductManager, Architect, ProjectManager]
    hired = [cls(context=ctx, llm=new_llm(ctx, fast_fail, timeouts)) for cls in roles]
    hired.append(
        Engineer(context=ctx, llm=new_llm(ctx, fast_fail, timeouts), n_borg=5, use_code_review=True)
    )
    if spec.use_qa:
        hired.append(QaEngineer(context=ctx, llm=new_llm(ctx, fast_fail, timeouts)))
    env.add_roles(hired)
    env.publish_message(
        Message(
            role="Human",
            content=spec.requirement,
            cause_by=UserRequirement,
            send_to=MESSAGE_ROUTE_TO_ALL,
        ),
        peekable=False,
    )
    return ctx, env


def new_llm(ctx: Any, fast_fail: bool, timeouts: tuple[float, float]) -> Any:
    """A fresh LLM per role (the system prompt is per role) sharing the run's cost manager."""
    import httpx

    llm = ctx.llm_with_cost_manager_from_llm_config(ctx.config.llm)
    llm.cost_manager = ctx.cost_manager
    client = getattr(llm, "aclient", None)
    if client is not None and hasattr(client, "with_options"):
        read, connect = timeouts
        options: dict[str, Any] = {"timeout": httpx.Timeout(read, connect=connect)}
        if fast_fail:
            # The OpenAI SDK retries 5xx itself with back-off; MetaGPT retries again on top.
            options["max_retries"] = 0
        llm.aclient = client.with_options(**options)
    return llm
