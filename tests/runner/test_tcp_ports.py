"""Which TCP ports a restricted task may connect to (runner.sandbox.tcp_port)."""

from __future__ import annotations

import pytest

from runner.sandbox import tcp_port


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("postgresql://u:p@db.example:6543/x", 6543),
        ("postgresql+psycopg://u:p@db.example/x", 5432),
        ("http://127.0.0.1:8123/v1", 8123),
        ("https://api.openai.com/v1", 443),
        ("tcp://127.0.0.1:5555", 5555),
        ("tcp://*:5556", 5556),
        ("ipc:///tmp/bus.sock", None),
        ("sqlite:///x.db", None),
        ("", None),
        ("http://host:notaport/", None),
    ],
)
def test_the_port_of_each_endpoint(url: str, port: int | None) -> None:
    assert tcp_port(url) == port
