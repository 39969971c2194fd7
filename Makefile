# `make demo` and `make test` work on a fresh clone: both create or reuse .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo demo-defenses lint test test-all test-browser chromium bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,ray,dicom,mlflow]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medrobust demo
	$(VENV)/bin/medrobust demo --task segmentation

# robust training: four models of one architecture trained four ways (about 7 minutes on 2 cores)
demo-defenses: $(STAMP)
	$(VENV)/bin/medrobust demo --task defenses

# ruff (lint and format check) and mypy over the package; part of `make test`, so CI runs it
lint: $(STAMP)
	$(VENV)/bin/ruff check src
	$(VENV)/bin/ruff format --check src
	$(VENV)/bin/mypy

# the tests run in TEST_WORKERS processes (pytest-xdist), a test file per worker at a time, one torch thread each
# (more threads than cores make OpenMP spin and every test slower); bytecode is cached even where the environment
# says not to (PYTHONDONTWRITEBYTECODE), so the CLI, Ray and worker processes the tests start do not each compile
# the package again
TEST_WORKERS ?= 2
test: $(STAMP) lint
	PYTHONDONTWRITEBYTECODE= OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-all: $(STAMP) chromium
	$(PY) -m pytest -q -m ""

# The report's browser test opens report.html in Debian's headless Chromium; it skips when chromium is absent.
# `make test` never installs anything; these targets install chromium when missing (best effort: needs apt).
chromium:
	@test -x /usr/bin/chromium || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium) \
	  || echo "chromium could not be installed; the browser test will skip"; }

test-browser: $(STAMP) chromium
	$(PY) -m pytest -q -m browser tests/test_report.py

bench: $(STAMP)
	$(PY) bench/attacks.py

clean:
	rm -rf $(VENV) runs .pytest_cache
