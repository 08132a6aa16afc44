"""The docs work from a clone: every relative link resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|<a\s[^>]*href=\"([^\"]+)\"")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def _links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    return [a or b for a, b in LINK.findall(text)]


def broken_links(doc: Path, root: Path = REPO) -> list[str]:
    """The relative links of ``doc`` that leave ``root``, miss their file or their heading."""
    bad = []
    for link in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        resolved = (doc.parent / target).resolve() if target else doc
        if not resolved.is_relative_to(root):
            bad.append(f"{link}: outside the repository")
        elif not resolved.exists():
            bad.append(f"{link}: {resolved.relative_to(root)} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            bad.append(f"{link}: no heading #{anchor} in {resolved.relative_to(root)}")
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    bad = broken_links(doc)
    assert not bad, f"{doc.relative_to(REPO)}: " + "; ".join(bad)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_reference_to_files_outside_the_clone(doc: Path) -> None:
    text = doc.read_text()
    assert "shared/CONTRACT.md" not in text and "../shared" not in text


def test_the_checker_catches_broken_links(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (tmp_path / "outside.md").write_text("# Out\n")
    (root / "docs" / "b.md").write_text("# A heading (with) `code`\n")
    doc = root / "docs" / "a.md"
    doc.write_text(
        "[ok](b.md#a-heading-with-code) [web](https://example.com) [self](#title)\n"
        "# Title\n[out](../../outside.md) [gone](missing.md) [anchor](b.md#nope)\n"
        "```\n[in a fence](nowhere.md)\n```\n"
    )
    assert broken_links(doc, root) == [
        "../../outside.md: outside the repository",
        "missing.md: docs/missing.md does not exist",
        "b.md#nope: no heading #nope in docs/b.md",
    ]


def test_readme_commands_run_from_a_clone() -> None:
    """Shell examples use the clone's venv; `node_modules/` and `.env` are never committed."""
    readme = (REPO / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.splitlines():
            assert not re.match(r"^\s*(python3?|pip|metastream)\s", line), line
    ignored = (REPO / ".gitignore").read_text().split()
    assert "node_modules/" in ignored and ".env" in ignored
