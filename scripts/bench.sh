#!/usr/bin/env bash
# Ingest benchmark: a release meterd on a temp dir, the load generator in examples/loadgen.rs,
# and the machine's raw fdatasync rate. Prints one line per scenario (docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin meterd --example loadgen
dir=$(mktemp -d "${TMPDIR:-/tmp}/meterd-bench.XXXXXX")
trap 'kill $(cat "$dir/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$dir"' EXIT
export METERD_STORAGE__DATA_DIR="$dir/data" METERD_INGEST__SOCKET="$dir/meterd.sock" METERD_ADMIN__SOCKET="$dir/admin.sock"
export METERD_METRICS__LISTEN=127.0.0.1:0 METERD_AWS__PRODUCT_CODE=prod-bench
# Nothing is sealed during a run; the endpoint only has to be a loopback address.
export METERD_AWS__ENDPOINT_URL=http://127.0.0.1:9 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true
target/release/meterd run 2>"$dir/meterd.log" &
echo $! >"$dir/pid"
for _ in $(seq 100); do [ -S "$dir/meterd.sock" ] && break; sleep 0.05; done
seconds=${BENCH_SECONDS:-5}
target/release/examples/loadgen --fsync-probe "$dir" --seconds 3
target/release/examples/loadgen --socket "$dir/meterd.sock" --connections 32 --depth 64 --seconds "$seconds"
target/release/examples/loadgen --socket "$dir/meterd.sock" --connections 32 --depth 1 --seconds "$seconds"
target/release/examples/loadgen --socket "$dir/meterd.sock" --connections 1 --depth 1 --seconds "$seconds"
kill -TERM "$(cat "$dir/pid")"; wait "$(cat "$dir/pid")" || true
ls "$dir/data/outbox/blobs" | wc -l | sed 's/^/blob_files=/'
