"""The offline scripted LLM, over real HTTP with the openai client (no MetaGPT import)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from runner.scripted_llm import ScriptedLLM
from runner.scripted_llm.answers import answer, classify, code_for, file_list, slug

REPO = Path(__file__).resolve().parents[2]
REQ = 'Create a "2048" game in the terminal'


def _nodes_prompt(context: str, nodes: list[str]) -> str:
    # Mirrors ActionNode's SIMPLE_TEMPLATE: quoted documents first, the node list after.
    listing = "\n".join(f"- {n}" for n in nodes)
    return f'## context\n{context}\n\n## nodes: "<node>: <type>  # <instruction>"\n{listing}\n'


PRD_PROMPT = _nodes_prompt(
    f"### Project Name\n\n### Original Requirements\n{REQ}\n\n### Search Information\n-",
    [
        "Language: <class 'str'>  # lang",
        "Original Requirements: <class 'str'>  # req",
        "Product Goals: typing.List[str]  # goals",
        "Requirement Pool: typing.List[typing.List[str]]  # pool",
        "Some New Key: <class 'str'>  # unknown keys still get a typed value",
    ],
)


def _example_prompt(requirement: str) -> str:
    """The shape of MetaGPT 0.8.2's WritePRD prompt: a filled-in example after the context."""
    example = json.dumps(
        {"Original Requirements": "Create a 2048 game", "Project Name": "game_2048"}, indent=4
    )
    return (
        f"\n## context\n\n### Project Name\n\n\n### Original Requirements\n{requirement}\n\n"
        f"### Search Information\n-\n\n\n-----\n\n## format example\n[CONTENT]\n{example}\n"
        '[/CONTENT]\n\n## nodes: "<node>: <type>  # <instruction>"\n'
        "- Original Requirements: <class 'str'>  # Place the original user's requirements here.\n"
        "- Project Name: <class 'str'>  # Name the project using snake case style\n"
        "- Product Goals: typing.List[str]  # goals\n\n## constraint\nLanguage: ...\n"
    )


@pytest.mark.parametrize(
    ("requirement", "module"),
    [("a snake game", "snake_game"), ("Build a todo list CLI", "todo_list_cli")],
)
def test_answers_follow_the_requirement_not_metagpts_example(requirement, module):
    text = answer([{"role": "user", "content": _example_prompt(requirement)}])
    prd = json.loads(re.search(r"\[CONTENT\](.*)\[/CONTENT\]", text, re.S).group(1))
    assert prd["Original Requirements"] == requirement
    assert prd["Project Name"] == module
    assert all(requirement in goal for goal in prd["Product Goals"][:1])
    assert "2048" not in text
    assert file_list(requirement) == ["main.py", f"{module}.py", "utils.py"]
    # Deterministic: the same prompt, the same answer.
    assert text == answer([{"role": "user", "content": _example_prompt(requirement)}])


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


def _client(server: ScriptedLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10)


def test_non_streaming_answers_prd_with_usage(llm):
    rsp = _client(llm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": PRD_PROMPT}]
    )
    text = rsp.choices[0].message.content
    body = json.loads(re.search(r"\[CONTENT\](.*)\[/CONTENT\]", text, re.S).group(1))
    assert body["Original Requirements"] == REQ
    assert isinstance(body["Product Goals"], list) and body["Product Goals"]
    assert body["Requirement Pool"] and isinstance(body["Requirement Pool"][0], list)
    assert body["Some New Key"] == ""
    assert rsp.usage.prompt_tokens > 0 and rsp.usage.completion_tokens > 0
    assert llm.requests == 1


def test_streaming_sends_usage_in_final_chunk(llm):
    stream = _client(llm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": PRD_PROMPT}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3, "long answers are streamed in pieces"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert text == answer([{"role": "user", "content": PRD_PROMPT}])


def test_every_flow_action_is_recognised():
    design = json.dumps({"Implementation approach": f"Requirement: {REQ} | simple"})
    cases = {
        "write_prd": PRD_PROMPT,
        "write_design": _nodes_prompt(
            f'{{"Original Requirements": {json.dumps(REQ)}}}',
            [
                "Implementation approach: <class 'str'>  # x",
                "File list: typing.List[str]  # x",
            ],
        ),
        "write_tasks": _nodes_prompt(design, ["Task list: typing.List[str]  # x"]),
        "write_code": f"{design}\nwrite google-style, elegant, modular\n"
        "## Code: main.py. Write code with triple quoto, based on",
        "code_review": f"{design}\n# Code Review Format example 1\n"
        "## Code to be Reviewed: utils.py",
        "write_test": f"{design}\n1. Role: You are a QA engineer\n"
        "## test_utils.py: Write test code",
        "summarize_run": "your role is summarize the code running result",
        "is_pass": "Does the above log indicate anything that needs to be done?",
    }
    for kind, prompt in cases.items():
        assert classify(prompt) == kind, kind
        assert answer([{"role": "user", "content": prompt}])
    # Quoted earlier documents must not confuse the node-based markers.
    assert classify("- Task list: quoted\n" + PRD_PROMPT) == "write_prd"


def test_code_for_every_listed_file_compiles():
    for req in (
        REQ,
        "write a CLI todo app with 'quotes' and \\backslashes\\ {braces}",
        "42",
        "main",
    ):
        assert slug(req).isidentifier()
        assert len(set(file_list(req))) == 3
        for name in [*file_list(req), "test_utils.py", "other.py"]:
            compile(code_for(name, req), name, "exec")


def test_generated_project_runs(tmp_path):
    for name in file_list(REQ):
        (tmp_path / name).write_text(code_for(name, REQ))
    done = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "2048" in done.stdout


def test_write_code_answer_is_one_fenced_block():
    design = json.dumps({"Implementation approach": f"Requirement: {REQ} | simple"})
    prompt = f"{design}\nwrite google-style, elegant, modular\n## Code: utils.py. Write code with"
    text = answer([{"role": "user", "content": prompt}])
    assert text.count("```") == 2
    assert "2048" in text, "the code is derived from the requirement"


def test_fault_http500():
    with (
        ScriptedLLM(fault="http500") as server,
        pytest.raises(openai.InternalServerError, match="scripted fault"),
    ):
        _client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )


def test_fault_garbage_is_unparsable():
    with ScriptedLLM(fault="garbage") as server:
        rsp = _client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": PRD_PROMPT}]
        )
    text = rsp.choices[0].message.content
    assert "[/CONTENT]" not in text and "```" not in text


def test_fault_slow_delays_each_answer():
    with ScriptedLLM(fault="slow", slow_delay=0.5) as server:
        started = time.monotonic()
        stream = _client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": PRD_PROMPT}], stream=True
        )
        chunks = list(stream)
    assert time.monotonic() - started >= 0.5
    assert chunks[-1].usage is not None


def test_unknown_fault_is_rejected():
    with pytest.raises(ValueError, match="unknown scripted fault"):
        ScriptedLLM(fault="explode")


@pytest.mark.timeout(30)
def test_standalone_server_prints_url_and_serves():
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.scripted_llm", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url), url
        client = openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=10)
        rsp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert rsp.choices[0].message.content
        assert [m.id for m in client.models.list()] == ["scripted-metagpt"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_demo_pace_streams_slowly_in_small_pieces():
    from runner.scripted_llm.server import PACES

    size, pause, thinking = PACES["demo"]
    messages = [{"role": "user", "content": "hello"}]
    expected = answer(messages)
    with ScriptedLLM(pace="demo") as server:
        started = time.monotonic()
        chunks = list(
            _client(server).chat.completions.create(model="m", messages=messages, stream=True)
        )
        took = time.monotonic() - started
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    pieces = -(-len(expected) // size)
    assert len(chunks) == pieces + 1  # and the final chunk with usage
    assert took >= thinking + (pieces - 1) * pause
    assert len(expected) / took < 150, "readable: well under 150 characters a second"


def test_unknown_pace_is_rejected():
    with pytest.raises(ValueError, match="unknown pace"):
        ScriptedLLM(pace="ludicrous")
