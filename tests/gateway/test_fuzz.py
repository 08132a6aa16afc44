"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis).

The schema comes from the app in-process; the calls go to a live stack with a token, so every
layer (auth, limits, routes, store, supervisor) is exercised. A bounded number of examples per
operation keeps this well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from core import settings as ms_settings
from gateway.app import create_app
from metastream.stack import Stack

TOKEN = "tok-fuzz-3e8a"
EXAMPLES = 30

schema = schemathesis.openapi.from_dict(
    create_app(ms_settings.load({"METASTREAM_HOME": "/nonexistent"})).openapi()
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"METASTREAM_API_TOKEN": TOKEN, "METASTREAM_CREATE_RATE": "0"}
    with Stack(Path(tmp_path_factory.mktemp("fuzz")), env=env) as s:
        yield s


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_from_its_schema(case: schemathesis.Case, live: Stack) -> None:
    case.call_and_validate(
        base_url=live.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
