"""The whole book, every chapter standalone (``ci`` preset): papermill, the HTML, in Chromium.

``build_book(standalone=True)``: no experiment up front; each chapter runs with its own empty
results and data folders (``_build/standalone/<chapter>/``), so this build proves that every
chapter trains the runs it shows by itself, as from a fresh clone. Two things are made once,
from nothing, by the chapter that teaches them and handed to the chapters that use them: the
embedded datasets (chapter 4) and the Platelet-EM extractor (chapter 5; hard-linked into
chapters 6, 7 and 10: ``book.RECEIVED_RUNS``; chapter 8 trains its whole grid). (``make run``
builds the whole experiment first and shares it.) The page checks are those of ``test_book.py``
(imported, so pytest runs them here on this file's ``book``); a file of its own so that
pytest-xdist (``--dist loadfile``) builds the whole book in one worker, started first
(``conftest.py``), while the other runs the remaining test files.
"""

from __future__ import annotations

import pytest

from deepsim_edu.book import REPO, toc_files
from tests.test_book import (  # noqa: F401  (the checks, collected again for this file's book)
    Book,
    _build,
    test_build_has_no_warning,
    test_download_button_gives_the_source_notebook,
    test_every_chapter_has_a_page,
    test_no_external_script_or_stylesheet,
    test_no_injected_parameters_cell,
    test_pages_render_in_chromium,
    test_solutions_are_collapsed,
)


def _missing_chapters() -> list[str]:
    entries = toc_files(REPO / "_toc.yml")[1:]
    return [e for e in entries if not any((REPO / f"{e}{s}").is_file() for s in (".ipynb", ".md"))]


@pytest.fixture(scope="session")
def full_book() -> Book:
    if missing := _missing_chapters():
        pytest.skip(f"chapter notebooks not written yet: {', '.join(missing)}")
    # the ci preset (quick with shorter registration runs: every cell runs, in CI minutes), two
    # chapter kernels side by side: the parallel build is the one tested
    return _build("full", REPO / "_build", preset="ci", device="cpu", jobs=2, standalone=True)


@pytest.fixture(params=[pytest.param("full_book", marks=pytest.mark.slow)])
def book(request) -> Book:
    return request.getfixturevalue(request.param)
