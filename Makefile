# Two commands for a newcomer: `make run` and `make test`. Both create .venv on first use
# and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip --disable-pip-version-check -q
# Installed before the project so that dependency resolution never picks a CUDA build.
TORCH_VERSION ?= 2.13.0

.PHONY: run test lint bench clean deploy-test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/taskalign serve

# pytest exits 5 when it collects no test; that is not a failure of the suite. Two
# processes, a test file each at a time (module-scoped servers stay in one process), each
# on one BLAS/OpenMP thread: two processes of two spinning threads on two cores made some
# training tests 20x slower (6 s alone, 130 s beside another).
TEST_PROCESSES ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# Builds the images from Debian packages and starts the compose stack for real (needs a
# Docker engine and docker-compose; about 10 minutes). Not part of `make test`.
deploy-test: $(STAMP)
	TASKALIGN_DEPLOY_TEST=1 $(PY) -m pytest -q -s tests/deploy

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/recommend.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
