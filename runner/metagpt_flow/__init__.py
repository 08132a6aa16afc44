"""The MetaGPT part of a task process: run the software-company flow and report events.

See `events` for the event vocabulary. Importing this package does not import MetaGPT.
"""

from runner.metagpt_flow.events import BudgetExceeded, Emitter, FlowCancelled, FlowError
from runner.metagpt_flow.flow import FlowSpec, preimport, run_metagpt

__all__ = [
    "BudgetExceeded",
    "Emitter",
    "FlowCancelled",
    "FlowError",
    "FlowSpec",
    "preimport",
    "run_metagpt",
]
