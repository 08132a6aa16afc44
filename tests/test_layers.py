"""The import graph is layered: a package imports only the layers below it (README, Layout).

    gateway, runner  ->  store, bus  ->  core          metastream (CLI, client)  ->  bus, core

Peers don't import each other (gateway never imports runner, nor bus store). Every import
counts, also one inside a function: it is an edge all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "bus": {"core"},
    "store": {"core"},
    "runner": {"store", "bus", "core"},
    "gateway": {"store", "bus", "core"},
    "metastream": {"bus", "core"},
}


def imports_of(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """For each project package this one imports, where (``file:line``)."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != package and (root / top / "__init__.py").exists():
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    found.setdefault(top, set()).add(where)
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages - {"tests", "bench"} == set(ALLOWED)


def test_no_import_goes_up_or_sideways() -> None:
    wrong = [
        f"{where}: {package} imports {target}"
        for package, allowed in ALLOWED.items()
        for target, places in imports_of(package).items()
        if target not in allowed
        for where in sorted(places)
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    # The check must be able to fail: an upward import, even inside a function, is found.
    for package in ("core", "gateway"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "core" / "x.py").write_text("def f():\n    import gateway.app\n")
    assert imports_of("core", tmp_path) == {"gateway": {"core/x.py:2"}}
