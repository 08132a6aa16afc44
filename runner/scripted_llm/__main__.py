"""Run the scripted LLM standalone: `python -m runner.scripted_llm --port 8011`."""

from __future__ import annotations

import argparse
import signal
import threading

from runner.scripted_llm.server import FAULTS, ScriptedLLM


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; prints the base URL first."""
    parser = argparse.ArgumentParser(prog="python -m runner.scripted_llm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fault", choices=[f for f in FAULTS if f], default=None)
    parser.add_argument("--pace", choices=["fast", "demo"], default=None, help="streaming speed")
    parser.add_argument("--slow-delay", type=float, default=2.0, help="seconds, with --fault slow")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ScriptedLLM(
        host=args.host, port=args.port, fault=args.fault, slow_delay=args.slow_delay, pace=args.pace
    ) as llm:
        print(llm.base_url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
