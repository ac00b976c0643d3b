"""The whole book, every chapter standalone (``ci`` preset): papermill, the HTML, in Chromium.

``build_book(standalone=True)``: no experiment up front; each chapter runs with its own empty
results and data folders (``_build/standalone/<chapter>/``), so this build proves that every
chapter trains the runs it shows by itself, as from a fresh clone. Two things are made once,
from nothing, by the chapter that teaches them and handed to the chapters that use them: the
embedded datasets (chapter 4) and the Platelet-EM extractor (chapter 5; hard-linked into
chapters 6, 7 and 10: ``book.RECEIVED_RUNS``; shared with chapter 8, which starts beside it:
``book.SHARED_RUNS``). (``make run``
builds the whole experiment first and shares it.) The page checks are those of ``test_book.py``
(imported, so pytest runs them here on this file's ``book``); a file of its own so that
pytest-xdist (``--dist loadfile``) builds the whole book in one worker, started first
(``conftest.py``), while the other runs the remaining test files.
"""

from __future__ import annotations

import pandas as pd
import pytest

from deepsim_edu import pretrained
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


RELEASE = pretrained.RELEASES / pretrained.DEFAULT_RELEASE


@pytest.mark.slow
@pytest.mark.skipif(not (RELEASE / pretrained.MANIFEST).is_file(), reason="no release committed")
def test_released_nets_reproduce_their_manifest_in_chapter_8(full_book):
    """Chapter 8 re-tests the released registration nets afresh on the embedded test sets
    (``pretrained.released_results_root``); every per-pair test Dice it found is the one the
    release's manifest lists, to 1e-3 (the extractors: ``tests/test_pretrained.py``)."""
    manifest = pretrained.read_manifest(RELEASE)
    found = list((full_book.stage.parent / "standalone").glob("08_*/**/released-default"))
    assert len(found) == 1, found
    nets = {k: e for k, e in manifest["models"].items() if e["kind"] == "registration"}
    assert len(nets) == 15, sorted(nets)
    for key, entry in nets.items():
        rows = pd.read_csv(found[0] / key / "test_results.csv")
        listed = pd.DataFrame(entry["test_pairs"])
        assert rows[["moving", "fixed"]].astype(str).values.tolist() == \
            listed[["moving", "fixed"]].astype(str).values.tolist(), key  # fmt: skip
        assert (rows["dice"] - listed["dice"]).abs().max() <= 1e-3, key
