# Every target creates .venv when it is missing, so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-slow check bench demo clean install uninstall

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

## make test: the whole suite except the long soak and crash loops (under 10 minutes on 2 cores):
## first in two workers that each take whole files, then the tests of the carriage's timing alone
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not realtime" -n 2 --dist loadfile
	$(PY) -m pytest -q -m "realtime and not slow"

## make check: lint, format and strict types (ruff and mypy); fails on the first finding
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## make test-slow: only the long loops
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

## make bench: every benchmark; each prints one JSON object as its last line
bench: $(STAMP)
	@set -e; for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b; done

## make demo: simulator plus agent polling it, until Ctrl-C
demo: $(STAMP)
	$(PY) -m agent demo

## make install: as root, install and enable the agent on this machine (docs/systemd.md,
## "Installing and enabling"). DESTDIR=/path stages it there instead (packaging, tests);
## PACKAGE=wheel and PIP_ARGS="--no-index --find-links DIR" install offline.
install:
	DESTDIR="$(DESTDIR)" PYTHON="$(PYTHON)" PACKAGE="$(PACKAGE)" PIP_ARGS="$(PIP_ARGS)" sh packaging/install.sh install

## make uninstall: as root, stop, disable and remove it; keeps /etc/oht-agent and /var/lib/oht-agent
uninstall:
	DESTDIR="$(DESTDIR)" sh packaging/install.sh uninstall

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
