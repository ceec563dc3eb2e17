#!/usr/bin/env bash
# Runs every test of meterd: the Rust suites (unit, SDK against the emulator, CLI), then the boto3
# suite and the client libraries' suites (clients/) against the built binary. Installs what they
# need on first use (scripts/setup.sh: the venv, and Debian packages as root).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the suites need (the venv, Debian packages), installed when missing: scripts/setup.sh.
bash scripts/setup.sh tests

cargo test --locked
METERD_BIN=target/debug/meterd .venv/bin/python -m pytest tests/boto3 -q -p no:cacheprovider

# The client libraries, each against the real daemon (clients/*/README.md).
METERD_BIN="$PWD/target/debug/meterd"
(cd clients/python && METERD_BIN="$METERD_BIN" ../../.venv/bin/python -m pytest -q -p no:cacheprovider)
(cd clients/go && METERD_BIN="$METERD_BIN" go test -count=1 ./...)
(cd clients/node && METERD_BIN="$METERD_BIN" node --test)
