"""Build the book: run the experiment, execute every chapter with papermill, render the HTML.

Jupyter Book 1 has no parameters, so the chapters are executed here and the book is built from
the executed copies with execution switched off (``_config.yml``)::

    data ──► run_experiment(preset) ──► papermill, one chapter at a time, cwd = repository root
         ──► <build_dir>/source/   a staging copy of the book (config, toc, pages, executed
                                   notebooks, the offline JS in _assets/); the source stays clean
         ──► jupyter-book build -W -n --keep-going ──► <build_dir>/html/index.html

Every chapter gets the same parameters (``preset``, ``device``, ``data_dir``, ``results_dir``)
in place of its cell tagged ``parameters``; the cell papermill injects is tagged ``remove-cell``
so the HTML does not show it twice. A failing cell fails the build with the chapter's name.

Offline HTML: MathJax and the ipywidgets renderer (require.js + @jupyter-widgets/html-manager's
``embed-amd.js``) come from npm tarballs pinned below (version and sha256), fetched once with
``npm pack`` into ``.cache/npm`` (``make book-assets``); ``_config.yml`` points at the copies
that ``_assets/`` puts next to the pages (``html_extra_path``), never at a CDN.
"""

from __future__ import annotations

import fnmatch
import hashlib
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
    import json

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


def execute_chapter(notebook: Path, output: Path, parameters: dict, kernel: str) -> float:
    """Execute ``notebook`` into ``output`` with papermill (cwd = repo root); seconds taken.

    The injected-parameters cell is tagged ``remove-cell`` and stream outputs are collapsed at
    carriage returns. A chapter without a ``parameters`` cell or with a failing cell raises
    BookError (naming the chapter; the executed copy keeps the traceback).
    """
    import nbformat
    import papermill

    source = nbformat.read(notebook, as_version=4)
    if not any("parameters" in cell.metadata.get("tags", []) for cell in source.cells):
        raise BookError(f"chapter {notebook.name} has no cell tagged 'parameters'")
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name=kernel,
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


def _execute_chapters(chapters: list[tuple[Path, Path]], parameters: dict, kernel: str,
                      jobs: int) -> None:  # fmt: skip
    """Execute (source, target) chapters, ``jobs`` kernels at a time; the first failure raises
    after the running ones have finished. Each chapter's time is logged as it ends."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max(1, min(jobs, len(chapters) or 1))) as pool:
        futures = {pool.submit(execute_chapter, s, t, parameters, kernel): s for s, t in chapters}
        errors = []
        for future in as_completed(futures):
            try:
                _log(f"{futures[future].name:<32} {future.result():6.1f} s")
            except BookError as error:
                errors.append(error)
    if errors:
        raise errors[0]


# --- data and results ----------------------------------------------------------------------------


def prepare_data(data_dir: str | Path) -> None:
    """Generate the embedded datasets in ``data_dir`` unless it holds real (converted) data.

    A dataset folder without ``generator.json`` was made by ``data_scripts/``: real data.
    """
    data_dir = Path(data_dir)
    real = [name for name in REAL_DATASETS if (data_dir / name / "dataset.json").is_file()
            and not (data_dir / name / "generator.json").is_file()]  # fmt: skip
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


def build_book(
    preset: str = "quick", device: str = "cpu", data_dir: str | Path = "data",
    results_dir: str | Path | None = None, build_dir: str | Path = "_build",
    chapters: list[str] | None = None, run_experiment: bool = True,
    toc: str | Path | None = None, config: str | Path | None = None, jobs: int = 1,
) -> Path:  # fmt: skip
    """Execute the chapters and build the HTML book; returns ``<build_dir>/html/index.html``.

    ``preset``/``device``/``data_dir``/``results_dir`` become every chapter's parameters
    (``results_dir=None``: ``results/<preset>``). ``run_experiment`` first runs the preset's
    grid (finished runs are skipped). ``chapters``: toc entries (e.g. ``"book/06_deepsim"``)
    to execute; the others become one-line stub pages so links still resolve (default: all).
    ``toc``/``config``: another ``_toc.yml`` (entries relative to its folder) or ``_config.yml``
    (default: the repository's). Relative paths are taken from the current directory.
    ``jobs``: experiment runs and chapters executed side by side (each chapter in its own
    kernel; they only read what the experiment wrote).
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
    built = [e for e in entries if chapters is None or e == entries[0] or e in chapters]
    sources = {entry: _source_file(toc.parent, entry) for entry in built}
    cache = fetch_assets()

    if run_experiment:
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
    _extract_assets(cache, stage / "_assets")
    parameters = {"preset": preset, "device": device, "data_dir": _as_parameter(data_dir),
                  "results_dir": _as_parameter(results_dir)}  # fmt: skip
    jupyter_dir = build_dir / "jupyter"
    kernel = _kernelspec(jupyter_dir)
    old_path = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(jupyter_dir), old_path]))
    chapters_to_run = []
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
            if source.suffix == ".ipynb":
                chapters_to_run.append((source, target))
            else:
                shutil.copy2(source, target)
        _execute_chapters(chapters_to_run, parameters, kernel, jobs)
    finally:
        if old_path is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old_path
    return render(stage, build_dir)


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
