"""Deterministic answers for every LLM call of MetaGPT 0.8.2's software-company flow.

The server is stateless: each answer is derived from the prompt alone. The requirement travels
through the documents the flow quotes back to us (PRD "Original Requirements", then the design's
"Implementation approach"), so later stages can recover it without shared state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "create",
        "write",
        "make",
        "build",
        "implement",
        "develop",
        "simple",
        "small",
        "basic",
        "please",
        "that",
        "which",
        "with",
        "for",
        "and",
        "or",
        "to",
        "of",
        "in",
        "on",
        "using",
        "use",
        "python",
        "program",
        "app",
        "application",
        "me",
        "i",
        "want",
        "need",
    ]
)

# Order matters: later documents quote earlier prompts, so the most specific markers come first.
KINDS: list[tuple[str, str]] = [
    ("code_review", "# Code Review Format example 1"),
    ("rewrite_code", "# Instruction: rewrite the"),
    ("summarize_run", "your role is summarize the code running result"),
    ("debug_error", "Role: You are a Development Engineer or QA engineer"),
    ("write_test", "1. Role: You are a QA engineer"),
    ("write_code", "write google-style, elegant, modular"),
    ("is_pass", "Does the above log indicate anything that needs to be done?"),
    ("summarize_code", "your main task is to review the code"),
]
NODE_KINDS: list[tuple[str, str]] = [
    ("write_tasks", "- Task list:"),
    ("write_design", "- Implementation approach:"),
    ("write_prd", "- Product Goals:"),
]
NODES_HEADER = "## nodes:"


def classify(prompt: str) -> str:
    """Name the flow action a prompt belongs to ("unknown" if none matches)."""
    for kind, marker in KINDS:
        if marker in prompt:
            return kind
    nodes = prompt.split(NODES_HEADER, 1)
    if len(nodes) == 2:
        for kind, marker in NODE_KINDS:
            if marker in nodes[1]:
                return kind
    return "unknown"


def _json_field(prompt: str, key: str) -> str | None:
    """Decode the first JSON string value of `key` quoted anywhere in the prompt."""
    m = re.search(r'"' + re.escape(key) + r'"\s*:\s*"((?:[^"\\]|\\.)*)"', prompt)
    if not m:
        return None
    try:
        return json.loads('"' + m.group(1) + '"')
    except json.JSONDecodeError:
        return None


FORMAT_EXAMPLE = re.compile(r"## format example\n.*?(?=\n## nodes:|\Z)", re.S)


def without_examples(prompt: str) -> str:
    """The prompt without MetaGPT's format examples.

    An ActionNode prompt quotes a filled-in example ("Original Requirements": "Create a 2048
    game", "Project Name": "game_2048", ...): searched first, it would win over the user's
    requirement, and every task would become a 2048 game.
    """
    return FORMAT_EXAMPLE.sub("", prompt)


def find_requirement(prompt: str) -> str:
    """Recover the user requirement from whatever document the prompt quotes."""
    prompt = without_examples(prompt)
    if value := _json_field(prompt, "Original Requirements"):
        return value
    if approach := _json_field(prompt, "Implementation approach"):
        m = re.search(r"Requirement: (.*?)\s*\|", approach, re.S)
        if m:
            return m.group(1)
    m = re.search(r"### Original Requirements\n(.*?)(?:\n###|\Z)", prompt, re.S)
    if m and m.group(1).strip():
        return m.group(1).strip()
    m = re.search(r'"""Module for: (.*?)"""', prompt)
    return m.group(1) if m else "a small utility"


def slug(requirement: str) -> str:
    """A Python-identifier project name derived from the requirement."""
    words = [w for w in re.findall(r"[a-z0-9]+", requirement.lower()) if w not in STOPWORDS]
    name = "_".join(words[:3]) or "project"
    return name if name[0].isalpha() else f"app_{name}"


def core_module(requirement: str) -> str:
    """The core module's name: the slug, unless that clashes with the other files."""
    name = slug(requirement)
    return f"{name}_core" if name in ("main", "utils") else name


def file_list(requirement: str) -> list[str]:
    """The files the design promises; every later stage must agree on this list."""
    return ["main.py", f"{core_module(requirement)}.py", "utils.py"]


def _one_line(text: str) -> str:
    # Keeps the requirement safe inside a Python docstring and a single-line string.
    return " ".join(text.replace('"', "'").replace("\\", "/").split())[:400]


def _prd(req: str) -> dict[str, Any]:
    name = slug(req)
    return {
        "Language": "en_us",
        "Programming Language": "Python",
        "Original Requirements": req,
        "Project Name": name,
        "Product Goals": [f"Deliver: {req}", "Keep it simple and testable", "Run offline"],
        "User Stories": [f"As a user, I want {req} so that my need is met"],
        "Competitive Analysis": ["Manual work: slow and error-prone"],
        "Competitive Quadrant Chart": "quadrantChart\n    title Reach\n    Ours: [0.6, 0.7]",
        "Requirement Analysis": f"The product must satisfy: {req}",
        "Requirement Pool": [["P0", f"Core: {req}"], ["P1", "Command-line entry point"]],
        "UI Design draft": "A command-line interface printing a short report.",
        "Anything UNCLEAR": "",
    }


def _design(req: str) -> dict[str, Any]:
    name = slug(req)
    return {
        "Implementation approach": f"Requirement: {req} | A dependency-free Python package with a "
        "core module, a helper module and an entry point.",
        "Project name": name,
        "File list": file_list(req),
        "Data structures and interfaces": "classDiagram\n    class Core {\n"
        "        +str requirement\n        +run() str\n    }",
        "Program call flow": "sequenceDiagram\n    participant M as Main\n"
        "    participant C as Core\n    M->>C: run()\n    C-->>M: report",
        "Anything UNCLEAR": "",
    }


def _tasks(req: str) -> dict[str, Any]:
    name = core_module(req)
    return {
        "Required packages": [],
        "Required Other language third-party packages": ["No third-party dependencies"],
        "Logic Analysis": [
            ["utils.py", "Text helpers"],
            [f"{name}.py", "Core class, imports utils"],
            ["main.py", f"Entry point, imports {name}"],
        ],
        "Task list": ["utils.py", f"{name}.py", "main.py"],
        "Full API spec": "",
        "Shared Knowledge": f"Requirement: {req}",
        "Anything UNCLEAR": "",
    }


def _node_keys(prompt: str) -> list[tuple[str, str]]:
    """The (key, type) pairs listed after the `## nodes:` header."""
    section = prompt.split(NODES_HEADER, 1)[-1].split("\n## constraint", 1)[0]
    return re.findall(r"^- ([^:\n]+): ([^#\n]+?)\s*(?:#|$)", section, re.M)


def _fill_nodes(prompt: str, known: dict[str, Any]) -> str:
    """Answer a structured node: every key the prompt asks for, typed as asked."""
    out: dict[str, Any] = {}
    for key, type_ in _node_keys(prompt):
        if key in known:
            out[key] = known[key]
        elif "List[List" in type_:
            out[key] = [["none", "none"]]
        elif "List" in type_:
            out[key] = []
        else:
            out[key] = ""
    return "[CONTENT]\n" + json.dumps(out, indent=2) + "\n[/CONTENT]"


def code_for(filename: str, req: str) -> str:
    """Compilable Python source for one file of the task list."""
    name = core_module(req)
    doc = _one_line(req)
    module = filename.rsplit("/", 1)[-1].removesuffix(".py")
    if module == "utils":
        return f'''"""Module for: {doc}"""


def words(text: str) -> list[str]:
    """Split text into lower-case words."""
    return [w.lower() for w in text.split() if w.strip()]


def title(text: str) -> str:
    """Title-case a sentence."""
    return " ".join(w.capitalize() for w in words(text))
'''
    if module == name:
        return f'''"""Module for: {doc}"""

from utils import title, words

REQUIREMENT: str = {doc!r}


class Core:
    """Holds the requirement and produces a report about it."""

    def __init__(self, requirement: str = REQUIREMENT) -> None:
        self.requirement = requirement

    def run(self) -> str:
        """Return a one-line report."""
        return f"{{title(self.requirement)}} ({{len(words(self.requirement))}} words)"
'''
    if module == "main":
        return f'''"""Module for: {doc}"""

from {name} import Core


def main() -> int:
    """Print the report and exit 0."""
    print(Core().run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''
    if module.startswith("test_"):
        target = module.removeprefix("test_")
        return f'''"""Tests. Module for: {doc}"""

import importlib
import unittest


class TestModule(unittest.TestCase):
    """Smoke test: the module imports."""

    def test_import(self) -> None:
        self.assertIsNotNone(importlib.import_module("{target}"))


if __name__ == "__main__":
    unittest.main()
'''
    return f'''"""Module for: {doc}"""


def describe() -> str:
    """Describe this module."""
    return "{module}: part of {name}"
'''


def _fenced(code: str, header: str = "") -> str:
    return f"{header}```python\n{code}```\n"


def _filename(prompt: str, pattern: str, default: str) -> str:
    m = re.search(pattern, prompt)
    return m.group(1).strip() if m else default


def answer(messages: Iterable[dict[str, Any]]) -> str:
    """The scripted reply to a chat-completions request."""
    prompt = "\n".join(_text(m.get("content")) for m in messages)
    from runner.scripted_llm import incremental  # it builds on this module's helpers

    if (inc_kind := incremental.classify(prompt)) is not None:
        return incremental.answer(inc_kind, prompt)
    kind = classify(prompt)
    req = find_requirement(prompt)
    if kind == "write_prd":
        return _fill_nodes(prompt, _prd(req))
    if kind == "write_design":
        return _fill_nodes(prompt, _design(req))
    if kind == "write_tasks":
        return _fill_nodes(prompt, _tasks(req))
    if kind == "code_review":
        name = _filename(prompt, r"## Code to be Reviewed: (\S+)", "code.py")
        return (
            f"## Code Review: {name}\n1. Yes, the code follows the design.\n\n"
            "## Actions\n1. No action needed.\n\n## Code Review Result\nLGTM\n"
        )
    if kind in ("write_code", "rewrite_code"):
        name = _filename(prompt, r"## Code: (\S+?)\. Write code", "")
        name = name or _filename(prompt, r"## Code to be Reviewed: (\S+)", "module.py")
        return _fenced(code_for(name, req), f"## Code: {name}\n")
    if kind == "write_test":
        name = _filename(prompt, r"## (\S+?): Write test code", "test_module.py")
        return _fenced(code_for(name, req), f"## Code: {name}\n")
    if kind == "debug_error":
        name = _filename(prompt, r"## File To Rewrite:\s*(\S+)", "test_module.py")
        return _fenced(code_for(name, req))
    if kind == "summarize_run":
        return "## File To Rewrite:\nNone\n## Status:\nPASS\n## Send To:\nNoOne\n---\n"
    if kind == "is_pass":
        return '{"status": "YES"}'
    if kind == "summarize_code":
        return f"## Code Review\nAll files implement: {req}\n\n## TODOs\n{{}}\n"
    return f"Scripted reply. Requirement: {req}"


def _text(content: Any) -> str:
    """Flatten OpenAI message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
