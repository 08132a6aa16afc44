"""The ``metastream`` CLI as a user runs it: a real subprocess against a real stack."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from metastream.stack import Stack, free_port
from tests.helpers import create_task, poll_for, wait_status

# The installed entry point when there is one (that is what users run), else the module.
_ENTRY = Path(sys.executable).with_name("metastream")
CLI = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "metastream.cli"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the module: the CLI tests don't disturb each other, and it saves startups."""
    with Stack(tmp_path_factory.mktemp("cli") / "home") as s:
        yield s


def cli_env(stack: Stack, **extra: str) -> dict[str, str]:
    env = {**stack.env, "METASTREAM_URL": stack.url, **extra}
    env.pop("METASTREAM_API_TOKEN", None)
    return env


def cli(stack: Stack, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=cli_env(stack), capture_output=True, text=True, timeout=timeout
    )


class Running:
    """A CLI process whose stdout and stderr lines are collected as they arrive."""

    def __init__(
        self, stack: Stack, *args: str, cmd: list[str] | None = None, cwd: Path | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            cmd or [*CLI, *args],
            env=cli_env(stack),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"CLI still running; stderr: {self.err[-5:]}") from None
        for t in self._threads:
            t.join(5)
        return code

    def wait_line(self, text: str, timeout: float = 15, stream: str = "out") -> None:
        """Wait until a line of stdout (or stderr) contains ``text``."""
        lines = self.out if stream == "out" else self.err
        poll_for(lambda: any(text in line for line in list(lines)), timeout, what=repr(text))

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.out)]

    def event_ids(self) -> list[int]:
        return [m["data"]["event_id"] for m in self.messages() if m["type"] == "event"]


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def test_run_exits_0_on_completed_with_a_line_per_event(stack: Stack) -> None:
    r = cli(stack, "run", "make a thing", "--synthetic-events", "40", "--synthetic-rate", "0")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if " #" in line]
    assert len(lines) == 40 and "#40" in lines[-1], (r.stdout, r.stderr)
    assert "── COMPLETED 100%" in r.stdout
    assert "COMPLETED" in r.stderr.splitlines()[-1]
    no_traceback(r.stdout, r.stderr)


def test_run_exits_1_on_failed(stack: Stack, api: httpx.Client) -> None:
    r = cli(
        stack,
        "run",
        "fail please",
        "--synthetic-events=100",
        "--synthetic-exit-after=5",
        "--synthetic-exit-code=7",
    )
    assert r.returncode == 1, r.stderr
    assert "── FAILED" in r.stdout and "exit code 7" in r.stdout
    task_id = r.stderr.split()[1]
    assert api.get(f"/api/tasks/{task_id}").json()["status"] == "FAILED"
    no_traceback(r.stdout, r.stderr)


def test_run_exits_2_when_cancelled_while_following(stack: Stack, api: httpx.Client) -> None:
    run = Running(
        stack, "run", "--json", "long one", "--synthetic-events=100000", "--synthetic-rate=200"
    )
    poll_for(lambda: len(run.event_ids()) >= 20, 15, what="the CLI to print events")
    task_id = run.messages()[0]["data"]["task_id"]
    assert api.post(f"/api/tasks/{task_id}/cancel").status_code == 200

    assert run.wait(20) == 2
    last = run.messages()[-1]
    assert last["type"] == "state" and last["data"]["status"] == "CANCELLED"
    ids = run.event_ids()
    assert ids == list(range(1, len(ids) + 1))
    no_traceback(*run.err)


def test_json_output_is_one_message_per_line(stack: Stack) -> None:
    # Paced so the task is still running when the stream opens (a warm task is that fast).
    r = cli(
        stack,
        "--json",
        "run",
        "json please",
        "--synthetic-events",
        "300",
        "--synthetic-rate",
        "300",
    )
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(line) for line in r.stdout.splitlines()]
    assert msgs[0]["type"] == "connected"
    assert {m["type"] for m in msgs} <= {"connected", "state", "event", "heartbeat"}
    assert [m["data"]["event_id"] for m in msgs if m["type"] == "event"] == list(range(1, 301))
    assert msgs[-1] == {"type": "state", "data": msgs[-1]["data"]}
    assert msgs[-1]["data"]["status"] == "COMPLETED" and msgs[-1]["data"]["progress"] == 1.0


def test_tail_resumes_after_the_gateway_restarts(stack: Stack, api: httpx.Client) -> None:
    n = 3000
    task = create_task(api, synthetic={"events": n, "rate": 500})
    assert api.post(f"/api/tasks/{task['id']}/run").status_code == 200
    tail = Running(stack, "tail", "--json", task["id"])
    poll_for(lambda: len(tail.event_ids()) >= 300, 15, what="tail to print 300 events")

    stack.kill("gateway")
    # Let tail fail to reconnect at least twice, so events pile up that it must fetch later.
    poll_for(lambda: sum("retry" in e for e in tail.err) >= 2, 15, what="reconnect attempts")
    stack.start_component("gateway")
    stack.wait_healthy()

    assert tail.wait(40) == 0, tail.err[-5:]
    assert tail.event_ids() == list(range(1, n + 1))  # each exactly once, in order
    # (It resumed over a new WebSocket, or from the REST log if the task ended meanwhile.)
    assert tail.messages()[-1]["data"]["status"] == "COMPLETED"
    no_traceback(*tail.err)


def test_ls_cancel_files_get_and_id_prefixes(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, requirement="list me", synthetic={"events": 100000, "rate": 100})
    task_id = task["id"]
    api.post(f"/api/tasks/{task_id}/run")
    wait_status(api, task_id, {"RUNNING"})

    r = cli(stack, "ls", "--json")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["id"] == task_id
    r = cli(stack, "ls")
    assert r.returncode == 0 and task_id in r.stdout and "list me" in r.stdout

    r = cli(stack, "cancel", task_id[:8])  # a unique prefix is enough
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"task {task_id}: CANCELLED"
    assert api.get(f"/api/tasks/{task_id}").json()["status"] == "CANCELLED"

    # The workspace is the task's directory; what lands there is what `files` lists.
    src = stack.home / "tasks" / task_id / "app" / "main.py"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("print('hello')\n")
    r = cli(stack, "files", "--json", task_id)
    assert r.returncode == 0, r.stderr
    assert {"path": "app/main.py", "size": 15} in [json.loads(x) for x in r.stdout.splitlines()]
    r = cli(stack, "files", task_id)
    assert "app/main.py" in r.stdout
    r = cli(stack, "get", task_id, "app/main.py")
    assert r.returncode == 0 and r.stdout == "print('hello')\n"


def test_expected_failures_are_one_clear_line(stack: Stack, api: httpx.Client) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    task = create_task(api, synthetic={"events": 1})
    cases = [
        (["--url", f"http://127.0.0.1:{free_port()}", "ls"], 3, "cannot reach the gateway"),
        (["tail", unknown], 4, "not found"),
        (["--url", f"http://127.0.0.1:{free_port()}", "tail", unknown], 3, "cannot reach"),
        (["files", unknown], 4, "not found"),
        (["get", task["id"], "no/such.py"], 4, "not found"),
        (["cancel", "not-an-id!"], 64, "not a task id"),
        (["tail", "ffffffff"], 4, "no recent task id"),
        (["frobnicate"], 64, "invalid choice"),
        (["run", "x", "-O", "novalue"], 64, "KEY=VALUE"),
        (["run", "x", "-O", "n_round=999"], 5, "invalid request: n_round: Input should be less"),
        (["run", "x", "-O", "frobnicate=1"], 5, "invalid request: frobnicate: unknown option"),
        (["get", task["id"], "../../../etc/passwd"], 4, "not found (outside the task's"),
        (["get", task["id"], "a/../../x"], 4, "not found"),
        ([], 64, "required"),
    ]
    for args, code, text in cases:
        r = cli(stack, *args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert text in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) <= 2, r.stderr  # one line (+ usage)
        assert "{" not in r.stderr, r.stderr  # no raw JSON
        no_traceback(r.stdout, r.stderr)


def test_token_is_sent_but_never_printed(stack: Stack) -> None:
    secret = "s3cr3t-token-value"
    env = {**cli_env(stack), "METASTREAM_API_TOKEN": secret}
    r = subprocess.run(
        [*CLI, "tail", "00000000-0000-4000-8000-000000000000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode in (4, 5)  # not found, or refused if the gateway checks tokens
    assert secret not in r.stdout + r.stderr


@pytest.mark.metagpt
def test_test_mode_run_then_files_and_get(stack: Stack) -> None:
    """The real MetaGPT flow on the offline scripted LLM, then its generated code."""
    r = cli(stack, "run", "a command-line todo list", "--test-mode", timeout=90)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    for role in ("ProductManager", "Architect", "ProjectManager", "Engineer"):
        assert f" {role} " in r.stdout
    assert "▶ WriteCode" in r.stdout and "wrote " in r.stdout
    task_id = r.stderr.split()[1]

    listed = [json.loads(x) for x in cli(stack, "files", "--json", task_id).stdout.splitlines()]
    code = [f for f in listed if f["path"].endswith(".py")]
    assert code, listed
    r = cli(stack, "get", task_id, code[0]["path"])
    assert r.returncode == 0 and len(r.stdout.encode()) == code[0]["size"]


def test_token_auth(tmp_path: Path) -> None:
    """With tokens configured, the CLI works with --token and fails clearly without."""
    secret = "cli-test-token"
    with Stack(tmp_path / "home", env={"METASTREAM_API_TOKEN": secret}) as s:
        if httpx.get(f"{s.url}/api/tasks", timeout=10).status_code == 200:
            pytest.skip("this gateway does not enforce METASTREAM_API_TOKEN")
        args = ["run", "authorized", "--synthetic-events", "20"]
        r = cli(s, *args)  # cli_env drops the token from the environment
        assert r.returncode == 5 and "needs an API token" in r.stderr, r.stderr
        r = cli(s, "--token", "not-the-token", *args)
        assert r.returncode == 5 and "refused the API token given" in r.stderr, r.stderr
        assert "not-the-token" not in r.stderr
        r = cli(s, "--token", secret, *args)
        assert r.returncode == 0, r.stderr
        assert secret not in r.stdout + r.stderr
        # The client library reads METASTREAM_API_TOKEN as the CLI does.
        task_id = httpx.post(
            f"{s.url}/api/tasks",
            json={"requirement": "x", "synthetic": {"events": 3}},
            headers={"Authorization": f"Bearer {secret}"},
        ).json()["id"]
        program = (
            "import asyncio, sys\n"
            "from metastream.subscribe import stream\n"
            "async def main():\n"
            "    async for m in stream(sys.argv[1], sys.argv[2]):\n"
            "        print(m['type'])\n"
            "asyncio.run(main())\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", program, task_id, s.url],
            env={**cli_env(s), "METASTREAM_API_TOKEN": secret},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split().count("event") == 3 and "state" in done.stdout


def test_create_without_starting_then_run_it(stack: Stack, api: httpx.Client) -> None:
    r = cli(stack, "create", "a snake game", "--test-mode", "--pace", "demo")
    assert r.returncode == 0, r.stderr
    task_id = r.stdout.strip()
    assert "created, not started" in r.stderr and "offline scripted LLM, test mode" in r.stderr
    task = api.get(f"/api/tasks/{task_id}").json()
    assert task["status"] == "PENDING" and task["options"]["pace"] == "demo"
    r = cli(stack, "ls")
    row = next(line for line in r.stdout.splitlines() if task_id in line)
    assert "scripted" in row and "PENDING" in row
    r = cli(stack, "create", "a synthetic one", "--synthetic-events", "5", "--json")
    created = json.loads(r.stdout)
    assert created["status"] == "PENDING" and created["llm"] == "synthetic"
    assert api.post(f"/api/tasks/{created['id']}/run").status_code == 200
    assert wait_status(api, created["id"], {"COMPLETED", "FAILED"})["status"] == "COMPLETED"


def test_cancel_of_a_finished_task_says_so(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api, synthetic={"events": 3})
    api.post(f"/api/tasks/{task['id']}/run")
    wait_status(api, task["id"], {"COMPLETED"})
    r = cli(stack, "cancel", task["id"])
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert f"task {task['id']} had already finished: COMPLETED" in r.stderr
    assert api.get(f"/api/tasks/{task['id']}").json()["status"] == "COMPLETED"


def test_tail_bus_names_the_endpoint_and_gives_up_without_a_bus(
    stack: Stack, tmp_path: Path
) -> None:
    missing = f"ipc://{tmp_path}/no-such-bus.sock"
    task_id = "00000000-0000-4000-8000-000000000000"
    r = cli(stack, "tail", "--bus", "--endpoint", missing, task_id, timeout=40)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert f"reading the bus at {missing}" in r.stderr
    assert f"no answer from the bus at {missing} within 10 s" in r.stderr
    assert "the socket does not exist" in r.stderr
    no_traceback(r.stdout, r.stderr)
