#!/usr/bin/env bash
# Runs every test of meterd: the Rust suites (unit, SDK against the emulator, CLI), then the boto3
# suite and the client libraries' suites (clients/) against the built binary. Creates .venv with
# boto3 and pytest on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c "import boto3, pytest" 2>/dev/null; then
  echo "== creating .venv with boto3 and pytest"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/boto3/requirements.txt
fi

cargo test --locked
METERD_BIN=target/debug/meterd .venv/bin/python -m pytest tests/boto3 -q -p no:cacheprovider

# The client libraries, each against the real daemon (clients/*/README.md).
METERD_BIN="$PWD/target/debug/meterd"
(cd clients/python && METERD_BIN="$METERD_BIN" ../../.venv/bin/python -m pytest -q -p no:cacheprovider)
(cd clients/go && METERD_BIN="$METERD_BIN" go test -count=1 ./...)
(cd clients/node && METERD_BIN="$METERD_BIN" node --test)
