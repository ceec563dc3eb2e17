#!/usr/bin/env bash
# Fleet mode's benchmark (docs/performance.md), from a fresh machine: builds meterd, the load
# generator and the fleet benchmark (release), installs Debian's postgresql if missing, starts a
# throwaway cluster under a temp dir, then measures
#   - 10 hosts each shipping 100,000 partials of one hour through the real ship stage, and the
#     holder closing that hour of 1,000,000 partials (FLEET_HOSTS, FLEET_PARTIALS change them);
#   - ingest throughput and ack latency (32 x 64) with fleet mode off and on, and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-10}
out=target/bench
mkdir -p "$out"
cargo build --release --locked --bin meterd --example loadgen --example fleet_bench
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
dir=$(mktemp -d "${TMPDIR:-/tmp}/meterd-fleet-bench.XXXXXX")
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    as_pg "$bin/pg_ctl" -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
as_pg "$bin/initdb" -D "$dir/pg" -A trust -U postgres --no-sync >/dev/null
as_pg "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start \
    -o "-p $pg_port -k $dir -c listen_addresses=127.0.0.1 -c shared_buffers=256MB" >/dev/null
url="postgres://postgres@127.0.0.1:$pg_port/postgres"
results="$out/fleet-results.txt"
: >"$results"
echo "== machine"
echo "$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r), $(date -u +%F), PostgreSQL $("$bin/postgres" --version | awk '{print $3}')" \
    | tee -a "$results"

echo "== ship and close"
target/release/examples/fleet_bench --url "$url" --hosts "${FLEET_HOSTS:-10}" --partials "${FLEET_PARTIALS:-100000}" \
    | tee -a "$results"

echo "== ingest with fleet mode off and on (32 connections x 64 in flight)"
meterd=target/release/meterd
loadgen=target/release/examples/loadgen
run_level() {
    local name=$1
    shift
    local port
    port=$(free_port)
    mkdir -p "$dir/$name"
    env METERD_STORAGE__DATA_DIR="$dir/$name/data" METERD_INGEST__SOCKET="$dir/$name/meterd.sock" \
        METERD_ADMIN__SOCKET="$dir/$name/admin.sock" METERD_METRICS__LISTEN="127.0.0.1:$port" \
        METERD_AWS__PRODUCT_CODE=prod-bench METERD_AWS__ENDPOINT_URL=http://127.0.0.1:9 \
        AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true "$@" \
        "$meterd" run 2>>"$dir/$name.log" &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 400); do [ -S "$dir/$name/meterd.sock" ] && break; sleep 0.025; done
    "$loadgen" --socket "$dir/$name/meterd.sock" --connections 32 --depth 64 --seconds "$seconds" --pid "$pid"
    kill -TERM "$pid"
    wait "$pid" || true
}
off=$(run_level off)
on=$(run_level on METERD_FLEET__DATABASE_URL="$url" METERD_FLEET__HOST_ID=bench-ingest METERD_FLEET__SCHEMA=ingest)
echo "fleet=off $off" | tee -a "$results"
echo "fleet=on  $on" | tee -a "$results"
rate() { sed -E 's/.*events_per_sec=([0-9]+).*/\1/' <<<"$1"; }
awk -v on="$(rate "$on")" -v off="$(rate "$off")" 'BEGIN { printf "ratio fleet_on_over_off=%.3f\n", on / off }' \
    | tee -a "$results"
