# The two commands a newcomer needs: `make test` and `make demo` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo venv clean deb

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

demo: venv
	$(PY) docs/demo.py

# The Debian package: packaging/debian becomes build/deb/debian; the .deb lands in dist/.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' pggit_supervisor/__init__.py)
deb:
	rm -rf build/deb && mkdir -p build/deb dist
	tar cf - --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git --exclude='*.egg-info' \
	    --exclude=__pycache__ --exclude=.pytest_cache . | tar xf - -C build/deb
	cp -r packaging/debian build/deb/debian
	cd build/deb && dpkg-buildpackage -us -uc -b
	mv build/pggit-supervisor_$(VERSION)_all.deb build/pggit-supervisor_$(VERSION)_*.changes build/pggit-supervisor_$(VERSION)_*.buildinfo dist/
