"""Moved to :mod:`core.settings` (every process reads it; ``core`` is the bottom layer).

Kept so that ``from metastream import settings`` in scripts and other branches still works.
"""

from core.settings import DISCONNECT_POLICIES as DISCONNECT_POLICIES
from core.settings import SECRET_ENV as SECRET_ENV
from core.settings import Secrets as Secrets
from core.settings import Settings as Settings
from core.settings import gateway_port as gateway_port
from core.settings import load as load
from core.settings import run_dir_for as run_dir_for
