# Two commands on a fresh machine:
#   make run    - set up .venv and run the main job
#   make test   - set up .venv (with the test extras), lint, and run the whole test suite
#   make lint   - fix what ruff can (import order), then check (config in pyproject.toml)
# torch is installed first and pinned (constraints.txt): a bare `torch` requirement with no torch
# present would download several GB of CUDA packages.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: run test lint install install-test clean

$(VENV)/.core: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[study]"
	touch $@

# The feature browser's tests drive Debian's Chromium through its chromedriver (nothing is downloaded
# at run time); installed from the Debian archive when missing.
$(VENV)/.test: $(VENV)/.core
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	$(PIP) -e ".[study,test,interop,wandb,notebook,ray]"
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test

run: $(VENV)/.core
	$(VENV)/bin/husai study --config configs/study.yaml --out runs/study --executor process --workers 2

test: $(VENV)/.test
	$(PY) -m ruff check husai tests benchmarks
	WANDB_MODE=offline $(PY) -m pytest -q

lint: $(VENV)/.test
	$(PY) -m ruff check --fix husai tests benchmarks

clean:
	rm -rf $(VENV) runs
