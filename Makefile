# maitred: the two commands a newcomer needs are `make demo` and `make test`.
# The interpreter's build is part of the data plane's speed: half of its CPU time per
# request is CPython's own (README, "The interpreter"). Prefer the distribution's, which
# Debian builds with PGO and LTO and links into the executable, over the first python3 on
# PATH (pyenv builds neither by default) when it is 3.11 or newer, can make a venv and has
# the headers mypyc compiles against (Debian: python3-venv, python3-dev; .ci/run installs both).
PYTHON ?= $(shell for candidate in /usr/bin/python3 python3; do \
	$$candidate -c 'import ensurepip, os, sys, sysconfig; sys.exit(sys.version_info < (3, 11) \
		or not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
		2>/dev/null && { echo $$candidate; exit; }; done; echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint fuzz bench profile clean

# The per-request packages are compiled with mypyc at install: rebuild when they change.
$(STAMP): pyproject.toml setup.py $(wildcard src/maitred/proxy/*.py src/maitred/balancing/*.py)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	rm -f src/*__mypyc*.so  # the previous build's shared library (its name is a hash)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## Run the embedded default: three demo backends, the balancer on :8080, admin on :9090.
demo: $(STAMP)
	$(BIN)/maitred demo

## Lint, type-check and run every test.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q
	# The same source uncompiled, as it runs when MAITRED_PURE_PYTHON=1 or after an edit.
	MAITRED_PURE_PYTHON=1 $(BIN)/python -m pytest -q tests/fuzz \
		tests/test_proxy_http.py tests/test_compiled_data_plane.py

## The fuzzers at 20,000 examples per test (about 6 minutes; `make test` runs 200).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q --timeout=0 tests/fuzz

lint: $(STAMP)
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py
	$(BIN)/mypy

## Benchmarks side by side with HAProxy and NGINX (installs them with apt if missing).
bench: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench

profile: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.profile

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache bench/out
	find src -name '*.so' -delete
