"""Shared fixtures: a real stack on a free port under tmp_path, and polling helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from metastream.stack import Stack


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
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory()


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client
