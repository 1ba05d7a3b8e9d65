# drover: the two set-up commands are `make run` (the main job) and
# `make test` (the whole test suite). Both install what they need.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
CARGO ?= cargo
DROVER := target/release/drover

.PHONY: setup debian run test bench clean

## setup: Debian packages (when root), the project venv with kcl-lib, the release build.
setup: $(VENV)/.installed debian

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

debian:
	@bash scripts/debian-packages.sh

## run: the main job: plan the full deployment, then plan and validate the quickstart.
run: setup
	$(CARGO) build --release --bin drover
	$(DROVER) validate workflows/quickstart.k
	$(DROVER) plan workflows/wuji.k

## test: formatting, lints and the whole test suite.
test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) nextest run --workspace --locked --no-fail-fast

## bench: planning and KCL evaluation benchmarks; figures go to BENCHMARKS.md.
bench: setup
	$(CARGO) run --release --bin drover-bench-plan

clean:
	rm -rf $(VENV) target
