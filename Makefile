# The two set-up commands of the README live here: `make demo` and `make test`.
# Both work on a fresh Debian machine as root; `make test` is what .ci/run calls.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the integration tests start as real peers (never mocked).
SYSTEM_PACKAGES := mosquitto mosquitto-clients victoria-metrics mbpoll systemd
SYSTEM_BINARIES := mosquitto mosquitto_sub victoria-metrics mbpoll systemd-analyze
# An independent OPC UA server (node-opcua, from the npm registry) for the interop test.
NODE_PEER := tests/opcua_peer

.PHONY: demo test lint system-deps node-deps venv

demo: $(BIN)/.installed
	$(BIN)/cellfab demo

test: system-deps node-deps $(BIN)/.installed-test lint
	CI=$${CI:-} $(BIN)/pytest

lint: $(BIN)/.installed-test
	$(BIN)/ruff check controller drivers simulators config tests bench docs/step_responses.py
	$(BIN)/ruff format --check controller drivers simulators config tests bench docs/step_responses.py
	$(BIN)/mypy

system-deps:
	@missing=""; for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $(SYSTEM_PACKAGES)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	fi

node-deps: $(NODE_PEER)/node_modules/.installed

$(NODE_PEER)/node_modules/.installed: $(NODE_PEER)/package.json $(NODE_PEER)/package-lock.json
	@command -v npm >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	npm ci --prefix $(NODE_PEER) --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "cellfab needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

$(BIN)/.installed: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.installed-test: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(BIN)/.installed
