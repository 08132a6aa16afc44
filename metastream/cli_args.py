"""The ``metastream`` command line: arguments, defaults and help."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from metastream.cli_api import EXIT_USAGE

EPILOG = (
    "exit codes: 0 success / COMPLETED, 1 FAILED, 2 CANCELLED, 3 gateway unreachable or timed "
    "out, 4 not found, 5 other gateway error or refused request, 6 database error (db), "
    "7 cancel: the task had already finished, 64 usage error, 130 interrupted"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse's default (2) would read as "task CANCELLED".
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _common() -> _Parser:
    # SUPPRESS: an option given before the command must survive the subcommand's defaults.
    p = _Parser(add_help=False)
    p.add_argument("--url", default=argparse.SUPPRESS, help="gateway URL (env METASTREAM_URL)")
    p.add_argument(
        "--token", default=argparse.SUPPRESS, help="API token (env METASTREAM_API_TOKEN)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print raw messages, one JSON object per line",
    )
    return p


def _following(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retries", type=int, default=20, help="reconnect attempts in a row (20)")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="reconnect when nothing arrives for this long (60 s)",
    )
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")


def _creating(run: argparse.ArgumentParser) -> None:
    """The create options shared by ``run`` and ``create``."""
    run.add_argument("requirement", help="what to build")
    run.add_argument("--test-mode", action="store_true", help="use the offline scripted LLM")
    run.add_argument("--use-qa", action="store_true", help="add the QA engineer")
    run.add_argument("--n-round", type=int, default=None, help="MetaGPT rounds (gateway: 10)")
    run.add_argument("--investment", type=float, default=None, help="budget in USD")
    run.add_argument(
        "--disconnect-policy",
        choices=("continue", "kill", "grace"),
        help="what the task does when its last watcher leaves (server default if unset)",
    )
    run.add_argument(
        "--pace",
        choices=("fast", "demo"),
        default=None,
        help="how fast the offline scripted LLM streams (demo: readable, ~1 min per task)",
    )
    run.add_argument(
        "-O",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other create field; VALUE is JSON if it parses (-O timeout_seconds=600)",
    )
    syn = run.add_argument_group("synthetic workload (tests and demos; replaces MetaGPT)")
    syn.add_argument("--synthetic-events", type=int, metavar="N", help="emit N events")
    syn.add_argument("--synthetic-rate", type=float, default=0.0, metavar="R", help="per second")
    syn.add_argument("--synthetic-exit-after", type=int, metavar="K", help="exit after K events")
    syn.add_argument("--synthetic-exit-code", type=int, default=1, metavar="C", help="exit code")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="metastream",
        description="Run MetaGPT tasks and watch them live.",
        epilog=EPILOG,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help: str, *, task: str = "") -> argparse.ArgumentParser:
        """A subcommand (``task``: the help of its task id argument, if it takes one)."""
        cmd = sub.add_parser(name, parents=[common], help=help, epilog=EPILOG)
        cmd.set_defaults(command=name)
        if task:
            cmd.add_argument("task_id", help=task)
        return cmd

    def follows(cmd: argparse.ArgumentParser) -> None:
        """It follows the task's run, or with ``--detach`` prints its id."""
        cmd.add_argument("--detach", action="store_true", help="print the task id and exit")
        _following(cmd)

    prefix = "task id (or a unique prefix of a recent one)"
    run = command("run", "create a task and follow it")
    _creating(run)
    follows(run)

    _creating(command("create", "create a task without starting it (prints its id)"))

    tail = command("tail", "follow a task (resumes after errors)", task=prefix)
    tail.add_argument("--after", type=int, default=0, metavar="N", help="start after event N")
    tail.add_argument("--bus", action="store_true", help="read the ZeroMQ bus (live only)")
    tail.add_argument("--endpoint", default=None, help="bus XPUB endpoint (METASTREAM_BUS_SUB)")
    _following(tail)

    say = command(
        "say",
        "send a follow-up requirement to a COMPLETED task and follow the new run",
        task=prefix,
    )
    say.add_argument("requirement", help="what to change or add")
    follows(say)

    follows(
        command(
            "resume",
            "continue a CANCELLED or FAILED task from its last completed round",
            task=prefix,
        )
    )

    ls = command("ls", "list tasks, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--offset", type=int, default=0)

    command("cancel", "cancel a task").add_argument("task_id")
    command("files", "list a task's generated files").add_argument("task_id")

    get = command("get", "print one generated file")
    get.add_argument("task_id")
    get.add_argument("path", help="path as listed by `metastream files`")
    get.add_argument("-o", "--output", help="write to this file instead of stdout")

    from metastream import cli_db

    cli_db.add_parser(sub)
    return parser
