"""The README's configuration table, generated from the declarations in core/settings.py.

``python -m core.settings_table`` prints it; ``--write README.md`` updates it there (between
the ``settings:begin`` and ``settings:end`` markers); tests/core/test_settings.py checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec

from core.settings import Secrets, declarations


def markdown_table() -> str:
    """The README's configuration table, from the declarations."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for _name, _hint, meta, default in declarations():
        rows.append(f"| `{meta['env']}` | {_shown(meta['shown'], default)} | {meta['doc']} |")
    return "\n".join(rows) + "\n"


def _shown(shown: str, default: Any) -> str:
    if shown:
        return f"`{shown}`" if "/" in shown or "$" in shown else shown
    if default is msgspec.NODEFAULT or default in ("", ()) or isinstance(default, Secrets):
        return "unset"
    if isinstance(default, bool):
        return f"`{int(default)}`"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"`{default}`"


def write_readme_table(readme: Path) -> None:
    """Replace the table between the README's ``settings:begin``/``end`` markers."""
    text = readme.read_text()
    head, rest = text.split("<!-- settings:begin -->\n", 1)
    _old, tail = rest.split("<!-- settings:end -->", 1)
    readme.write_text(
        f"{head}<!-- settings:begin -->\n{markdown_table()}<!-- settings:end -->{tail}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write_readme_table(Path(sys.argv[2]))
    else:
        print(markdown_table(), end="")
