# Two commands on a fresh machine:
#   make run    - set up .venv and run the main job
#   make test   - set up .venv (with the test extras), lint, and run the whole test suite; then the
#                 TransformerLens tests again in .venv-tl4 (TransformerLens 4, no SAELens): make test-tl4
#   make lint   - format with ruff and fix what it can (import order), then check (pyproject.toml)
# torch is installed first and pinned (constraints.txt): a bare `torch` requirement with no torch
# present would download several GB of CUDA packages.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

# sae-lens 6 requires transformer-lens < 4, so .venv has TransformerLens 3 and TransformerLens 4 gets
# an environment of its own, for the interop tests only.
VENV_TL4 := .venv-tl4
PY_TL4   := $(VENV_TL4)/bin/python
PIP_TL4  := $(PY_TL4) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: run test test-tl4 lint install install-test clean

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

$(VENV_TL4)/.test: pyproject.toml constraints.txt
	test -x $(PY_TL4) || $(PYTHON) -m venv $(VENV_TL4)
	$(PIP_TL4) torch==2.13.0
	$(PIP_TL4) -e ".[test,transformer-lens]" "transformer-lens>=4"
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test

run: $(VENV)/.core
	$(VENV)/bin/husai study --out runs/study --executor process --workers 2

test: $(VENV)/.test $(VENV_TL4)/.test
	$(PY) -m ruff check husai tests benchmarks
	$(PY) -m ruff format --check -q husai tests benchmarks
	WANDB_MODE=offline HUSAI_EXPECT_TL_MAJOR=3 $(PY) -m pytest -q
	HUSAI_EXPECT_TL_MAJOR=4 $(PY_TL4) -m pytest -q tests/model/test_interop.py

test-tl4: $(VENV_TL4)/.test
	HUSAI_EXPECT_TL_MAJOR=4 $(PY_TL4) -m pytest -q tests/model/test_interop.py

lint: $(VENV)/.test
	$(PY) -m ruff format -q husai tests benchmarks
	$(PY) -m ruff check --fix husai tests benchmarks

clean:
	rm -rf $(VENV) $(VENV_TL4) runs
