"""The gateway's port under honcho, whose own default port is not the contract's."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.settings import Settings

HONCHO_DEFAULT_PORT = 5000  # honcho's own base port when it is given none


def gateway_port(
    cfg: Settings,
    environ: Mapping[str, str] | None = None,
    honcho_was_given_a_port: Callable[[], bool] | None = None,
) -> int:
    """The port the gateway listens on: ``PORT``, except honcho's own default.

    honcho sets ``PORT`` for every Procfile process (base + 100 per process; the gateway is
    the first, so it gets the base). The base is the user's ``PORT``, ``-p``, or a ``.env``
    file's, and 5000 when none is given, where the contract says 8000. So only a ``PORT`` of
    5000 under honcho is in doubt, and only then is honcho itself asked how it got it.
    """
    environ = os.environ if environ is None else environ
    if "HONCHO_PROCESS_NAME" not in environ or cfg.port != HONCHO_DEFAULT_PORT:
        return cfg.port
    given = (honcho_was_given_a_port or _honcho_was_given_a_port)()
    return cfg.port if given else 8000


def _honcho_was_given_a_port() -> bool:
    """Whether the honcho that started us had a port from its environment, ``-p`` or ``.env``."""
    import psutil

    try:
        ancestor = psutil.Process().parent()
        for _ in range(3):  # honcho -> sh -c -> python
            if ancestor is None:
                break
            argv = ancestor.cmdline()
            if any(part.endswith("honcho") for part in argv[:2]):
                if ancestor.environ().get("PORT"):
                    return True
                if any(a in ("-p", "--port") or a.startswith(("-p", "--port=")) for a in argv):
                    return True
                dotenv = Path(ancestor.cwd()) / ".env"
                return dotenv.is_file() and any(
                    line.strip().startswith("PORT=") for line in dotenv.read_text().splitlines()
                )
            ancestor = ancestor.parent()
    except (psutil.Error, OSError):
        pass
    return True  # can't tell: PORT as given
