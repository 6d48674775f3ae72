# `make demo` and `make test` do all set-up on a fresh machine with Python 3.11.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= work
# pip prints one harmless line per local index folder that lacks a package; hide only those.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: install install-dev demo test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt 2>&1 | $(PIP_QUIET)
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-dev.txt 2>&1 | $(PIP_QUIET)
	touch $@

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev
	@# report.html is tested in headless Chromium; install Debian's package where we may.
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not found and not installable here: the report browser test will be skipped"

test: install-dev
	$(PY) -m pytest tests -q

clean:
	rm -rf $(WORK)
