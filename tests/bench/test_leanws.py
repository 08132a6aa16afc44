"""The bench's lean WebSocket client reads exactly what the ``websockets`` library reads."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from bench.leanws import HandshakeFailed, LeanConnection
from tests.gateway.test_wsprotocol import server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(60)


async def _websockets(url: str) -> list[bytes]:
    got: list[bytes] = []
    async with websockets.connect(url, open_timeout=10, max_size=None, compression=None) as ws:
        async for msg in ws:
            got.append(msg.encode() if isinstance(msg, str) else msg)
    return got


async def _lean(url: str, stop_after: int = 0) -> list[bytes]:
    got: list[bytes] = []

    def on_message(msg: bytes) -> bool:
        got.append(msg)
        return len(got) == stop_after

    conn = await asyncio.wait_for(LeanConnection.connect(url, None, on_message), 10)
    await asyncio.wait_for(conn.closed, 10)
    return got


@pytest.mark.parametrize("binary", ["", "&binary=1"])
def test_every_length_encoding_arrives_as_websockets_reads_it(server: str, binary: str) -> None:  # noqa: F811
    url = f"ws://{server}/ws/mixed?pages=5{binary}"
    expected = asyncio.run(_websockets(url))
    assert len(expected) == 55  # 5 pages of 10 (5 B, 200 B, 70 kB) and a text after each
    assert asyncio.run(_lean(url)) == expected


def test_a_callback_that_has_enough_closes_the_connection(server: str) -> None:  # noqa: F811
    got = asyncio.run(_lean(f"ws://{server}/ws/burst?n=5000", stop_after=10))
    assert got == [str(i).encode() for i in range(10)]


def test_a_refused_handshake_is_an_error(server: str) -> None:  # noqa: F811
    with pytest.raises(HandshakeFailed, match=r"404|403"):
        asyncio.run(_lean(f"ws://{server}/no/such/route"))
