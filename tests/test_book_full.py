"""The whole book: the ci preset's experiment, every chapter under papermill, the HTML, in Chromium.

The page checks are those of ``test_book.py`` (imported, so pytest runs them here on this file's
``book``); a file of its own so that pytest-xdist (``--dist loadfile``) builds the whole book in
one worker while the other runs the remaining test files.
"""

from __future__ import annotations

import pytest

from deepsim_edu.book import REPO, toc_files
from tests.test_book import (  # noqa: F401  (the checks, collected again for this file's book)
    Book,
    _build,
    test_build_has_no_warning,
    test_every_chapter_has_a_page,
    test_no_external_script_or_stylesheet,
    test_no_injected_parameters_cell,
    test_pages_render_in_chromium,
)


def _missing_chapters() -> list[str]:
    return [e for e in toc_files(REPO / "_toc.yml")[1:] if not (REPO / f"{e}.ipynb").is_file()]


@pytest.fixture(scope="session")
def full_book() -> Book:
    if missing := _missing_chapters():
        pytest.skip(f"chapter notebooks not written yet: {', '.join(missing)}")
    # the ci preset (quick with shorter registration runs: every cell runs, in CI minutes), two
    # runs and two chapter kernels side by side: the parallel build is the one tested
    return _build("full", REPO / "_build", preset="ci", device="cpu", jobs=2)


@pytest.fixture(params=[pytest.param("full_book", marks=pytest.mark.slow)])
def book(request) -> Book:
    return request.getfixturevalue(request.param)
