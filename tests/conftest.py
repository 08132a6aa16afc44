"""Shared fixtures: a real stack on a free port under tmp_path, and polling helpers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from metastream.stack import Stack

# Every test stack starts a fork server; pre-importing MetaGPT there costs ~8 s of CPU per
# stack, which only tests/runner/test_forkserver.py needs (it turns it back on). Synthetic
# tasks are still forked warm; MetaGPT tasks elsewhere start cold, as they would without it.
os.environ.setdefault("METASTREAM_WARM_METAGPT", "0")


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(env: dict[str, str] | None = None, name: str = "home") -> Stack:
        s = Stack(tmp_path / name, env=env)
        stacks.append(s)
        return s.start()

    yield make
    for s in stacks:
        s.stop()


@pytest.fixture
def workers(request: pytest.FixtureRequest) -> int:
    """Gateway processes on the stack's port: 1, or an indirect parameter (helpers.WORKERS)."""
    return int(getattr(request, "param", 1))


@pytest.fixture
def stack(stack_factory: Callable[..., Stack], workers: int) -> Stack:
    env = {"METASTREAM_GATEWAY_WORKERS": str(workers)} if workers > 1 else None
    return stack_factory(env=env)


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client
