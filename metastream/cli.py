"""``metastream``: create, follow and inspect tasks from a terminal.

Exit codes: 0 success / task COMPLETED, 1 task FAILED, 2 task CANCELLED, 3 gateway unreachable,
gave up reconnecting or timed out, 4 task or file not found, 5 other gateway error (including
authentication and refused requests), 6 database error (`metastream db`), 7 nothing to cancel
(the task had already finished), 64 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bus.messages import TERMINAL_STATUSES
from metastream.cli_api import (
    EXIT_ALREADY_FINISHED,
    EXIT_GATEWAY,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Api,
    CliError,
)
from metastream.cli_args import build_parser
from metastream.cli_follow import Display, follow_bus, follow_ws
from metastream.subscribe import (
    AuthError,
    BusUnavailable,
    GatewayError,
    GatewayUnreachable,
    TaskNotFound,
    default_url,
)

# --- commands --------------------------------------------------------------------------------


def llm_note(task: dict[str, Any]) -> str:
    """Which LLM a task runs on, in words (the REST task's ``llm`` field)."""
    match task.get("llm"):
        case "scripted" if task.get("test_mode"):
            return "offline scripted LLM, test mode"
        case "scripted":
            return "offline scripted LLM: no real LLM is configured (README: Use a real LLM)"
        case "configured":
            return "real LLM"
        case "synthetic":
            return "synthetic workload, no LLM"
    return "LLM unknown"


def _create(args: argparse.Namespace, api: Api) -> dict[str, Any]:
    body: dict[str, Any] = {"requirement": args.requirement, "test_mode": args.test_mode}
    if args.pace:
        body["pace"] = args.pace
    if args.use_qa:
        body["use_qa"] = True
    if args.n_round is not None:
        body["n_round"] = args.n_round
    if args.investment is not None:
        body["investment"] = args.investment
    if args.disconnect_policy:
        body["disconnect_policy"] = args.disconnect_policy
    for option in args.option:
        key, _, value = option.partition("=")
        if not key or not _:
            raise CliError(f"--option wants KEY=VALUE, got {option!r}", EXIT_USAGE)
        try:
            body[key] = json.loads(value)
        except ValueError:
            body[key] = value  # a bare string: -O note=hello
    if args.synthetic_events is not None:
        synthetic: dict[str, Any] = {"events": args.synthetic_events, "rate": args.synthetic_rate}
        if args.synthetic_exit_after is not None:
            synthetic["exit_after"] = args.synthetic_exit_after
            synthetic["exit_code"] = args.synthetic_exit_code
        body["synthetic"] = synthetic
    return dict(api.call("POST", "/api/tasks", json=body).json())


def cmd_create(args: argparse.Namespace, api: Api) -> int:
    task = _create(args, api)
    if args.json:
        print(json.dumps(task, ensure_ascii=False))
    else:
        print(task["id"])
        _say(
            f"task {task['id']} created, not started ({llm_note(task)}); start it with "
            f"`metastream tail {task['id']}` (following starts it) or POST /api/tasks/<id>/run"
        )
    return EXIT_OK


def cmd_run(args: argparse.Namespace, api: Api) -> int:
    task = _create(args, api)
    task_id = task["id"]
    api.call("POST", f"/api/tasks/{task_id}/run", "task")
    if args.detach:
        print(task_id)
        return EXIT_OK
    _say(f"task {task_id} started ({llm_note(task)}); Ctrl-C detaches (the task keeps running)")
    return _follow(args, api, task_id, last_event_id=0)


def cmd_tail(args: argparse.Namespace, api: Api) -> int:
    task_id = api.task_id(args.task_id)
    if not args.bus:
        # Fail fast on a gateway that isn't there at all; retries are for losing it later.
        task = api.call("GET", f"/api/tasks/{task_id}", f"task {task_id}").json()
        if not args.json:
            _say(f"task {task_id}: {task['status']} ({llm_note(task)})")
    return _follow(args, api, task_id, last_event_id=args.after)


def _follow(args: argparse.Namespace, api: Api, task_id: str, last_event_id: int) -> int:
    display = Display(task_id, args.json)
    try:
        with display:
            if getattr(args, "bus", False):
                coro = follow_bus(task_id, display, endpoint=args.endpoint, timeout=args.timeout)
            else:
                coro = follow_ws(
                    task_id,
                    display,
                    url=api.url,
                    token=args.token,
                    last_event_id=last_event_id,
                    retries=args.retries,
                    idle_timeout=args.idle_timeout,
                    timeout=args.timeout,
                )
            code = asyncio.run(coro)
    except KeyboardInterrupt:
        _say(f"detached; task {task_id} keeps running (metastream tail / cancel {task_id})")
        return EXIT_INTERRUPTED
    except TimeoutError as exc:
        raise CliError(
            f"gave up following {task_id} after {args.timeout:g} s", EXIT_UNREACHABLE
        ) from exc
    except TaskNotFound as exc:
        raise CliError(f"task {task_id} not found", EXIT_NOT_FOUND) from exc
    except AuthError as exc:
        raise CliError(api.auth_problem(), EXIT_GATEWAY) from exc
    except BusUnavailable as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from exc
    except GatewayUnreachable as exc:
        raise CliError(f"lost the gateway at {api.url}: {exc}", EXIT_UNREACHABLE) from exc
    except GatewayError as exc:
        raise CliError(f"gateway error: {exc}", EXIT_GATEWAY) from exc
    if display.final is not None and not args.json:
        final = display.final
        _say(f"task {task_id} {final.get('status')}: {final.get('last_message') or ''}".strip())
    return code


def cmd_say(args: argparse.Namespace, api: Api) -> int:
    """The next requirement of a COMPLETED task's conversation; follows the new run."""
    task_id = api.task_id(args.task_id)
    before = api.call("GET", f"/api/tasks/{task_id}", f"task {task_id}").json()
    body = {"requirement": args.requirement}
    task = api.call("POST", f"/api/tasks/{task_id}/messages", f"task {task_id}", json=body).json()
    return _after_new_run(args, api, task, before["last_event_id"])


def cmd_resume(args: argparse.Namespace, api: Api) -> int:
    """Continue a CANCELLED or FAILED task from its last completed round; follows it."""
    task_id = api.task_id(args.task_id)
    before = api.call("GET", f"/api/tasks/{task_id}", f"task {task_id}").json()
    task = api.call("POST", f"/api/tasks/{task_id}/resume", f"task {task_id}").json()
    return _after_new_run(args, api, task, before["last_event_id"])


def _after_new_run(args: argparse.Namespace, api: Api, task: dict[str, Any], after: int) -> int:
    run = task["runs"][-1]
    if args.detach:
        print(task["id"])
        return EXIT_OK
    _say(f"task {task['id']} run {run['run']} ({run['kind']}) {task['status']}; Ctrl-C detaches")
    return _follow(args, api, task["id"], last_event_id=after)


def cmd_ls(args: argparse.Namespace, api: Api) -> int:
    page = api.call("GET", "/api/tasks", params={"limit": args.limit, "offset": args.offset}).json()
    if args.json:
        for t in page["tasks"]:
            print(json.dumps(t, ensure_ascii=False))
        return EXIT_OK
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("ID", "STATUS", "PROGRESS", "LLM", "CREATED", "REQUIREMENT"):
        table.add_column(col, no_wrap=col != "REQUIREMENT", overflow="ellipsis")
    for t in page["tasks"]:
        requirement = " ".join(str(t["requirement"]).split())
        table.add_row(
            t["id"],
            t["status"],
            f"{float(t.get('progress') or 0):.0%}",
            str(t.get("llm") or "?"),
            str(t["created_at"])[:19].replace("T", " "),
            requirement[:60] + ("…" if len(requirement) > 60 else ""),
        )
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)
    shown = len(page["tasks"])
    _say(f"{shown} of {page['total']} tasks (offset {page['offset']})")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, api: Api) -> int:
    task_id = api.task_id(args.task_id)
    before = api.call("GET", f"/api/tasks/{task_id}", f"task {task_id}").json()
    if before["status"] in TERMINAL_STATUSES:
        # Nothing to cancel: said, and told apart from a cancel by its exit code.
        if args.json:
            print(json.dumps(before, ensure_ascii=False))
        raise CliError(
            f"task {task_id} had already finished: {before['status']}", EXIT_ALREADY_FINISHED
        )
    task = api.call("POST", f"/api/tasks/{task_id}/cancel", "task").json()
    if args.json:
        print(json.dumps(task, ensure_ascii=False))
    else:
        print(f"task {task_id}: {task['status']}")
    return EXIT_OK


def cmd_files(args: argparse.Namespace, api: Api) -> int:
    task_id = api.task_id(args.task_id)
    files = api.call("GET", f"/api/tasks/{task_id}/files", "task").json()["files"]
    if args.json:
        for f in files:
            print(json.dumps(f, ensure_ascii=False))
        return EXIT_OK
    for f in files:
        print(f"{f['size']:>10}  {f['path']}")
    if not files:
        _say(f"task {task_id} has no files yet")
    return EXIT_OK


def cmd_get(args: argparse.Namespace, api: Api) -> int:
    task_id = api.task_id(args.task_id)
    path = args.path.lstrip("/")
    if ".." in path.split("/"):
        # HTTP clients fold "a/../b" before sending: it would reach another endpoint.
        raise CliError(
            f"file {args.path!r} not found (outside the task's workspace)", EXIT_NOT_FOUND
        )
    resp = api.call("GET", f"/api/tasks/{task_id}/files/{path}", f"file {path!r} of the task")
    if args.output:
        try:
            Path(args.output).write_bytes(resp.content)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}", 1) from exc
        _say(f"wrote {len(resp.content)} bytes to {args.output}")
    else:
        sys.stdout.buffer.write(resp.content)
        sys.stdout.flush()
    return EXIT_OK


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


COMMANDS = {
    "create": cmd_create,
    "run": cmd_run,
    "tail": cmd_tail,
    "say": cmd_say,
    "resume": cmd_resume,
    "ls": cmd_ls,
    "cancel": cmd_cancel,
    "files": cmd_files,
    "get": cmd_get,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metastream`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "db":  # straight on the database: no gateway involved
        from metastream.cli_db import cmd_db

        return cmd_db(args)
    args.url = getattr(args, "url", None) or default_url()
    args.token = getattr(args, "token", None) or os.environ.get("METASTREAM_API_TOKEN") or None
    args.json = getattr(args, "json", False)
    if not args.url.startswith(("http://", "https://")):
        _say(f"metastream: error: --url must start with http:// or https://, got {args.url!r}")
        return EXIT_USAGE
    api = Api(args.url, args.token)
    try:
        return int(COMMANDS[args.command](args, api))
    except CliError as exc:
        _say(f"metastream: error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `metastream tail --json ID | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        api.http.close()


if __name__ == "__main__":
    sys.exit(main())
