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

.PHONY: setup demo test test-fast bench bench-quick clean

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

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache onnxcompress-demo
