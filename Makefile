# `make demo` and `make test` do all set-up on a fresh machine with Python 3.11.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= work
# pip prints one harmless line per local index folder that lacks a package; hide only those.
PIP_QUIET := sed "/is ignored: it is neither a file nor a directory/d"

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
	@# Tests use two Debian tools: dcmtk (an independent DICOM renderer) and headless Chromium (report.html).
	@missing=""; command -v dcmj2pnm >/dev/null || missing="$$missing dcmtk"; command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "not installed and not installable here:$$missing (the tests that need them are skipped)"; fi; \
	fi

test: install-dev
	$(PY) -m pytest tests -q

clean:
	rm -rf $(WORK)
