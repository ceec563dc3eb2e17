#!/usr/bin/env bash
# The benchmark of docs/performance.md, from a fresh machine: builds meterd and the load generator
# (release), installs Debian's redis-server if missing, then measures
#   - the disk's raw fdatasync rate (4 KiB append + fdatasync);
#   - meterd against Redis (AOF, appendfsync always) on the same event stream at four levels of
#     connections x events in flight, with the ratio meterd/Redis; at 1 x 1 the raw rate, meterd
#     and Redis take turns in five rounds, and meterd is also compared with the raw rate;
#   - meterd's idle RSS; ingest (8 connections x 64 in flight, 2,000,000 events) with 1,000,
#     100,000 and 1,000,000 customer x dimension keys open in one hour, three rounds in turn, and
#     the RSS after each;
#   - the time from a restart after kill -9 with 1,000,000 events (1,000,000 open keys) since the
#     last checkpoint to /readyz answering 200;
#   - the API calls needed to drain 30,000 sealed records through the emulator;
# and draws target/bench/throughput.png and target/bench/latency.png (copied to docs/img/).
# BENCH_SECONDS (default 10) is the length of each throughput run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-10}
out=target/bench
mkdir -p "$out" docs/img
cargo build --release --locked --bin meterd --example loadgen
if ! command -v redis-server >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi
meterd=target/release/meterd
loadgen=target/release/examples/loadgen
dir=$(mktemp -d "${TMPDIR:-/tmp}/meterd-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# meterd_env NAME PORT: the settings of one meterd instance with its own data dir and metrics port.
meterd_env() {
    echo METERD_STORAGE__DATA_DIR="$dir/$1/data" METERD_INGEST__SOCKET="$dir/$1/meterd.sock" \
        METERD_ADMIN__SOCKET="$dir/$1/admin.sock" METERD_METRICS__LISTEN="127.0.0.1:$2" \
        METERD_AWS__PRODUCT_CODE=prod-bench METERD_AWS__ENDPOINT_URL="${endpoint:-http://127.0.0.1:9}" \
        METERD_LOG__FORMAT=json AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true
}
# start_meterd NAME PORT [VAR=VALUE...]: starts meterd, waits for its socket; sets $pid.
start_meterd() {
    local name=$1 port=$2
    shift 2
    mkdir -p "$dir/$name"
    env $(meterd_env "$name" "$port") "$@" "$meterd" run 2>>"$dir/$name.log" &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 400); do [ -S "$dir/$name/meterd.sock" ] && return; sleep 0.025; done
    echo "meterd $name did not start:" >&2
    cat "$dir/$name.log" >&2
    exit 1
}
results="$out/results.txt"
: >"$results"

echo "== machine"
echo "$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r), $(date -u +%F)"
"$loadgen" --fsync-probe "$dir" --seconds 3 | tee -a "$results"

echo "== meterd vs Redis (appendonly yes, appendfsync always), ${seconds}s per run"
port=$(free_port)
start_meterd main "$port"
main=$pid
sleep 2
echo "idle_rss_mib=$(rss_mib "$main")" | tee -a "$results"
redis_port=$(free_port)
mkdir -p "$dir/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir/redis" --appendonly yes \
    --appendfsync always --save "" --daemonize no --logfile "$dir/redis.log" &
redis=$!
pids+=("$redis")
for _ in $(seq 200); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.025; done
rate() { sed -E 's/.*events_per_sec=([0-9]+).*/\1/' <<<"$1"; }
mean() { tr ' ' '\n' | awk 'NF { s += $1; n++ } END { printf "%.0f", s / n }'; }
# 1 x 1 is bound by the device's flush latency, which drifts from minute to minute on a virtual
# disk: the raw probe, meterd and Redis take turns in five short rounds, and each figure is the
# mean of its rounds (every round's line is in target/bench/rounds.txt).
round_seconds=$(( (seconds + 4) / 5 ))
raws="" ms="" rs=""
: >"$out/rounds.txt"
for round in 1 2 3 4 5; do
    f=$("$loadgen" --fsync-probe "$dir" --seconds "$round_seconds")
    m=$("$loadgen" --socket "$dir/main/meterd.sock" --connections 1 --depth 1 --seconds "$round_seconds" \
        --pid "$main" --latency-out "$out/latency-meterd-1x1.txt")
    r=$("$loadgen" --redis "127.0.0.1:$redis_port" --connections 1 --depth 1 --seconds "$round_seconds" \
        --pid "$redis" --latency-out "$out/latency-redis-1x1.txt")
    printf 'round=%s %s\nround=%s %s\nround=%s %s\n' "$round" "$f" "$round" "$m" "$round" "$r" >>"$out/rounds.txt"
    raws+=" $(sed -E 's/.*fdatasync_per_sec=([0-9]+).*/\1/' <<<"$f")" ms+=" $(rate "$m")" rs+=" $(rate "$r")"
done
raw_1x1=$(mean <<<"$raws") m_1x1=$(mean <<<"$ms") r_1x1=$(mean <<<"$rs")
echo "target=meterd connections=1 depth=1 rounds=5 seconds_each=$round_seconds events_per_sec=$m_1x1" | tee -a "$results"
echo "target=redis connections=1 depth=1 rounds=5 seconds_each=$round_seconds events_per_sec=$r_1x1" | tee -a "$results"
echo "raw_fdatasync rounds=5 fdatasync_per_sec=$raw_1x1" | tee -a "$results"
awk -v m="$m_1x1" -v r="$r_1x1" -v f="$raw_1x1" 'BEGIN {
    printf "ratio level=1x1 meterd_over_redis=%.2f\nratio level=1x1 meterd_over_raw_fdatasync=%.2f\n", m / r, m / f
}' | tee -a "$results"
for level in "32 1" "32 64" "256 16"; do
    set -- $level
    m=$("$loadgen" --socket "$dir/main/meterd.sock" --connections "$1" --depth "$2" --seconds "$seconds" \
        --pid "$main" --latency-out "$out/latency-meterd-$1x$2.txt")
    r=$("$loadgen" --redis "127.0.0.1:$redis_port" --connections "$1" --depth "$2" --seconds "$seconds" \
        --pid "$redis" --latency-out "$out/latency-redis-$1x$2.txt")
    echo "$m" | tee -a "$results"
    echo "$r" | tee -a "$results"
    awk -v m="$(rate "$m")" -v r="$(rate "$r")" -v l="$1x$2" \
        'BEGIN { printf "ratio level=%s meterd_over_redis=%.2f\n", l, m / r }' | tee -a "$results"
done
kill -TERM "$main"
wait "$main" || true
ls "$dir/main/data/outbox/blobs" | wc -l | sed 's/^/blob_files=/' | tee -a "$results"
ls "$dir/main/data/journal" | tr '\n' ' ' | sed 's/^/journal_files_after_stop=/; s/$/\n/' | tee -a "$results"

echo "== open keys: ingest at 8 x 64 and RSS, 2,000,000 events per level, three rounds in turn"
# Each run starts a fresh meterd; the levels take turns, and each rate is the mean of its rounds.
declare -A rates
for round in 1 2 3; do
    for keys in 1000 100000 1000000; do
        port=$(free_port)
        rm -rf "$dir/keys$keys"
        start_meterd "keys$keys" "$port"
        k=$("$loadgen" --socket "$dir/keys$keys/meterd.sock" --connections 8 --depth 64 --customers $((keys / 4)) \
            --dimensions 4 --tag-sets 1 --events 2000000 --seconds 120 --pid "$pid")
        sleep 3
        open=$(curl -s "127.0.0.1:$port/metrics" | awk '/^meterd_records\{state="open"\}/ { print $2 }')
        rate=$(rate "$k")
        rates[$keys]+=" $rate"
        echo "keys round=$round level=$keys keys_open=$open events_per_sec=$rate rss_mib=$(rss_mib "$pid") $k" \
            | tee -a "$results"
        kill -TERM "$pid"
        wait "$pid" || true
    done
done
for keys in 1000 100000 1000000; do
    echo "keys level=$keys rounds=3 mean_events_per_sec=$(mean <<<"${rates[$keys]}")" | tee -a "$results"
done
awk -v m="$(mean <<<"${rates[1000000]}")" -v b="$(mean <<<"${rates[1000]}")" \
    'BEGIN { printf "keys ratio_1000000_over_1000=%.2f\n", m / b }' | tee -a "$results"

echo "== replay: kill -9 with 1,000,000 events (1,000,000 open keys) since the last checkpoint"
port=$(free_port)
start_meterd replay "$port" METERD_STORAGE__CHECKPOINT_INTERVAL=60s
"$loadgen" --socket "$dir/replay/meterd.sock" --connections 32 --depth 64 --customers 250000 --dimensions 4 \
    --tag-sets 1 --events 1000000 --seconds 50 | tee -a "$results"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
started=$(date +%s.%N)
env $(meterd_env replay "$port") METERD_STORAGE__CHECKPOINT_INTERVAL=60s "$meterd" run 2>>"$dir/replay.log" &
pid=$!
pids+=("$pid")
until env $(meterd_env replay "$port") "$meterd" probe ready >/dev/null 2>&1; do sleep 0.01; done
ready=$(date +%s.%N)
replayed=$(grep -o '"replayed_events":[0-9]*\|replayed_events=[0-9]*' "$dir/replay.log" | tail -1 | grep -o '[0-9]*$')
opened=$(grep -o '"open_records":[0-9]*\|open_records=[0-9]*' "$dir/replay.log" | tail -1 | grep -o '[0-9]*$')
awk -v s="$started" -v r="$ready" -v n="$replayed" -v o="$opened" \
    'BEGIN { printf "replayed_events=%s open_records=%s ready_after_kill9_s=%.2f\n", n, o, r - s }' | tee -a "$results"
kill -TERM "$pid"

echo "== drain: 30,000 sealed records through the emulator at 10 requests/s"
emu_port=$(free_port)
"$meterd" emulator --listen "127.0.0.1:$emu_port" 2>"$dir/emulator.log" &
pids+=($!)
endpoint="http://127.0.0.1:$emu_port"
for _ in $(seq 200); do curl -s "$endpoint/_emulator/records" >/dev/null && break; sleep 0.025; done
port=$(free_port)
# Two hours ago by meterd's clock: one event for each of 30,000 customers, then back to now.
start_meterd drain "$port" METERD_TEST_CLOCK_OFFSET=-7200
"$loadgen" --socket "$dir/drain/meterd.sock" --connections 1 --depth 64 --customers 30000 --dimensions 1 \
    --tag-sets 1 --events 30000 --seconds 60 | tee -a "$results"
kill -TERM "$pid"
wait "$pid" || true
drain_start=$(date +%s.%N)
start_meterd drain "$port" METERD_SUBMIT__MAX_REQUESTS_PER_SECOND=10
until [ "$(curl -s "127.0.0.1:$port/metrics" | awk '/^meterd_records\{state="accepted"\}/ { print $2 }')" = "30000" ]; do
    sleep 0.5
done
drain_end=$(date +%s.%N)
calls=$(curl -s "$endpoint/_emulator/requests" | python3 -c 'import json, sys; print(sum(1 for r in json.load(sys.stdin)["requests"] if r["operation"] == "BatchMeterUsage"))')
awk -v c="$calls" -v s="$drain_start" -v e="$drain_end" \
    'BEGIN { printf "drain records=30000 calls=%d minimum=1200 ratio=%.3f seconds=%.0f\n", c, c / 1200, e - s }' \
    | tee -a "$results"
kill -TERM "$pid"

echo "== plots"
if ! target/bench/venv/bin/python -c "import matplotlib" 2>/dev/null; then
    python3 -m venv target/bench/venv
    target/bench/venv/bin/pip install --quiet --disable-pip-version-check matplotlib
fi
target/bench/venv/bin/python scripts/bench_plots.py "$out"
cp "$out/throughput.png" "$out/latency.png" docs/img/
echo "results in $results; plots in docs/img/"
