# Targets read like the README. Variables can be overridden: make dev PG_PORT=5544
SHELL := /bin/bash
export PG_PORT ?= 5433
export SM_PORT ?= 5000
export LAMBDA_PORT ?= 9000
export RELEASE ?=

.PHONY: dev test test-unit check fmt nextest tools clean

## dev: bring up PostgreSQL, the local Secrets Manager and the functions; Ctrl-C stops all
dev:
	scripts/stack.sh dev

## test: formatting, lints, unit tests, and the PostgreSQL + end-to-end tests on the local stack
test: check nextest
	scripts/stack.sh run -- cargo nextest run --workspace --no-fail-fast

# Each test runs in a process of its own (some tests set process-wide AWS SDK variables).
nextest:
	@cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest

## check: formatting and clippy, no stack needed
check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

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
