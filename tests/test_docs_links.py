"""The user pages point readers at each other and at files (`docs/faces.md`, `[keys.md](keys.md#...)`):
a page that moved or a heading that was renamed leaves a reader at a dead end, so every such
pointer in README.md and docs/ must lead somewhere. docs/upstream/ is text written for another
project (pynetdicom) and names that project's paths, so it is left out."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_DOCS_PATH = re.compile(r"(?<![\w/.])docs/[\w./*-]*[\w/*]")
_FENCE = re.compile(r"```.*?```", re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", _FENCE.sub("", page.read_text()), re.M)}


def broken_links(pages: list[Path], root: Path) -> list[str]:
    """Each markdown link (relative to its page, with its #anchor) and each `docs/...` path
    (relative to the repository, globs allowed) that leads nowhere, as 'page: target'."""
    broken = []
    for page in pages:
        text = page.read_text()
        for target in _LINK.findall(_FENCE.sub("", text)):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = page.parent / path if path else page
            if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
                broken.append(f"{page.relative_to(root)}: {target}")
        for ref in _DOCS_PATH.findall(text):
            if not any(root.glob(ref.rstrip("/"))):
                broken.append(f"{page.relative_to(root)}: {ref}")
    return broken


def test_every_page_and_heading_the_docs_point_to_exists() -> None:
    pages = [ROOT / "README.md"] + [
        p for p in sorted((ROOT / "docs").rglob("*.md")) if "upstream" not in p.relative_to(ROOT).parts
    ]
    assert broken_links(pages, ROOT) == []


def test_a_dead_link_a_renamed_heading_and_a_missing_path_are_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keys.md").write_text("# The site secret\n\n## Rotating it\n")
    page = tmp_path / "docs" / "ops.md"
    page.write_text(
        "[keys](keys.md#rotating-it) [gone](gone.md) [renamed](keys.md#backing-it-up)\n"
        "see `docs/keys.md` and `docs/faces.md`; https://example.org/x.md is not ours\n"
    )
    assert broken_links([page], tmp_path) == [
        "docs/ops.md: gone.md",
        "docs/ops.md: keys.md#backing-it-up",
        "docs/ops.md: docs/faces.md",
    ]
