# The commands a newcomer needs: `sh packaging/install-deps.sh` (as root), `make test` and
# `make demo` (see README.md). `make check` is the quick subset, `make lint` the code checks
# (`make test` runs them first: a finding fails the run before the suite starts).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PYTEST_ARGS ?=
# The fast layers: tests/unit, tests/sql and tests/tools without the tests marked slow (real
# pgBackRest, Barman, clusters of their own) or supervisor (a real pggit-supervisor process: every
# test that uses the make_service fixture). That leaves the runner with its fake tool and the
# packaging files of tests/tools; tests/service is left out whole. Layers: tests/conftest.py.
CHECK_LAYERS = tests/unit tests/sql tests/tools
CHECK_MARKS  = not slow and not supervisor
# in parallel (pytest-xdist), each process with a server of its own: most of a SQL test's time is
# the clone of its database, which one server does one at a time
CHECK_JOBS  ?= 2

.PHONY: test check chaos lint demo venv deps clean deb bench

# The tests need root (each tool runs as its own OS user, as in production): an ordinary user's
# run goes through sudo, writing nothing as root into the checkout.
AS_ROOT = $(if $(filter 0,$(shell id -u)),,sudo --preserve-env=PGGIT_TEST_PGHOST,PGGIT_TEST_PGPORT,PGGIT_TEST_PGUSER,PGPASSWORD,PGGIT_CHAOS_SEED,PGGIT_CHAOS_JOBS,PGGIT_CHAOS_SECONDS \
          env PYTHONDONTWRITEBYTECODE=1)
PYTEST = $(AS_ROOT) $(PY) -m pytest $(if $(AS_ROOT),-p no:cacheprovider)

# A venv without a working pip (python3-venv was missing on the first try) is made again.
$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } || \
	    { rm -rf $(VENV); echo "make: cannot create $(VENV); as root run: sh packaging/install-deps.sh" >&2; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Installs every Debian package the tests, the tools, the demo and `make deb` need (needs root).
deps:
	sh packaging/install-deps.sh

# lint is a prerequisite, so it finishes (and must pass) before pytest starts, even under -j.
# The whole suite runs in TEST_JOBS (default 2, the cores CI has) pytest-xdist processes, each with
# a throwaway server of its own: most of the time goes to supervisors starting and stopping and to
# real tools, which the other process overlaps. TEST_JOBS=0 runs it in one process.
TEST_JOBS ?= 2
test: venv lint
	$(PYTEST) $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS)) $(PYTEST_ARGS)

# The long chaos soak (tests/chaos/test_chaos_soak.py; `make test` runs a short one of about a minute):
# a few thousand jobs under ten minutes of seeded faults, its figures printed. The seed is random
# unless PGGIT_CHAOS_SEED is given; a failure prints the line that replays it.
CHAOS_JOBS    ?= 3000
CHAOS_SECONDS ?= 600
chaos: venv
	PGGIT_CHAOS_JOBS=$${PGGIT_CHAOS_JOBS:-$(CHAOS_JOBS)} PGGIT_CHAOS_SECONDS=$${PGGIT_CHAOS_SECONDS:-$(CHAOS_SECONDS)} \
	    $(PYTEST) -s tests/chaos/test_chaos_soak.py $(PYTEST_ARGS)

check: venv
	$(PYTEST) -n $(CHECK_JOBS) -m '$(CHECK_MARKS)' $(CHECK_LAYERS) $(PYTEST_ARGS)

# All three run, so one look shows every finding; the target fails if any of them does.
LINTED = pggit_supervisor tests docs packaging bench
lint: venv
	@status=0; \
	echo "ruff check $(LINTED)"; $(VENV)/bin/ruff check $(LINTED) || status=1; \
	echo "ruff format --check $(LINTED)"; $(VENV)/bin/ruff format --check $(LINTED) || status=1; \
	echo "mypy pggit_supervisor"; $(VENV)/bin/mypy pggit_supervisor || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

demo: venv
	$(PY) docs/demo.py

# The Debian package: packaging/debian becomes build/deb/debian; the .deb lands in dist/.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' pggit_supervisor/__init__.py)
deb:
	sh packaging/install-deps.sh --check deb
	rm -rf build/deb && mkdir -p build/deb dist
	tar cf - --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git --exclude='*.egg-info' \
	    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache . \
	    | tar xf - -C build/deb
	cp -r packaging/debian build/deb/debian
	cd build/deb && dpkg-buildpackage -us -uc -b
	mv build/pggit-supervisor_$(VERSION)_all.deb build/pggit-supervisor_$(VERSION)_*.changes build/pggit-supervisor_$(VERSION)_*.buildinfo dist/

# issue 12: every benchmark figure on a throwaway cluster of its own, one table (bench/README.md,
# docs/benchmarks.md). `make bench BENCH_ARGS=--quick` for the short version, `--only 1,3` for some.
BENCH_ARGS ?=
bench: venv
	$(AS_ROOT) $(PY) bench/run.py $(BENCH_ARGS)
