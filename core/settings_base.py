"""How a setting is declared (:func:`env`), and the type of secret settings (:class:`Secrets`)."""

from __future__ import annotations

from typing import Any

import msgspec


class Secrets:
    """Secret strings that never show in a repr (settings get logged and printed)."""

    __slots__ = ("values",)

    def __init__(self, values: tuple[str, ...] = ()) -> None:
        self.values = values

    def __bool__(self) -> bool:
        return bool(self.values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secrets) and other.values == self.values

    def __hash__(self) -> int:
        return hash(self.values)

    def __repr__(self) -> str:
        return f"Secrets(<{len(self.values)} hidden>)"


def env(name: str, doc: str, *, shown: str = "", **constraints: Any) -> msgspec.Meta:
    """A setting's declaration: its variable, its doc (the README's table) and its bounds.

    ``shown`` is the default as the README writes it, when the value is derived at load time.
    """
    return msgspec.Meta(**constraints, extra={"env": name, "doc": doc, "shown": shown})
