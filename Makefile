# The two entry points of the README: `make run` (the main job) and `make test`; `make test-fast` is the
# inner loop (every module exercised, no end-to-end run: the tests marked slow are left out).
# Both create .venv/ and install the project into it when needed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
METHODS ?= dpo,dro,smpo
OUT ?= runs
# pytest-xdist workers: two on the 2-core machines CI and the measured times use (docs/testing.md).
TEST_WORKERS ?= 2

.PHONY: setup run test test-fast
setup: $(STAMP)

# torch / torchvision are pinned to the versions this project is tested with; on a
# GPU machine the same pins give the CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/harness run --methods $(METHODS) --out $(OUT)

test: $(STAMP)
	bash .ci/install-browser.sh
	bash .ci/install-tex.sh
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" --durations=10
