# Targets read like the README. Variables can be overridden: make dev PG_PORT=5544
SHELL := /bin/bash
export PG_PORT ?= 5433
export PG2_PORT ?= 5435
export SM_PORT ?= 5000
export LAMBDA_PORT ?= 9000
export RELEASE ?=

.PHONY: bench cli fuzz dev reset test test-faults test-unit check fmt nextest tools lint lint-migrations build deploy clean

# Offline template checks. cfn-lint is pinned to 1.51.0 (newer releases stopped flagging
# invalid runtimes and architectures); aws-sam-cli pins a newer cfn-lint of its own, so each
# lives in a virtualenv of its own under .venv/.
CFN_LINT_VERSION := 1.51.0
SAM_CLI_VERSION := 1.170.0
LINT_VENV := .venv/lint
SAM_VENV := .venv/sam
# schemathesis for make fuzz and make test's bounded run.
SCHEMATHESIS_VERSION := 4.32.5
FUZZ_VENV := .venv/fuzz
# zig for cargo-lambda's arm64 cross-compilation, in the SAM venv (first on PATH in `make build`).
ZIG_VERSION := 0.13.0.post1

## dev: bring up PostgreSQL (primary and secondary), the local Secrets Manager and the functions;
## Ctrl-C stops all
dev:
	scripts/stack.sh dev

## reset: stop the local stack (if running) and delete its clusters, for a fresh `make dev`
## (the logs in .local stay)
reset:
	scripts/stack.sh wipe

# The fault tests stop PostgreSQL, rotate its password and kill functions: they run alone.
FAULTS := test(/^e2e::faults::/)
# Run one at a time, after the rest: the fault tests (they kill the stack's workers) and the
# million-row moves (their promise, a fence under a second, needs the machine to itself).
SERIAL := $(FAULTS) | test(/_million_rows_/)

## test: formatting, lints, template lint, migration lint (squawk), unit tests, the PostgreSQL
## and end-to-end tests on the local stack, a bounded schemathesis run (no 5xx allowed), then
## the fault tests and the million-row moves one at a time
test: check lint lint-migrations nextest $(FUZZ_VENV)/.installed-$(SCHEMATHESIS_VERSION)
	scripts/stack.sh run -- bash -c "cargo nextest run --workspace --no-fail-fast -E 'not ($(SERIAL))' \
		&& scripts/fuzz.sh $(TEST_FUZZ_EXAMPLES) 1 \
		&& cargo nextest run --workspace --no-fail-fast -j 1 -E '$(SERIAL)'"

## test-faults: only the fault tests (on the local stack)
test-faults: nextest
	scripts/stack.sh run -- cargo nextest run --workspace --no-fail-fast -j 1 -E '$(FAULTS)'

# Each test runs in a process of its own (some tests set process-wide AWS SDK variables).
nextest:
	@cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest

## check: formatting, clippy, and the structure of shared/ (no import circle, no file over 400
## lines without its reason: scripts/check-structure.py); no stack needed
check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	python3 scripts/check-structure.py shared/src

# The bench runs a stack of its own (release builds, a throwaway cluster in .local/bench, other
# ports), so that a running `make dev` is neither measured nor disturbed.
BENCH_STACK := STACK_DIR=.local/bench PG_PORT=5434 PG2_PORT=5436 SM_PORT=5100 LAMBDA_PORT=9100 RELEASE=1

## bench: every performance goal measured in one run, printed as a table (docs/performance.md)
bench:
	$(BENCH_STACK) scripts/stack.sh wipe
	$(BENCH_STACK) scripts/stack.sh run -- target/release/bench; status=$$?; \
		$(BENCH_STACK) scripts/stack.sh wipe; exit $$status

## cli: install the operator CLI `dbtools` into ~/.cargo/bin (docs/cli.md)
cli:
	cargo install --locked --path cli

## test-unit: the tests that need no stack
test-unit:
	cargo nextest run --workspace --lib --bins

tools:
	scripts/stack.sh tools

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf .local

$(LINT_VENV)/.installed-$(CFN_LINT_VERSION):
	python3 -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --disable-pip-version-check -q 'cfn-lint==$(CFN_LINT_VERSION)'
	touch $@

$(SAM_VENV)/.installed-$(SAM_CLI_VERSION)-$(ZIG_VERSION):
	python3 -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --disable-pip-version-check -q 'aws-sam-cli==$(SAM_CLI_VERSION)' 'ziglang==$(ZIG_VERSION)'
	touch $@

## lint: cfn-lint and sam validate --lint on infra/template.yaml, offline
lint: $(LINT_VENV)/.installed-$(CFN_LINT_VERSION) $(SAM_VENV)/.installed-$(SAM_CLI_VERSION)-$(ZIG_VERSION)
	$(LINT_VENV)/bin/cfn-lint infra/template.yaml
	cd infra && SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} \
		../$(SAM_VENV)/bin/sam validate --lint --template template.yaml

## lint-migrations: squawk over every migration, and a check that it refuses an unsafe one
lint-migrations:
	scripts/lint-migrations.sh

## build: the deployable arm64 artifacts (sam build through cargo-lambda and zig)
build: $(SAM_VENV)/.installed-$(SAM_CLI_VERSION)-$(ZIG_VERSION)
	scripts/stack.sh tools
	cd infra && PATH="$(CURDIR)/$(SAM_VENV)/bin:$(CURDIR)/.venv/bin:$$PATH" SAM_CLI_TELEMETRY=0 \
		sam build --template template.yaml --beta-features
	@ls -l infra/.aws-sam/build/*/bootstrap

## deploy: sam deploy (guided the first time, when infra/samconfig.toml has no parameters yet)
deploy: build
	cd infra && PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" SAM_CLI_TELEMETRY=0 \
		sam deploy $$(grep -q '^parameter_overrides' samconfig.toml || echo --guided)

## fuzz: schemathesis from infra/openapi.yaml against a running `make dev` (FUZZ_EXAMPLES per operation)
FUZZ_EXAMPLES ?= 1000
# make test's bounded run: about 400 requests, seconds.
TEST_FUZZ_EXAMPLES ?= 30
fuzz: $(FUZZ_VENV)/.installed-$(SCHEMATHESIS_VERSION)
	scripts/fuzz.sh $(FUZZ_EXAMPLES)

$(FUZZ_VENV)/.installed-$(SCHEMATHESIS_VERSION):
	python3 -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/pip install --disable-pip-version-check -q 'schemathesis==$(SCHEMATHESIS_VERSION)'
	touch $@
