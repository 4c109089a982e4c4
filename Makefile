# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQUIREMENTS := requirements.txt requirements-sam2.txt requirements-labelstudio-sdk.txt requirements-test.txt pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat $(REQUIREMENTS) | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: install run test lint format test-all test-studio screenshots selfcheck bench clean

# one environment for running and testing: the pinned requirements, then sam2 and this package (built
# with the environment's own setuptools and torch: no isolated build pulls anything else in); Label
# Studio's SDK without its own pins (requirements-labelstudio-sdk.txt says why)
$(STAMP): $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-test.txt
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -r requirements-sam2.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-labelstudio-sdk.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	GRADIO_SERVER_NAME=$${GRADIO_SERVER_NAME:-$(HOST)} GRADIO_SERVER_PORT=$${GRADIO_SERVER_PORT:-$(PORT)} $(PY) -m app

test: $(STAMP)
	$(PY) -m pytest -q

# ruff: lint rules and formatting (settings in pyproject.toml); `make format` applies the formatting
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# the studio alone: job store, API against a launched app, and the page in headless chromium
test-studio: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/test_app.py tests/test_studio_jobs.py tests/test_studio_api.py tests/test_browser_studio.py

# screenshots of every tab for the README (docs/img/studio-*.png), taken by the browser test
screenshots: $(STAMP)
	OMP_NUM_THREADS=1 STUDIO_SCREENSHOTS=docs/img $(PY) -m pytest -q tests/test_browser_studio.py tests/test_browser_concept.py

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

selfcheck: $(STAMP)
	$(PY) -m adapt selfcheck

bench: $(STAMP)
	$(PY) bench/step_cost.py

clean:
	rm -rf $(VENV) .pytest_cache
