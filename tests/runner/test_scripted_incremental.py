"""The scripted LLM's answers to MetaGPT 0.8.2's incremental-mode prompts (no MetaGPT run).

The prompts are built from MetaGPT's own templates and nodes, so a MetaGPT that changed its
markers fails here first; tests/runner/test_conversation_flow.py runs the real flow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runner.scripted_llm import incremental
from runner.scripted_llm.answers import answer

pytestmark = pytest.mark.metagpt
FIRST = "a calculator with add and subtract"
FOLLOW_UP = "add a high score table"


@pytest.fixture(scope="module", autouse=True)
def _metagpt(tmp_path_factory: pytest.TempPathFactory) -> None:
    """MetaGPT's templates and nodes, imported with a private root (it writes there)."""
    from runner.metagpt_flow.setup import import_metagpt

    import_metagpt(Path(tmp_path_factory.mktemp("metagpt-root")))


def _node_prompt(node: object, context: str) -> str:
    return node.compile(context=context, schema="json", mode="auto")  # type: ignore[attr-defined]


def _content(reply: str) -> dict[str, object]:
    m = re.search(r"\[CONTENT\](.*)\[/CONTENT\]", reply, re.S)
    assert m, reply
    return json.loads(m.group(1))


def test_every_incremental_prompt_is_recognised_and_answered_validly() -> None:
    from metagpt.actions.design_api_an import REFINED_DESIGN_NODE
    from metagpt.actions.project_management_an import REFINED_PM_NODE
    from metagpt.actions.write_code_plan_and_change_an import (
        REFINED_TEMPLATE,
        WRITE_CODE_PLAN_AND_CHANGE_NODE,
    )
    from metagpt.actions.write_prd import NEW_REQ_TEMPLATE
    from metagpt.actions.write_prd_an import (
        REFINED_PRD_NODE,
        WP_IS_RELATIVE_NODE,
        WP_ISSUE_TYPE_NODE,
    )

    old_prd = json.dumps({"Original Requirements": FIRST, "Product Goals": []})
    prd_ctx = NEW_REQ_TEMPLATE.format(old_prd=old_prd, requirements=FOLLOW_UP)
    assert _content(answer([{"content": _node_prompt(WP_ISSUE_TYPE_NODE, FOLLOW_UP)}])) == {
        "issue_type": "REQUIREMENT",
        "reason": "It asks for new behaviour.",
    }
    relative = _content(answer([{"content": _node_prompt(WP_IS_RELATIVE_NODE, prd_ctx)}]))
    assert relative["is_relative"] == "YES"
    prd = _content(answer([{"content": _node_prompt(REFINED_PRD_NODE, prd_ctx)}]))
    assert prd["Refined Requirements"] == FOLLOW_UP
    assert set(prd) == {c.key for c in REFINED_PRD_NODE.children.values()}

    old_design = json.dumps({"Implementation approach": f"Requirement: {FIRST} | x"})
    design_ctx = f"### Legacy Content\n{old_design}\n\n### New Requirements\n{json.dumps(prd)}\n"
    design = _content(answer([{"content": _node_prompt(REFINED_DESIGN_NODE, design_ctx)}]))
    files = design["Refined File list"]
    assert files == ["main.py", "calculator_add_subtract.py", "add_high_score.py", "utils.py"]

    task_ctx = f"### Legacy Content\n{{}}\n\n### New Requirements\n{json.dumps(design)}\n"
    tasks = _content(answer([{"content": _node_prompt(REFINED_PM_NODE, task_ctx)}]))
    assert (
        tasks["Refined Task list"][-1] == "main.py"
        and "add_high_score.py" in tasks["Refined Task list"]
    )
    plan_ctx = f"## User New Requirements\n{FOLLOW_UP}\n\n## Design\n{json.dumps(design)}\n"
    plan = _content(answer([{"content": _node_prompt(WRITE_CODE_PLAN_AND_CHANGE_NODE, plan_ctx)}]))
    assert plan["Development Plan"] and plan["Incremental Change"]

    code_prompt = REFINED_TEMPLATE.format(
        user_requirement=FOLLOW_UP,
        code_plan_and_change=json.dumps(plan),
        design=json.dumps(design),
        task=json.dumps(tasks),
        code="",
        logs="",
        feedback="",
        filename="add_high_score.py",
        summary_log="",
    )
    assert incremental.classify(code_prompt) == "inc_write_code"
    code = answer([{"content": code_prompt}])
    assert code.startswith("## Code: add_high_score.py\n```python\n")
    source = code.split("```python\n", 1)[1].rsplit("```", 1)[0]
    compile(source, "add_high_score.py", "exec")
    assert "def add_high_score() -> str:" in source and FOLLOW_UP in source


def test_first_run_prompts_are_not_taken_for_incremental_ones() -> None:
    from metagpt.actions.write_prd_an import WRITE_PRD_NODE

    prompt = WRITE_PRD_NODE.compile(context=f"### Original Requirements\n{FIRST}", schema="json")
    assert incremental.classify(prompt) is None


def test_a_follow_up_named_like_a_first_run_file_gets_its_own_module() -> None:
    assert incremental.feature_module("utils") == "utils_feature"
    assert incremental.refined_files(FIRST, "main") == [
        "main.py",
        "calculator_add_subtract.py",
        "main_feature.py",
        "utils.py",
    ]
