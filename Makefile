# drover: the two set-up commands are `make run` (the main job) and
# `make test` (the whole test suite). Both install what they need.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
CARGO ?= cargo
DROVER := target/release/drover

.PHONY: setup debian run test bench bench-quick bench-report clean

## setup: Debian packages (when root), the project venv with kcl-lib, the release build.
setup: $(VENV)/.installed debian

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

debian:
	@bash scripts/debian-packages.sh

## run: the main job: plan the full deployment, run the quickstart for real, roll it back.
run: setup
	$(CARGO) build --release --bin drover
	DROVER=$(DROVER) sh scripts/demo.sh

## test: formatting, lints and the whole test suite.
test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) nextest run --workspace --locked --no-fail-fast
	sh scripts/check-no-leftovers.sh

## bench: every benchmark side by side in one run: drover against pdsh, parallel-ssh and ansible, its
## own targets and this machine's physical limits. Sets up and builds what it needs, prints the time of
## each stage, writes engine/bench/results/*.json (and the logs) and BENCHMARKS.md; within 30 min on
## 2 cores. The fleet benchmark makes real hosts and needs root (skipped, and said so, without it).
bench:
	MAKE="$(MAKE)" $(PYTHON) scripts/bench.py run

## bench-quick: the same at tiny sizes on a debug build, to check the pipeline and the report in a few
## minutes; results and report in target/bench-quick/ (BENCH_PROFILE=release for a release build).
BENCH_PROFILE ?= debug
bench-quick:
	MAKE="$(MAKE)" $(PYTHON) scripts/bench.py run --quick --profile $(BENCH_PROFILE)

## bench-report: BENCHMARKS.md again from engine/bench/results/*.json, without measuring.
bench-report:
	$(PYTHON) scripts/bench.py report

clean:
	rm -rf $(VENV) target
