"""Where a run's serialized team lives in its workspace, and what it was running.

MetaGPT's ``Team.serialize`` layout (``team.json``) under ``<workspace>/.metastream/team/``,
written after every round and on a cancel, plus ``run.json``: the requirement, whether the run
was incremental, and the rounds done. Importing this module does not import MetaGPT.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

TEAM_JSON = "team.json"
RUN_JSON = "run.json"


def checkpoint_dir(workspace: Path) -> Path:
    return Path(workspace) / ".metastream" / "team"


def has_checkpoint(workspace: Path) -> bool:
    """True when a serialized team (and what it ran) is there to resume from."""
    d = checkpoint_dir(workspace)
    return (d / TEAM_JSON).is_file() and (d / RUN_JSON).is_file()


def read_run(workspace: Path) -> dict[str, Any]:
    return json.loads((checkpoint_dir(workspace) / RUN_JSON).read_text())


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` whole: a kill mid-write leaves the previous checkpoint, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def clear(workspace: Path) -> None:
    """Forget the checkpoint (a run that completed leaves nothing to resume)."""
    for name in (TEAM_JSON, RUN_JSON):
        (checkpoint_dir(workspace) / name).unlink(missing_ok=True)


def relocate(workspace: Path) -> bool:
    """Point a serialized team saved in another place (another node's workspace, restored
    here from the shared store) at this workspace: the project path is absolute in it."""
    old = read_run(workspace).get("workspace")
    new = str(workspace)
    if not isinstance(old, str) or not old or old == new:
        return False
    # As JSON spells them, and only whole path components: "/a/ws1" is not "/a/ws10".
    pattern = re.compile(re.escape(json.dumps(old)[1:-1]) + r'(?=[/"\\])')
    replacement = json.dumps(new)[1:-1]
    d = checkpoint_dir(workspace)
    for name in (TEAM_JSON, RUN_JSON):
        text = (d / name).read_text()
        write_atomically(d / name, pattern.sub(lambda _m: replacement, text))
    return True


def save(workspace: Path, env: Any, ctx: Any, run: dict[str, Any]) -> None:
    """Serialize the team as ``Team.serialize`` does (without building a Team, which would
    replace the environment's context), then what the run was: requirement, rounds done."""
    from pydantic_core import to_jsonable_python

    d = checkpoint_dir(workspace)
    team = {
        "env": env.model_dump(),
        "investment": ctx.cost_manager.max_budget,
        "idea": run.get("requirement", ""),
        "context": ctx.serialize(),
    }
    # A role's receive buffer is not part of its serialization (``exclude=True``), yet the
    # round's messages wait there for the next round's roles: keep them too.
    pending: dict[str, list[str]] = {}
    for key, role in env.roles.items():
        waiting = role.rc.msg_buffer.pop_all()
        for msg in waiting:
            role.rc.msg_buffer.push(msg)
        pending[key] = [msg.dump() for msg in waiting]
    # Where it was: a run resumed in another place (another node's home) moves the paths.
    run = {**run, "pending": pending, "workspace": str(workspace)}
    write_atomically(d / TEAM_JSON, json.dumps(team, default=to_jsonable_python))
    write_atomically(d / RUN_JSON, json.dumps(run))


def restore(workspace: Path, ctx: Any, new_llm: Any) -> Any:
    """The environment of the serialized team, its roles rewired to this run's context and LLMs.

    ``Team.deserialize`` builds the roles before the context is set, so they would talk to the
    LLM of MetaGPT's config file; each gets a fresh LLM (and its system prompt) here.
    """
    from metagpt.schema import Message
    from metagpt.team import Team

    relocate(workspace)
    team = Team.deserialize(checkpoint_dir(workspace), context=ctx)
    env = team.env
    pending = read_run(workspace).get("pending", {})
    for key, role in env.roles.items():
        role.context = ctx
        role.llm = new_llm()
        role.set_env(env)  # system prompt, cost manager
        # Deserialized actions built their own LLM from MetaGPT's config file; set_env keeps
        # an action's own LLM, so re-bind every action the role holds to the role's.
        held = [
            *role.actions,
            *getattr(role, "code_todos", []),
            *getattr(role, "summarize_todos", []),
        ]
        for action in [*held, role.rc.todo]:
            if action is not None:
                action.context = ctx
                action.set_llm(role.llm, override=True)
        for raw in pending.get(key, []):
            role.rc.msg_buffer.push(Message.load(raw))
    return env
