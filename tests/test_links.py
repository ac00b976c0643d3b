"""Nothing in the repository points at a file that is not in it.

- No tracked file (``git ls-files``: code, notebooks, README, docs) names the project's private
  working files (the words are split below, so that this file does not match itself).
- Every relative Markdown link and ``{doc}`` target in README.md, book/*.md and the chapters'
  Markdown cells names a file that exists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nbformat
import pytest

from deepsim_edu.book import REPO

PRIVATE = ["shared" + "/", "DESIGN" + ".md", "reference" + "_facts", "design" + " notes"]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
DOC_ROLE = re.compile(r"\{doc\}`(?:[^`<]*<([^`>]+)>|([^`]+))`")
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|#|//)", re.I)


def _tracked() -> list[Path]:
    try:
        done = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                              check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in done.stdout.decode().split("\0") if name]


def test_no_file_names_private_working_files() -> None:
    hits = []
    for path in _tracked():
        try:
            text = path.read_text(encoding="utf-8").lower()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary, or deleted in the working tree
        hits += [f"{path.relative_to(REPO)}: {word}" for word in PRIVATE if word.lower() in text]
    assert not hits, hits


def _markdown_sources() -> list[tuple[str, Path, str]]:
    """(name, folder links are relative to, Markdown text) of README, book pages, chapters."""
    sources = [("README.md", REPO, (REPO / "README.md").read_text())]
    sources += [(str(p.relative_to(REPO)), p.parent, p.read_text())
                for p in sorted((REPO / "book").glob("*.md"))]  # fmt: skip
    for path in sorted((REPO / "book").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        text = "\n\n".join(c.source for c in cells if c.cell_type == "markdown")
        sources.append((str(path.relative_to(REPO)), path.parent, text))
    return sources


def _targets(text: str) -> list[tuple[str, str]]:
    """(kind, target) of every ``{doc}`` role and relative Markdown link, code blocks aside."""
    text = FENCE.sub("", text)
    found = [("doc", a or b) for a, b in DOC_ROLE.findall(text)]
    text = re.sub(r"`[^`\n]*`", "", DOC_ROLE.sub("", text))  # inline code is not a link
    found += [("link", t) for t in MD_LINK.findall(text) if not EXTERNAL.match(t)]
    return found


def _exists(kind: str, target: str, folder: Path) -> bool:
    path = target.split("#")[0]
    base = REPO if path.startswith("/") else folder
    file = base / path.lstrip("/")
    if kind == "doc":  # a document name, with or without its suffix
        return file.is_file() or any(file.with_name(file.name + s).is_file()
                                     for s in (".md", ".ipynb"))  # fmt: skip
    return file.exists()


def test_every_relative_link_and_doc_target_exists() -> None:
    broken = [f"{name}: {kind} {target}" for name, folder, text in _markdown_sources()
              for kind, target in _targets(text) if not _exists(kind, target, folder)]  # fmt: skip
    assert not broken, broken


def test_the_link_finder_on_known_text(tmp_path) -> None:
    (tmp_path / "there.md").write_text("x")
    text = ("See {doc}`there`, {doc}`the page <there>`, [a](there.md#top), ![p](gone.png),\n"
            "[web](https://example.org), [anchor](#here), `[code](not-a-link.md)` and\n"
            "```\n[fenced](also-not.md)\n```\n{doc}`missing`")
    targets = _targets(text)
    assert targets == [("doc", "there"), ("doc", "there"), ("doc", "missing"),
                       ("link", "there.md#top"), ("link", "gone.png")]  # fmt: skip
    assert [_exists(k, t, tmp_path) for k, t in targets] == [True, True, False, True, False]


def test_citation_file_agrees_with_the_book() -> None:
    """CITATION.cff: the repository URL is the book's one setting (``repository.url`` in
    _config.yml), its licence is the LICENSE file's, and it cites the paper of references.bib."""
    import yaml

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["authors"] and cff["message"]
    assert cff["repository-code"] == config["repository"]["url"]
    license_text = (REPO / "LICENSE").read_text()
    assert cff["license"] == "MIT" and license_text.startswith("MIT License")
    assert "Copyright (c) 2026 deepsim-edu contributors" in license_text
    bib = (REPO / "book" / "references.bib").read_text()
    title = re.search(r"@\w+\{czolbe2021deepsim,.*?title\s*=\s*\{(.+?)\},\n", bib, re.S)
    paper = title.group(1).replace("{", "").replace("}", "")
    assert [r["title"] for r in cff["references"]] == [paper]
