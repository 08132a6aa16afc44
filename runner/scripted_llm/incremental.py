"""Scripted answers for MetaGPT 0.8.2's incremental mode (a follow-up on an existing project).

With ``inc=True`` the roles ask different questions: WritePRD classifies the new requirement
(``issue_type``) and asks whether it relates to the old PRD (``is_relative``), then every
document is *refined* (``Refined Requirements``, ``Refined Implementation Approach``, ``Refined
Task list``), the Engineer plans the change (``WriteCodePlanAndChange``: ``Development Plan``)
and writes code from ``REFINED_TEMPLATE``. Like :mod:`runner.scripted_llm.answers`, each answer
comes from the prompt alone: the follow-up travels in the refined documents the flow quotes back.

The follow-up's visible change: a new module named after it (``high_score_table.py`` for "add a
high score table") with a function of the same name, listed in the refined task list, and a
``main.py`` that calls it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from runner.scripted_llm.answers import (
    NODES_HEADER,
    _fenced,
    _filename,
    _fill_nodes,
    _json_field,
    _one_line,
    code_for,
    core_module,
    file_list,
    find_requirement,
    slug,
)

# Checked before the first run's markers: REFINED_TEMPLATE and the refined nodes quote (or
# resemble) the first run's documents. Node markers are looked for after ``## nodes:`` only.
NODE_KINDS: list[tuple[str, str]] = [
    ("inc_issue_type", "- issue_type:"),
    ("inc_is_relative", "- is_relative:"),
    ("inc_plan_and_change", "- Development Plan:"),
    ("inc_tasks", "- Refined Task list:"),
    ("inc_design", "- Refined Implementation Approach:"),
    ("inc_prd", "- Refined Requirements:"),
]
INC_CODE_MARKER = "The main goal is to complete incremental development by combining legacy code"
FOLLOW_UP = "Follow-up: "


def classify(prompt: str) -> str | None:
    """The incremental action a prompt belongs to, or None (then the first-run kinds apply)."""
    nodes = prompt.split(NODES_HEADER, 1)
    if len(nodes) == 2:
        for kind, marker in NODE_KINDS:
            if marker in nodes[1]:
                return kind
    if INC_CODE_MARKER in prompt:
        return "inc_write_code"
    return None


def _section(prompt: str, header: str) -> str | None:
    """The text under the last ``header`` line, up to the next heading of any level."""
    at = prompt.rfind(header)
    if at < 0:
        return None
    body = prompt[at + len(header) :].lstrip("\n")
    return re.split(r"\n#{1,3} ", body, maxsplit=1)[0].strip()


def _context(prompt: str) -> str:
    # A node prompt's format example quotes MetaGPT's own sample ("Create a 2048 game"): only
    # what comes before it is ours. The PRD's context ends with a "-----" rule.
    return prompt.split("## format example", 1)[0].replace("\n-----\n", "\n")


def find_follow_up(prompt: str) -> str:
    """Recover the follow-up requirement from an incremental prompt."""
    prompt = _context(prompt)
    if (text := _section(prompt, "## User New Requirements")) is not None and text:
        return text
    if (text := _section(prompt, "### New Requirements")) is not None and text:
        # PRD: the raw requirement; design and tasks: the refined document before them.
        for key in ("Refined Requirements", "Refined Implementation Approach"):
            if (value := _json_field(text, key)) is not None:
                return _after_follow_up(value) if key != "Refined Requirements" else value
        return text
    if (value := _json_field(prompt, "Refined Implementation Approach")) is not None:
        return _after_follow_up(value)
    return "a follow-up change"


def _after_follow_up(approach: str) -> str:
    m = re.search(re.escape(FOLLOW_UP) + r"(.*?)\s*\|", approach, re.S)
    return m.group(1) if m else approach


def find_original(prompt: str) -> str:
    """The task's first requirement: it names the core module every run keeps."""
    prompt = _context(prompt)
    if (approach := _json_field(prompt, "Refined Implementation Approach")) is not None:
        m = re.search(r"Requirement: (.*?)\s*\|", approach, re.S)
        if m:
            return m.group(1)
    return find_requirement(prompt)


def feature_module(follow_up: str) -> str:
    """The new module a follow-up adds (never one of the first run's files)."""
    name = slug(follow_up)
    return f"{name}_feature" if name in ("main", "utils") else name


def refined_files(original: str, follow_up: str) -> list[str]:
    """The first run's files plus the follow-up's module."""
    new = f"{feature_module(follow_up)}.py"
    old = file_list(original)
    return old if new in old else [*old[:-1], new, old[-1]]


def _prd(original: str, follow_up: str) -> dict[str, Any]:
    return {
        "Language": "en_us",
        "Programming Language": "Python",
        "Refined Requirements": follow_up,
        "Project Name": slug(original),
        "Refined Product Goals": [f"Deliver: {original}", f"Add: {follow_up}"],
        "Refined User Stories": [f"As a user, I want {follow_up}"],
        "Competitive Analysis": ["Manual work: slow and error-prone"],
        "Competitive Quadrant Chart": "quadrantChart\n    title Reach\n    Ours: [0.6, 0.7]",
        "Refined Requirement Analysis": [f"Keep: {original}", f"Add: {follow_up}"],
        "Refined Requirement Pool": [["P0", f"Follow-up: {follow_up}"]],
        "UI Design draft": "A command-line interface printing a short report.",
        "Anything UNCLEAR": "",
    }


def _design(original: str, follow_up: str) -> dict[str, Any]:
    return {
        "Refined Implementation Approach": f"Requirement: {original} | {FOLLOW_UP}{follow_up} | "
        f"a new module {feature_module(follow_up)} called from main.",
        "Project name": slug(original),
        "Refined File list": refined_files(original, follow_up),
        "Refined Data structures and interfaces": "classDiagram\n    class Core {\n"
        "        +run() str\n    }",
        "Refined Program call flow": "sequenceDiagram\n    participant M as Main\n"
        "    participant C as Core\n    M->>C: run()",
        "Anything UNCLEAR": "",
    }


def _tasks(original: str, follow_up: str) -> dict[str, Any]:
    files = refined_files(original, follow_up)
    order = ["utils.py", *[f for f in files if f not in ("utils.py", "main.py")], "main.py"]
    return {
        "Required packages": [],
        "Required Other language third-party packages": ["No third-party dependencies"],
        "Refined Logic Analysis": [[f, f"Part of {slug(original)}"] for f in order],
        "Refined Task list": order,
        "Full API spec": "",
        "Refined Shared Knowledge": f"Requirement: {original} | {FOLLOW_UP}{follow_up} |",
        "Anything UNCLEAR": "",
    }


def _plan(original: str, follow_up: str) -> dict[str, Any]:
    feature = feature_module(follow_up)
    return {
        "Development Plan": [
            f"Add {feature}.py with a function {feature}()",
            f"Update main.py to call {feature}()",
        ],
        "Incremental Change": [
            f"```diff\n--- Old/main.py\n+++ New/main.py\n+from {feature} import {feature}\n```"
        ],
    }


def inc_code_for(filename: str, original: str, follow_up: str) -> str:
    """Source for one file of a follow-up: the new module, main.py calling it, or as before."""
    feature = feature_module(follow_up)
    module = filename.rsplit("/", 1)[-1].removesuffix(".py")
    doc = _one_line(follow_up)
    if module == feature:
        return f'''"""Module for: {_one_line(original)}. {FOLLOW_UP}{doc}"""

FOLLOW_UP: str = {doc!r}


def {feature}() -> str:
    """What the follow-up adds."""
    return f"Added: {{FOLLOW_UP}}"
'''
    if module == "main":
        core = core_module(original)
        return f'''"""Module for: {_one_line(original)}"""

from {core} import Core
from {feature} import {feature}


def main() -> int:
    """Print the report, then the follow-up's addition, and exit 0."""
    print(Core().run())
    print({feature}())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''
    return code_for(filename, original)


def answer(kind: str, prompt: str) -> str:
    """The scripted reply to an incremental-mode prompt of ``kind`` (from :func:`classify`)."""
    if kind == "inc_issue_type":
        reply = {"issue_type": "REQUIREMENT", "reason": "It asks for new behaviour."}
        return "[CONTENT]\n" + json.dumps(reply) + "\n[/CONTENT]"
    if kind == "inc_is_relative":
        reply = {"is_relative": "YES", "reason": "It extends the same product."}
        return "[CONTENT]\n" + json.dumps(reply) + "\n[/CONTENT]"
    original, follow_up = find_original(prompt), find_follow_up(prompt)
    if kind == "inc_prd":
        return _fill_nodes(prompt, _prd(original, follow_up))
    if kind == "inc_design":
        return _fill_nodes(prompt, _design(original, follow_up))
    if kind == "inc_tasks":
        return _fill_nodes(prompt, _tasks(original, follow_up))
    if kind == "inc_plan_and_change":
        return _fill_nodes(prompt, _plan(original, follow_up))
    name = _filename(prompt, r"## Write/Rewrite Code: Only write one file (\S+?),", "module.py")
    return _fenced(inc_code_for(name, original, follow_up), f"## Code: {name}\n")
