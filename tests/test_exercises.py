"""The shape of every chapter (each ``book/*.ipynb`` of ``_toc.yml``), read from the source.

- 3–5 exercises: markdown cells that start ``### Exercise N.k`` (N the chapter's number from
  its file name, k = 1, 2, ... in order);
- each followed directly by one code cell, its worked solution: tagged ``hide-cell`` (closed in
  the HTML) and ``solution``, starting ``# Solution to Exercise N.k``, with an ``assert`` that
  checks the answer (CI executes it when the chapter runs);
- exactly one ``parameters`` cell, and every name it sets is used by another code cell;
- committed without outputs.
That the solutions are collapsed in the built HTML is checked in ``test_book.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from deepsim_edu.book import REPO, chapter_parameters, toc_files

CHAPTERS = [REPO / f"{entry}.ipynb" for entry in toc_files(REPO / "_toc.yml")
            if (REPO / f"{entry}.ipynb").is_file()]  # fmt: skip
EXERCISE = re.compile(r"### Exercise (\d+)\.(\d+)\b")


def _cells(path: Path) -> list:
    return nbformat.read(path, as_version=4).cells


def _number(path: Path) -> int:
    """The chapter's number: the digits its file name starts with (``05_x.ipynb`` → 5)."""
    match = re.match(r"(\d+)_", path.name)
    assert match, f"{path.name}: a chapter's file name starts with its number"
    return int(match.group(1))


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def _names_used(source: str) -> set[str]:
    """Every name a code cell reads (``ast.Name`` loads, f-strings and keywords included).

    IPython syntax first: a ``%magic`` / ``%%magic`` prefix is cut (``%time x = f(y)`` reads
    f and y), a ``!shell`` line dropped; a cell that still does not parse falls back to the
    identifiers in it.
    """
    lines = [re.sub(r"^(\s*)%%?\w+\s*", r"\1", line) for line in source.splitlines()
             if not line.lstrip().startswith("!")]  # fmt: skip
    code = "\n".join(lines)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set(re.findall(r"[A-Za-z_]\w*", code))
    return {node.id for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}  # fmt: skip


def test_the_toc_lists_chapters() -> None:
    assert len(CHAPTERS) >= 9  # every chapter of _toc.yml is checked (none silently skipped)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_exercises_and_their_solutions(path: Path) -> None:
    cells, number = _cells(path), _number(path)
    exercises = [i for i, c in enumerate(cells)
                 if c.cell_type == "markdown" and c.source.startswith("### Exercise")]  # fmt: skip
    assert 3 <= len(exercises) <= 5, f"{path.name}: {len(exercises)} exercises, needs 3-5"
    for k, i in enumerate(exercises, start=1):
        label = f"{number}.{k}"
        match = EXERCISE.match(cells[i].source)
        assert match and (int(match.group(1)), int(match.group(2))) == (number, k), (
            f"{path.name}: exercise {k} is titled {cells[i].source.splitlines()[0]!r}, "
            f"expected '### Exercise {label}'")  # fmt: skip
        assert i + 1 < len(cells), f"{path.name}: Exercise {label} has no solution after it"
        solution = cells[i + 1]
        assert solution.cell_type == "code", f"{path.name}: Exercise {label}: next is not code"
        assert {"hide-cell", "solution"} <= set(_tags(solution)), (
            f"{path.name}: the solution to Exercise {label} is tagged {_tags(solution)}")
        assert re.match(rf"# Solution to Exercise {re.escape(label)}\b", solution.source), (
            f"{path.name}: the solution to Exercise {label} starts "
            f"{solution.source.splitlines()[:1]}")  # fmt: skip
        assert re.search(r"^\s*assert\b", solution.source, re.M), (
            f"{path.name}: the solution to Exercise {label} checks nothing (no assert)")
    solutions = [i for i, c in enumerate(cells) if "solution" in _tags(c)]
    assert solutions == [i + 1 for i in exercises], f"{path.name}: a solution cell of no exercise"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_parameter_is_used(path: Path) -> None:
    cells = _cells(path)
    names = chapter_parameters(path)  # exactly one parameters cell, or BookError
    assert names, f"{path.name}: its parameters cell sets nothing"
    used = set().union(*(_names_used(c.source) for c in cells
                         if c.cell_type == "code" and "parameters" not in _tags(c)))  # fmt: skip
    unused = [name for name in names if name not in used]
    assert not unused, f"{path.name}: parameters that no other cell uses: {unused}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    dirty = [i for i, c in enumerate(_cells(path))
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]  # fmt: skip
    assert not dirty, f"{path.name}: cells with outputs or execution counts: {dirty}"


def test_the_checks_catch_a_bad_chapter(tmp_path) -> None:
    """The checks above on a notebook with known faults (independent of the chapters)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nb.cells = [
        nbformat.v4.new_code_cell("seed = 0\ndevice = 'cpu'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell("### Exercise 2.1 — wrong chapter number"),
        nbformat.v4.new_code_cell("# Solution to Exercise 2.1\nprint(seed)  # assert nothing",
                                  metadata={"tags": ["hide-cell", "solution"]}),  # fmt: skip
    ]
    path = tmp_path / "01_bad.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(AssertionError, match="1 exercises"):
        test_exercises_and_their_solutions(path)
    with pytest.raises(AssertionError, match=r"no other cell uses: \['device'\]"):
        test_every_parameter_is_used(path)
    assert _names_used("%time x = f(seed)\nprint(f'{device}')") >= {"f", "print", "device"}
