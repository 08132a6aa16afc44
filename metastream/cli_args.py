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

    run = sub.add_parser("run", parents=[common], help="create a task and follow it", epilog=EPILOG)
    _creating(run)
    run.add_argument("--detach", action="store_true", help="print the task id and exit")
    _following(run)
    run.set_defaults(command="run")

    create = sub.add_parser(
        "create",
        parents=[common],
        help="create a task without starting it (prints its id)",
        epilog=EPILOG,
    )
    _creating(create)
    create.set_defaults(command="create")

    tail = sub.add_parser(
        "tail", parents=[common], help="follow a task (resumes after errors)", epilog=EPILOG
    )
    tail.add_argument("task_id", help="task id (or a unique prefix of a recent one)")
    tail.add_argument("--after", type=int, default=0, metavar="N", help="start after event N")
    tail.add_argument("--bus", action="store_true", help="read the ZeroMQ bus (live only)")
    tail.add_argument("--endpoint", default=None, help="bus XPUB endpoint (METASTREAM_BUS_SUB)")
    _following(tail)
    tail.set_defaults(command="tail")

    say = sub.add_parser(
        "say",
        parents=[common],
        help="send a follow-up requirement to a COMPLETED task and follow the new run",
        epilog=EPILOG,
    )
    say.add_argument("task_id", help="task id (or a unique prefix of a recent one)")
    say.add_argument("requirement", help="what to change or add")
    say.add_argument("--detach", action="store_true", help="print the task id and exit")
    _following(say)
    say.set_defaults(command="say")

    resume = sub.add_parser(
        "resume",
        parents=[common],
        help="continue a CANCELLED or FAILED task from its last completed round",
        epilog=EPILOG,
    )
    resume.add_argument("task_id", help="task id (or a unique prefix of a recent one)")
    resume.add_argument("--detach", action="store_true", help="print the task id and exit")
    _following(resume)
    resume.set_defaults(command="resume")

    ls = sub.add_parser("ls", parents=[common], help="list tasks, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--offset", type=int, default=0)
    ls.set_defaults(command="ls")

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a task")
    cancel.add_argument("task_id")
    cancel.set_defaults(command="cancel")

    files = sub.add_parser("files", parents=[common], help="list a task's generated files")
    files.add_argument("task_id")
    files.set_defaults(command="files")

    get = sub.add_parser("get", parents=[common], help="print one generated file")
    get.add_argument("task_id")
    get.add_argument("path", help="path as listed by `metastream files`")
    get.add_argument("-o", "--output", help="write to this file instead of stdout")
    get.set_defaults(command="get")

    from metastream import cli_db

    cli_db.add_parser(sub)
    return parser
