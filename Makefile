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

## bench: planning, KCL evaluation, engine-overhead and fleet fan-out benchmarks (figures in BENCHMARKS.md).
## The fleet benchmark (drover vs pdsh, parallel-ssh, ansible on real sshd hosts) needs root; ~20 min.
bench: setup
	$(CARGO) build --release -p drover-bench -p drover-cli
	target/release/drover-bench-plan
	target/release/drover-bench-exec
	@if [ "$$(id -u)" -eq 0 ]; then target/release/drover-bench-fleet; \
	else echo "drover-bench-fleet skipped: it makes real hosts (sshd in namespaces) and needs root"; fi

clean:
	rm -rf $(VENV) target
