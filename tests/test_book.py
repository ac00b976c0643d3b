"""The book: chapters execute under papermill, the HTML builds with no warning, works offline
(no CDN), hides papermill's parameters cell, keeps solutions collapsed, offers each chapter's
notebook for download, and its widgets and math render in Chromium.

Builds, each once per session:
- a tiny book of our own (a widget notebook and an exercise notebook that declares only some
  parameters) — the pipeline, parameter passing and the offline widget JS;
- the same tiny book built ``standalone`` — each chapter in its own empty folders;
- the real intro and bibliography pages with every chapter stubbed — ``_config.yml``,
  ``_toc.yml``, ``index.md``, ``bibliography.md``, ``references.bib``;
- the whole book (every chapter standalone, ``ci`` preset): in ``test_book_full.py``, which
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
from html import unescape
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest
import yaml

from deepsim_edu.book import REPO, BookError, build_book, chapter_parameters, toc_files

SCREENSHOTS = REPO / "_build" / "screenshots"
BUILD_PARAMETERS = {"preset", "device", "data_dir", "results_dir", "jobs"}  # what build_book offers


@dataclass
class Book:
    name: str
    html: Path  # the html folder
    stage: Path  # the staging source (executed notebooks)
    entries: list[str]  # toc entries, root first
    source: Path  # the folder of the toc (the source notebooks, as committed)


def _build(name: str, build_dir: Path, toc: Path | None = None, **kwargs) -> Book:
    index = build_book(build_dir=build_dir, toc=toc, **kwargs)
    assert index == build_dir / "html" / "index.html" and index.is_file()
    toc = toc or REPO / "_toc.yml"
    return Book(name, index.parent, build_dir / "source", toc_files(toc), toc.parent)


# --- a tiny book ---------------------------------------------------------------------------------

TINY_INDEX = """# Tiny book

Inline math $\\mathcal{L} = D(I \\circ \\Phi, J) + \\lambda R(\\Phi)$ and a label:

$$ a = b $$ (eq-tiny)

See {eq}`eq-tiny` and {doc}`widgets`.
"""


ALL_PARAMETERS = 'preset = "quick"\ndevice = "cpu"\ndata_dir = "data"\nresults_dir = None'


WIDGETS_TITLE = "# Widgets\n\nA slider, an image, progress bars."


def _tiny_notebook(path: Path, cells: list, parameters: str = ALL_PARAMETERS,
                   title: str = WIDGETS_TITLE) -> None:  # fmt: skip
    """A notebook: a title cell, a ``parameters`` cell, then ``cells`` (a string is a code
    cell, a notebook cell is taken as it is)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nb.cells = [nbformat.v4.new_markdown_cell(title),
                nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(c) if isinstance(c, str) else c for c in cells]
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


# A chapter that declares only some parameters (one the build does not set), an exercise and
# its solution, hidden by default; it prints what it got and which build parameters it lacks.
EXERCISE_PARAMETERS = 'preset = "quick"  # ci | quick | default | paper\nseed = 7'
EXERCISE_CELLS = [
    nbformat.v4.new_markdown_cell("## Exercises\n\n### Exercise 1.1 — twice two\n\nCompute 2 · 2."),
    nbformat.v4.new_code_cell("# Solution to Exercise 1.1\nanswer = 2 * 2\nassert answer == 2 + 2",
                              metadata={"tags": ["hide-cell", "solution"]}),  # fmt: skip
    "missing = sorted({'device', 'data_dir', 'results_dir'} & set(globals()))\n"
    "print('exercise got', preset, seed, 'missing', missing)",
]


def _tiny_toc(folder: Path, *notebooks: str) -> Path:
    (folder / "book").mkdir(parents=True)
    (folder / "book" / "index.md").write_text(TINY_INDEX.replace("widgets", notebooks[0]))
    toc = folder / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/index\nchapters:\n"
                   + "".join(f"  - file: book/{name}\n" for name in notebooks))  # fmt: skip
    return toc


def _tiny_sources(folder: Path) -> Path:
    """The tiny book's source folder (widgets + exercise chapters); its toc."""
    toc = _tiny_toc(folder, "widgets", "exercise")
    _tiny_notebook(folder / "book" / "widgets.ipynb", WIDGET_CELLS)
    _tiny_notebook(folder / "book" / "exercise.ipynb", EXERCISE_CELLS, EXERCISE_PARAMETERS,
                   "# Exercise chapter\n\nOnly two parameters.")  # fmt: skip
    return toc


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory) -> Book:
    folder = tmp_path_factory.mktemp("tiny")
    toc = _tiny_sources(folder / "src")
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
        source = book.source / notebook.relative_to(book.stage)
        if set(chapter_parameters(source)) & BUILD_PARAMETERS:  # papermill injected a cell
            assert injected, notebook
        assert all("remove-cell" in c.metadata.tags for c in injected), notebook
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


def _solution_cells(html: str) -> list[str]:
    """The HTML of every cell tagged ``solution`` (myst-nb: ``<div class="cell tag_...">``),
    each up to the next cell."""
    cells = re.split(r'(?=<div class="cell )', html)
    return [cell for cell in cells if re.match(r'<div class="cell [^"]*\btag_solution\b', cell)]


def _closed_toggle(cell_html: str) -> bool:
    """Whether a cell's HTML opens with a ``<details>`` toggle that is closed (no ``open``)."""
    opening = re.search(r"<details\b[^>]*>", cell_html)
    return bool(opening) and "hide" in opening.group(0) and not re.search(
        r"\sopen\b", opening.group(0))  # fmt: skip


def _notebook_pages(book: Book) -> list[tuple[str, Path]]:
    """(toc entry, source notebook) of every chapter built from a notebook (not stubbed)."""
    return [(entry, book.source / f"{entry}.ipynb") for entry in book.entries
            if (book.source / f"{entry}.ipynb").is_file()
            and (book.stage / f"{entry}.ipynb").is_file()]  # fmt: skip


def test_solutions_are_collapsed(book: Book) -> None:
    """Every solution cell of the notebooks is on its page inside a closed ``<details>`` (the
    hide-cell toggle), its code inside that toggle."""
    for entry, source in _notebook_pages(book):
        cells = nbformat.read(source, as_version=4).cells
        expected = [c for c in cells if "solution" in c.metadata.get("tags", [])]
        found = _solution_cells((book.html / f"{entry}.html").read_text())
        assert len(found) == len(expected), entry
        for cell, html in zip(expected, found):
            assert _closed_toggle(html), f"{entry}: not a closed toggle: {html[:300]}"
            inside = html[html.find("<details"):html.find("</details>")]
            title = re.match(r"# (Solution to Exercise \d+\.\d+)", cell.source)
            assert title and title.group(1) in inside, f"{entry}: code not inside the toggle"
    if book.name in ("tiny", "full"):
        assert any(_solution_cells((book.html / f"{e}.html").read_text())
                   for e, _ in _notebook_pages(book))  # fmt: skip


def test_download_button_gives_the_source_notebook(book: Book) -> None:
    """Each notebook page's download menu links its ``.ipynb``: the committed source notebook
    (no outputs), a local file (no CDN)."""
    pages = _notebook_pages(book)
    for entry, source in pages:
        page = book.html / f"{entry}.html"
        links = re.findall(r'<a href="([^"]+\.ipynb)"[^>]*\bbtn-download-source-button\b',
                           page.read_text())  # fmt: skip
        assert len(links) == 1, f"{entry}: {links}"
        target = (page.parent / links[0]).resolve()
        assert target == (book.html / "_sources" / f"{entry}.ipynb").resolve()
        assert target.read_bytes() == source.read_bytes(), f"{entry}: not the source notebook"
        assert all(not c.get("outputs") for c in nbformat.read(target, as_version=4).cells)
    if book.name in ("tiny", "full"):
        assert pages


def test_tiny_book_executes_from_the_repository_root(tiny_book: Book) -> None:
    html = (tiny_book.html / "book" / "widgets.html").read_text()
    assert f"cwd {REPO} default cpu data None" in html  # the injected parameters were used
    assert "text bar 4" in html and "text bar 3" not in html  # \r-rewritten lines collapsed


def test_a_chapter_gets_only_the_parameters_it_declares(tiny_book: Book) -> None:
    """The exercise chapter declares preset and seed: it gets the build's preset, keeps its own
    seed, and none of the build's other parameters is defined in it."""
    html = (tiny_book.html / "book" / "exercise.html").read_text()
    assert "exercise got default 7 missing []" in html
    assert chapter_parameters(tiny_book.source / "book" / "exercise.ipynb") == ["preset", "seed"]


def test_more_than_one_parameters_cell_is_an_error(tmp_path) -> None:
    path = tmp_path / "two.ipynb"
    extra = nbformat.v4.new_code_cell("seed = 1", metadata={"tags": ["parameters"]})
    _tiny_notebook(path, [extra])
    with pytest.raises(BookError, match=r"two\.ipynb has 2 cells tagged 'parameters'"):
        chapter_parameters(path)


# --- standalone: every chapter in its own empty folders ------------------------------------------

STANDALONE_CELL = (
    "from pathlib import Path\n"
    "print('folders', Path(data_dir).resolve(), Path(results_dir).resolve(), "
    "sorted(p.name for p in Path(data_dir).iterdir()), sorted(Path(results_dir).iterdir()))\n"
    "(Path(results_dir) / 'made-here').write_text('x')"  # the next chapter must not see it
)


@pytest.fixture(scope="session")
def standalone_book(tmp_path_factory) -> tuple[Book, Path]:
    """Two chapters, each printing its data and results folders and what they hold."""
    folder = tmp_path_factory.mktemp("standalone")
    toc = _tiny_toc(folder / "src", "first", "04_embedded_data")
    for name in ("first", "04_embedded_data"):
        _tiny_notebook(folder / "src" / "book" / f"{name}.ipynb", [STANDALONE_CELL])
    data = folder / "data"  # the data folder it is given: a dataset and the VGG16 weights
    (data / "platelet-em").mkdir(parents=True)
    (data / "platelet-em" / "dataset.json").write_text("{}")
    (data / "vgg16_conv.pt").write_bytes(b"weights")
    build = folder / "_build"
    return _build("standalone", build, toc, standalone=True, data_dir=data,
                  results_dir=folder / "results", preset="ci", jobs=2), build  # fmt: skip


def test_standalone_chapters_get_their_own_empty_folders(standalone_book) -> None:
    """Empty results folders; the data chapter (``GENERATE_DATA``) starts without datasets, the
    others get (hard links to) those of the build's data folder."""
    book, build = standalone_book
    for name, listing in (("first", "['platelet-em', 'vgg16_conv.pt']"),
                          ("04_embedded_data", "['vgg16_conv.pt']")):  # fmt: skip
        html = unescape((book.html / "book" / f"{name}.html").read_text())
        own = (build / "standalone" / name).resolve()
        expected = f"folders {own / 'data'} {own / 'results'} {listing} []"
        assert expected in html, name
        assert (own / "data" / "vgg16_conv.pt").read_bytes() == b"weights"
    assert not (build.parent / "results").exists()  # the shared results folder was not used


def test_standalone_runs_no_experiment(tmp_path, monkeypatch) -> None:
    from deepsim_edu import book

    monkeypatch.setattr(book, "prepare_data", lambda *a: None)  # data yes, training no
    monkeypatch.setattr(book, "_experiment", lambda *a, **k: pytest.fail("experiment ran"))
    monkeypatch.setattr(book, "render", lambda stage, build_dir: build_dir / "html" / "index.html")
    monkeypatch.setattr(book, "_publish_sources", lambda *a: None)
    toc = _tiny_toc(tmp_path / "src", "only")
    _tiny_notebook(tmp_path / "src" / "book" / "only.ipynb", [])
    index = book.build_book(build_dir=tmp_path / "_build", toc=toc, standalone=True)
    assert index == tmp_path / "_build" / "html" / "index.html"
    assert (tmp_path / "_build" / "source" / "book" / "only.ipynb").is_file()  # it was executed


# --- the repository's pages: citations, bibliography, repository link -----------------------------


def test_bibliography_lists_every_entry_and_the_intro_cites_the_paper(intro_book: Book) -> None:
    bib = (REPO / "book" / "references.bib").read_text()
    keys = re.findall(r"^@\w+\{([^,\s]+),", bib, re.M)
    assert len(keys) == len(set(keys)) >= 16
    page = (intro_book.html / "book" / "bibliography.html").read_text()
    assert page.count('role="doc-biblioentry"') == len(keys)
    assert "semantic similarity metrics for learned image registration" in page.lower()
    index = (intro_book.html / "book" / "index.html").read_text()
    cited = re.findall(r'<a class="reference internal" href="bibliography\.html#[^"]+" '
                       r'title="([^"]+)"', index)  # fmt: skip
    assert any("deepsim: semantic similarity metrics" in title.lower() for title in cited), cited
    assert any("DeepSimRegistration" in title for title in cited), cited


def test_repository_button_links_the_configured_url(intro_book: Book) -> None:
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    for page in _pages(intro_book):
        buttons = re.findall(r'<a href="([^"]+)"[^>]*\s+class="[^"]*btn-source-repository-button',
                             page.read_text())  # fmt: skip
        assert buttons == [url], page


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
            solutions = _solution_cells(dom)  # still closed once the page's scripts ran
            assert len(solutions) == len(_solution_cells(source)), entry
            assert all(_closed_toggle(cell) for cell in solutions), entry
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


def test_a_receiving_chapter_starts_after_its_maker_with_links_to_its_run(tmp_path, monkeypatch):
    """``_execute_chapters`` with ``received``: the receiver waits for the maker and finds the
    maker's run folder hard-linked into its own results; a chapter that receives nothing runs
    beside the maker; chapters that wait for each other are refused."""
    import threading
    import time

    from deepsim_edu import book

    events, lock = [], threading.Lock()

    def fake_execute(source, target, parameters, kernel):
        results = Path(parameters["results_dir"])
        with lock:
            events.append(("start", source.stem))
        if source.stem == "maker":
            time.sleep(0.3)
            (results / "d" / "run").mkdir(parents=True)
            (results / "d" / "run" / "checkpoint.pt").write_text("weights")
        if source.stem == "receiver":
            made = results / "d" / "run" / "checkpoint.pt"
            with lock:
                events.append(("sees", made.is_file() and made.read_text() == "weights"))
        with lock:
            events.append(("end", source.stem))
        return 0.0

    monkeypatch.setattr(book, "execute_chapter", fake_execute)
    chapters = []
    for stem in ("maker", "receiver", "other"):
        (tmp_path / stem).mkdir()
        chapters.append((Path(f"{stem}.ipynb"), Path(f"out/{stem}.ipynb"),
                         {"results_dir": str(tmp_path / stem)}))  # fmt: skip
    received = {"receiver": [("maker", "results_dir", ("d/run", "d/absent"))]}
    book._execute_chapters(chapters, "python3", 2, received)
    assert events.index(("start", "receiver")) > events.index(("end", "maker"))
    assert events.index(("start", "other")) < events.index(("end", "maker"))  # side by side
    assert ("sees", True) in events
    linked, made = (tmp_path / s / "d" / "run" / "checkpoint.pt" for s in ("receiver", "maker"))
    assert linked.stat().st_ino == made.stat().st_ino
    assert not (tmp_path / "receiver" / "d" / "absent").exists()
    with pytest.raises(book.BookError, match="wait for each other"):
        book._execute_chapters(chapters[:2], "python3", 2,
                               {"maker": [("receiver", "results_dir", ())],
                                "receiver": [("maker", "results_dir", ())]})  # fmt: skip


def test_a_sharing_chapter_starts_at_once_and_trains_nothing_its_maker_trains(
    tmp_path, monkeypatch
):
    """``SHARED_RUNS``: the user's run folder is a link to the maker's; both start side by side,
    the one that reaches the run second waits (``runs.one_trainer``) and finds it trained; a
    chapter missing from the build shares nothing."""
    import threading
    import time

    from deepsim_edu import book
    from deepsim_edu.runs import one_trainer

    trained, lock = [], threading.Lock()

    def fake_execute(source, target, parameters, kernel):
        if source.stem == "user":
            time.sleep(0.2)  # reaches the run while the maker trains it
        with one_trainer(Path(parameters["results_dir"]) / "d" / "run") as run:
            if not (run / "checkpoint.pt").is_file():
                time.sleep(0.5)
                (run / "checkpoint.pt").write_text(source.stem)
                with lock:
                    trained.append(source.stem)
        return 0.0

    monkeypatch.setattr(book, "execute_chapter", fake_execute)
    chapters = []
    for stem in ("maker", "user"):
        (tmp_path / stem).mkdir()
        chapters.append((Path(f"{stem}.ipynb"), Path(f"out/{stem}.ipynb"),
                         {"results_dir": str(tmp_path / stem)}))  # fmt: skip
    shared = {"user": ("maker", ("d/run",)), "absent": ("maker", ("d/other",))}
    book._share_runs({c[0].stem: c[2] for c in chapters}, shared)
    assert (tmp_path / "user" / "d" / "run").resolve() == (tmp_path / "maker" / "d" / "run")
    started = time.monotonic()
    book._execute_chapters(chapters, "python3", 2)
    assert trained == ["maker"]
    assert (tmp_path / "user" / "d" / "run" / "checkpoint.pt").read_text() == "maker"
    assert time.monotonic() - started < 1.0  # side by side: 0.5 s of training, not 1 s
    assert not (tmp_path / "maker" / "d" / "other").exists()


MAKES_DATA_CELL = (
    "import json\nfrom pathlib import Path\n"
    "folder = Path(data_dir) / 'platelet-em'\nfolder.mkdir()\n"
    "(folder / 'dataset.json').write_text('{}')\n"
    "(folder / 'generator.json').write_text(json.dumps({'seed': 0}))"  # embedded, not real
)


def test_standalone_chapters_receive_the_data_chapters_datasets(tmp_path, monkeypatch) -> None:
    """Without real data, the data chapter generates the embedded datasets in its own empty
    data folder and the chapters that declare ``data_dir`` receive hard links to them; the
    build generates nothing itself."""
    from deepsim_edu import book as book_module

    monkeypatch.setattr(book_module, "prepare_data", lambda *a: pytest.fail("generated up front"))
    toc = _tiny_toc(tmp_path / "src", "first", "04_embedded_data")
    _tiny_notebook(tmp_path / "src" / "book" / "first.ipynb", [STANDALONE_CELL])
    _tiny_notebook(tmp_path / "src" / "book" / "04_embedded_data.ipynb", [MAKES_DATA_CELL])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "vgg16_conv.pt").write_bytes(b"weights")
    build = tmp_path / "_build"
    book = _build("receives", build, toc, standalone=True, data_dir=tmp_path / "data",
                  preset="ci", jobs=2)  # fmt: skip
    own = (build / "standalone" / "first").resolve()
    html = unescape((book.html / "book" / "first.html").read_text())
    assert f"folders {own / 'data'} {own / 'results'} ['platelet-em', 'vgg16_conv.pt'] []" in html
    made = build / "standalone" / "04_embedded_data" / "data" / "platelet-em" / "generator.json"
    assert (own / "data" / "platelet-em" / "generator.json").stat().st_ino == made.stat().st_ino
    assert not (tmp_path / "data" / "platelet-em").exists()
