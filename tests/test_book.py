"""The book: chapters execute under papermill, the HTML builds with no warning, works offline
(no CDN), hides papermill's parameters cell, and its widgets and math render in Chromium.

Three builds, each once per session:
- a tiny book of our own (a widget notebook) — the pipeline and the offline widget JS;
- the real intro page with every chapter stubbed — ``_config.yml``, ``_toc.yml``, ``index.md``;
- the whole book (experiment + every chapter, ``ci`` preset): in ``test_book_full.py``, which
  runs the same page checks on it; a file of its own, so that pytest-xdist builds it while the
  other worker runs this file and the rest.
Screenshots of every page land in ``_build/screenshots/`` for a person to look at.
Chromium: Debian's ``chromium``; ``make test`` installs it and sets DEEPSIM_REQUIRE_CHROMIUM=1,
so there a missing browser fails instead of skipping.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest

from deepsim_edu.book import REPO, BookError, build_book, toc_files

SCREENSHOTS = REPO / "_build" / "screenshots"


@dataclass
class Book:
    name: str
    html: Path  # the html folder
    stage: Path  # the staging source (executed notebooks)
    entries: list[str]  # toc entries, root first


def _build(name: str, build_dir: Path, toc: Path | None = None, **kwargs) -> Book:
    index = build_book(build_dir=build_dir, toc=toc, **kwargs)
    assert index == build_dir / "html" / "index.html" and index.is_file()
    return Book(name, index.parent, build_dir / "source", toc_files(toc or REPO / "_toc.yml"))


# --- a tiny book ---------------------------------------------------------------------------------

TINY_INDEX = """# Tiny book

Inline math $\\mathcal{L} = D(I \\circ \\Phi, J) + \\lambda R(\\Phi)$ and a label:

$$ a = b $$ (eq-tiny)

See {eq}`eq-tiny` and {doc}`widgets`.
"""


def _tiny_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nb.cells = [nbformat.v4.new_markdown_cell("# Widgets\n\nA slider, an image, progress bars."),
                nbformat.v4.new_code_cell(
                    'preset = "quick"\ndevice = "cpu"\ndata_dir = "data"\nresults_dir = None',
                    metadata={"tags": ["parameters"]})]  # fmt: skip
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, path)


WIDGET_CELLS = [
    "import os\nprint('cwd', os.getcwd(), preset, device, data_dir, results_dir)",
    'import ipywidgets as w\nw.IntSlider(value=3, min=0, max=10, description="steps")',
    "import io\nimport numpy as np\nimport matplotlib.pyplot as plt\nbuf = io.BytesIO()\n"
    "plt.imsave(buf, np.random.default_rng(0).random((32, 32)), format='png')\n"
    "w.Image(value=buf.getvalue(), width=128)",
    "from tqdm.auto import tqdm\nfor _ in tqdm(range(20), desc='widget bar'):\n    pass",
    "import sys\nfor i in range(5):\n    print(f'\\rtext bar {i}', end='', file=sys.stderr)",
]


def _tiny_toc(folder: Path, notebook: str) -> Path:
    (folder / "book").mkdir(parents=True)
    (folder / "book" / "index.md").write_text(TINY_INDEX.replace("widgets", notebook))
    toc = folder / "_toc.yml"
    toc.write_text(f"format: jb-book\nroot: book/index\nchapters:\n  - file: book/{notebook}\n")
    return toc


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory) -> Book:
    folder = tmp_path_factory.mktemp("tiny")
    toc = _tiny_toc(folder / "src", "widgets")
    _tiny_notebook(folder / "src" / "book" / "widgets.ipynb", WIDGET_CELLS)
    return _build("tiny", folder / "_build", toc, run_experiment=False, preset="default")


@pytest.fixture(scope="session")
def intro_book(tmp_path_factory) -> Book:
    """The repository's config, toc and intro page; every chapter a stub (nothing executed)."""
    return _build("intro", tmp_path_factory.mktemp("intro") / "_build", chapters=[],
                  run_experiment=False)  # fmt: skip


BOOKS = ["tiny_book", "intro_book"]  # the whole book: tests/test_book_full.py


@pytest.fixture(params=BOOKS)
def book(request) -> Book:
    return request.getfixturevalue(request.param)


# --- the HTML ------------------------------------------------------------------------------------


def _pages(book: Book) -> list[Path]:
    return [book.html / f"{entry}.html" for entry in book.entries]


class _Urls(HTMLParser):
    """Every URL a page loads by itself (scripts, stylesheets, images, frames, fonts)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "embed") and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href") and attrs.get("rel") not in ("canonical", "next",
                                                                          "prev", "index",
                                                                          "search"):  # fmt: skip
            self.urls.append(attrs["href"])


def test_build_has_no_warning(book: Book) -> None:
    log = (book.html.parent / "jupyter-book.log").read_text()
    assert "build succeeded" in log
    assert "WARNING" not in log, log


def test_every_chapter_has_a_page(book: Book) -> None:
    missing = [str(page) for page in _pages(book) if not page.is_file()]
    assert not missing


def test_no_injected_parameters_cell(book: Book) -> None:
    for notebook in book.stage.rglob("*.ipynb"):
        cells = nbformat.read(notebook, as_version=4).cells
        injected = [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and all("remove-cell" in c.metadata.tags for c in injected), notebook
    for page in _pages(book):
        html = page.read_text()
        assert "tag_injected-parameters" not in html and "# Parameters" not in html, page


def test_no_external_script_or_stylesheet(book: Book) -> None:
    for page in book.html.rglob("*.html"):
        parser = _Urls()
        parser.feed(page.read_text())
        external = [u for u in parser.urls if re.match(r"(https?:)?//", u)]
        assert not external, f"{page}: {external}"
    for css in book.html.rglob("*.css"):
        assert not re.search(r"(@import|url\()\s*['\"]?(https?:)?//", css.read_text()), css


def test_tiny_book_executes_from_the_repository_root(tiny_book: Book) -> None:
    html = (tiny_book.html / "book" / "widgets.html").read_text()
    assert f"cwd {REPO} default cpu data None" in html  # the injected parameters were used
    assert "text bar 4" in html and "text bar 3" not in html  # \r-rewritten lines collapsed


# --- failures ------------------------------------------------------------------------------------


def test_a_failing_cell_fails_the_build_with_the_chapter_name(tmp_path) -> None:
    toc = _tiny_toc(tmp_path / "src", "broken")
    _tiny_notebook(tmp_path / "src" / "book" / "broken.ipynb", ["1 / 0"])
    with pytest.raises(BookError, match=r"broken\.ipynb failed.*ZeroDivisionError"):
        build_book(build_dir=tmp_path / "_build", toc=toc, run_experiment=False)
    assert not (tmp_path / "_build" / "html").exists()


def test_a_chapter_without_parameters_cell_is_an_error(tmp_path) -> None:
    toc = _tiny_toc(tmp_path / "src", "plain")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "src" / "book" / "plain.ipynb")
    with pytest.raises(BookError, match=r"plain\.ipynb has no cell tagged 'parameters'"):
        build_book(build_dir=tmp_path / "_build", toc=toc, run_experiment=False)


def test_unknown_chapter_is_an_error(tmp_path) -> None:
    with pytest.raises(BookError, match="chapters not in"):
        build_book(build_dir=tmp_path, chapters=["book/99_nothing"], run_experiment=False)


# --- in a browser --------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1280,2400", "--virtual-time-budget=20000",
]  # fmt: skip


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("DEEPSIM_REQUIRE_CHROMIUM") == "1":
        pytest.fail("chromium not found, but `make test` should have installed it")
    pytest.skip("chromium is not installed (`make test` installs Debian's chromium)")


class _Server:
    """The html folder on a loopback port; remembers every request's path and status."""

    def __init__(self, folder: Path) -> None:
        requests = self.requests = []

        class Handler(SimpleHTTPRequestHandler):
            def log_request(self, code="-", size="-") -> None:
                requests.append((self.path, int(code)))

            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def _render(chromium: str, url: str, screenshot: Path, profile: Path) -> str:
    """The DOM of ``url`` after its scripts ran (virtual time), and a screenshot of it."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}",
         "--dump-dom", url], capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0 and "</html>" in done.stdout, done.stderr[-2000:]
    return done.stdout


def test_pages_render_in_chromium(book: Book, tmp_path) -> None:
    chromium = _chromium()
    server = _Server(book.html)
    try:
        widget_pages = 0
        for entry, page in zip(book.entries, _pages(book)):
            source = page.read_text()
            dom = _render(chromium, f"{server.url}/{entry}.html",
                          SCREENSHOTS / book.name / f"{entry.replace('/', '_')}.png",
                          tmp_path / "profile")  # fmt: skip
            views = source.count('type="application/vnd.jupyter.widget-view+json"')
            if views:
                widget_pages += 1
                # html-manager renders each stored view into a .widget-subarea
                assert dom.count('class="widget-subarea"') >= views, entry
                assert re.search(r'class="[^"]*\bjupyter-widgets\b', dom), entry
                assert "Loading widget" not in dom and "Error displaying widget" not in dom
            if 'class="math' in source:
                assert "<mjx-container" in dom, f"{entry}: MathJax did not typeset"
        failed = [(path, code) for path, code in server.requests
                  if code >= 400 and not path.startswith("/favicon")]  # fmt: skip
        assert not failed, failed
        if book.name == "tiny":
            assert widget_pages == 1
            fonts = [path for path, _ in server.requests if path.startswith("/_widgets/")]
            assert any(path.split("?")[0].endswith((".woff", ".woff2")) for path in fonts)
    finally:
        server.httpd.shutdown()


# --- data and experiment wiring (no training here) -----------------------------------------------


def test_real_data_is_used_as_is_and_only_its_datasets_run(tmp_path, monkeypatch) -> None:
    import deepsim_edu.data.embedded as embedded
    import deepsim_edu.experiment as experiment
    from deepsim_edu import book

    (tmp_path / "platelet-em").mkdir()
    (tmp_path / "platelet-em" / "dataset.json").write_text("{}")  # no generator.json: real
    monkeypatch.setattr(embedded, "ensure_embedded", lambda *a, **k: pytest.fail("generated"))
    calls = []
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: calls.append((a, k)))
    book.prepare_data(tmp_path)
    book._experiment("paper", "cuda", tmp_path, tmp_path / "results")
    assert calls == [
        (
            ("paper",),
            {
                "datasets": ("platelet-em",),
                "data": tmp_path,
                "out": tmp_path / "results",
                "device": "cuda",
                "vgg": None,
                "jobs": 1,
            },
        )
    ]


def test_embedded_data_is_generated_where_there_is_no_real_data(tmp_path, monkeypatch) -> None:
    import deepsim_edu.data.embedded as embedded
    from deepsim_edu import book

    made = []
    monkeypatch.setattr(embedded, "ensure_embedded", lambda name, folder: made.append(name))
    book.prepare_data(tmp_path)
    assert sorted(made) == sorted(book.REAL_DATASETS)
