# Every target sets up .venv with uv on first use; a fresh machine needs only python3 + make.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
VENV_STAMP := .venv/.synced
# The demo needs only the runtime dependencies: its own stamp, no dev group. `--inexact`
# keeps the dev tools a `make test` installed (and its stamp true).
DEMO_STAMP := .venv/.synced-runtime
PYTEST_ARGS ?=
# Two xdist workers: the machine the suite is budgeted for has two cores (docs/decisions.md).
TEST_WORKERS ?= 2
PY_DIRS := spine_pipeline spine_pipeline_tests benchmarks soak

.PHONY: demo test dev bench bench-scale lint fmt soak clean test-deps

# Debian's chromium renders the HTML pages in the audit and evidence tests. `make test`
# installs it when it can (root and apt-get); otherwise those tests skip with the reason.
# CI's .ci/run installs it itself (and the tests fail without it there).
CHROMIUM := /usr/bin/chromium

$(VENV_STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

$(DEMO_STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --quiet --frozen --no-dev --inexact
	@touch $@

demo: $(DEMO_STAMP)  ## the main job on the embedded simulator
	@$(UV) run --quiet --frozen --no-sync spine-pipeline demo

test-deps:
	@test -x $(CHROMIUM) && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser tests" >&2; \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
	    || echo "make test: installing chromium failed: the browser tests will skip" >&2; \
	else \
	  echo "make test: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): the browser tests will skip" >&2; \
	fi

test: $(VENV_STAMP) test-deps  ## the whole test suite (pytest exit 5, no tests, fails too)
	@$(UV) run --frozen pytest -n $(TEST_WORKERS) --dist load $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	exit $$rc

dev: $(VENV_STAMP)  ## simulator + dg dev
	$(UV) run --frozen spine-pipeline dev

soak: $(VENV_STAMP)  ## fault-injection soak: 1,000 runs on local disk, then on S3 (SeaweedFS)
	$(UV) run --frozen python -m soak run --backend both --runs $(or $(SOAK_RUNS),1000)

bench: $(VENV_STAMP)  ## benchmarks; writes docs/benchmarks.md
	$(UV) run --frozen python -m benchmarks

# Not in `bench` nor CI: 1,000,000 runs, under an hour on 2 cores (the archive is generated
# once, about 40 minutes, and cached in .bench/audit). Its rows join the same table.
# BENCH_ARGS=--profile writes a pyinstrument tree of the pass to .bench/profiles/scale.txt.
bench-scale: $(VENV_STAMP)  ## the audit and DuckLake figures at 1,000,000 runs; writes docs/benchmarks.md
	$(UV) run --frozen python -m benchmarks scale $(BENCH_ARGS)

lint: $(VENV_STAMP)
	$(UV) run --frozen ruff check $(PY_DIRS)
	$(UV) run --frozen ruff format --check $(PY_DIRS)
	$(UV) run --frozen mypy

fmt: $(VENV_STAMP)
	$(UV) run --frozen ruff check --fix $(PY_DIRS)
	$(UV) run --frozen ruff format $(PY_DIRS)

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache data/archive data/audit.duckdb data/dagster_home
