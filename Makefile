# The two set-up commands of the README. Each creates the virtual environment it needs (.venv)
# and installs the pinned requirements; later runs reuse it while the requirement files are
# unchanged.
#
#   make run    the main job: generate the embedded datasets, run the registration demo
#   make test   the test suite (what CI runs, through .ci/run)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data
OUT    ?= results

.PHONY: run test lint clean-venv

$(VENV)/.runtime-installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime-installed
	$(PY) -m deepsim_edu data --dataset platelet-em --data $(DATA)
	$(PY) -m deepsim_edu data --dataset phc-u373 --data $(DATA)
	$(PY) -m deepsim_edu data --dataset brain-mri --data $(DATA)
	$(PY) -m deepsim_edu demo --out $(OUT)/demo

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check deepsim_edu tests bench data_scripts

clean-venv:
	rm -rf $(VENV)
