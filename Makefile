# One-command set-up on a fresh machine: `make demo` (set up + run the embedded default) and
# `make test` (set up + run the test suite; `make test-fast`: the quick lane while working). Both
# create the virtual environment at .venv.
#
# torch: the CPU build is all onnxcompress needs. On our machines `pip install torch==2.13.0`
# takes a local CPU wheel; elsewhere pick another build with e.g.
#   make demo TORCH_SPEC="torch==2.5.1" TORCH_PIP_ARGS="--index-url <your CPU wheel index>"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: setup demo test test-fast bench bench-quick zoo-env bench-zoo clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/onnxcompress demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

# the lane to run while working (under 3 minutes on 2 cores): neither the longest tests nor those
# that read ../shared/realdata (tests/conftest.py); `make test` (what CI runs) is the whole suite
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not realdata"

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m bench all

bench-quick: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m bench all --quick

# `python -m bench zoo` exports real architectures (torchvision, timm, ultralytics) with random
# weights in a venv of its own: the registry's torchvision wheels need the torch they were built
# with (2.14.1, a CUDA build of ~5.5 GB on x86_64), which must stay out of the core venv. The
# measurements run in the core venv. ultralytics is optional: the bench skips YOLOv8n without it.
ZOO_VENV ?= .venv-zoo
ZOO_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

$(ZOO_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ZOO_VENV)/bin/python -m pip install --quiet $(TORCH_PIP_ARGS) $(ZOO_TORCH_SPEC) timm onnx onnxscript
	-$(ZOO_VENV)/bin/python -m pip install --quiet ultralytics
	touch $@

zoo-env: $(ZOO_VENV)/.installed

bench-zoo: $(VENV)/.installed $(ZOO_VENV)/.installed
	$(PY) -m bench zoo

clean:
	rm -rf $(VENV) $(ZOO_VENV) build dist *.egg-info .pytest_cache onnxcompress-demo
