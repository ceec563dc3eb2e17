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
#   - the restart after kill -9 with 1,000,000 events (1,000,000 open keys), with the default
#     checkpoint interval and with none of them checkpointed (60 s): the time to /readyz answering
#     200, and the restart's peak RSS beside the peak of the run it recovers;
#   - the API calls needed to drain 30,000 sealed records through the emulator;
#   - with idempotency ids (the client libraries' form, a unique one per event), on one meterd:
#     ingest at 8 x 64 over 1,000 customers x 4 dimensions x 8 tag sets, and meterd's RSS and
#     data-dir size, after the same events without ids and then after each BENCH_ID_STEP unique
#     ids up to BENCH_IDS; ingest at 32 x 64 with and without ids; resending remembered ids
#     (answered duplicate) against fresh ids; and the restart after kill -9 with every id
#     remembered: time to /readyz 200 and the peak RSS of the restart;
# and draws target/bench/throughput.png and target/bench/latency.png (copied to docs/img/).
# Variables:
#   BENCH_SECONDS (default 10)        the length of each throughput run
#   BENCH_ONLY=ids                    only the id section (no Redis, no plots); its lines go to
#                                     target/bench/results-ids.txt, results.txt is left alone
#   BENCH_ONLY=restart                only the restart section: two kill -9 restarts at 1,000,000
#                                     open keys (checkpoint_interval 1s and 60s); its lines go to
#                                     target/bench/results-restart.txt
#   BENCH_ONLY=products               only the products section: one product against two, and
#                                     against BENCH_BASELINE (another meterd build) when set
#   BENCH_METERD                      the meterd binary to measure (default target/release/meterd,
#                                     built first): another build, to compare two in turn
#   BENCH_IDS (default 10000000)      unique ids sent in the id section's ladder
#   BENCH_ID_STEP (default 1000000)   ids per ladder step (one line each)
#   BENCH_IDS_RSS_LIMIT_MIB           the ladder stops once meterd's RSS passes it (default: half
#                                     of the machine's memory), so a store that grows per id cannot
#                                     take the machine down
# A smoke run of the id section: BENCH_ONLY=ids BENCH_IDS=200000 BENCH_ID_STEP=100000 BENCH_SECONDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-10}
only=${BENCH_ONLY:-}
case "$only" in "" | ids | restart | products) ;; *) echo "BENCH_ONLY must be ids, restart, products or unset" >&2; exit 2 ;; esac
out=target/bench
mkdir -p "$out" docs/img
cargo build --release --locked --bin meterd --example loadgen
if [ -z "$only" ] && ! command -v redis-server >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi
meterd=${BENCH_METERD:-target/release/meterd}
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
# restart_meterd NAME PORT [VAR=VALUE...]: starts meterd again on NAME's data dir and waits for
# /readyz 200; sets $pid, $started (just before the start) and $ready.
restart_meterd() {
    local name=$1 port=$2
    shift 2
    started=$(date +%s.%N)
    env $(meterd_env "$name" "$port") "$@" "$meterd" run 2>>"$dir/$name.log" &
    pid=$!
    pids+=("$pid")
    until env $(meterd_env "$name" "$port") "$meterd" probe ready >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "meterd $name did not restart:" >&2
            tail -n 20 "$dir/$name.log" >&2
            exit 1
        fi
        sleep 0.01
    done
    ready=$(date +%s.%N)
}
results="$out/results.txt"
[ -n "$only" ] && results="$out/results-$only.txt"
: >"$results"

# The id section: one meterd, one load generator (a single thread), the events of the issue's
# measurement (1,000 customers x 4 dimensions, tags), each with a unique id.
ids_total=${BENCH_IDS:-10000000}
ids_step=${BENCH_ID_STEP:-1000000}
ids_rss_limit=${BENCH_IDS_RSS_LIMIT_MIB:-$(awk '/MemTotal/ { printf "%d", $2 / 2048 }' /proc/meminfo)}
kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$2/status"; }
data_kib() { { du -sk "$1" 2>/dev/null || true; } | cut -f1; }
# The mean of numbers on stdin, separated by spaces.
mean() { tr ' ' '\n' | awk 'NF { s += $1; n++ } END { printf "%.0f", s / n }'; }
rate() { sed -E 's/.*events_per_sec=([0-9]+).*/\1/' <<<"$1"; }
field() { sed -nE "s/(^|.* )$1=([^ ]+).*/\2/p" <<<"$2"; }
# settle PID: 3 s, then until the process used under 10 % of a core for half a second (the
# checkpoints that store the last run's ids are done), for at most 2 minutes.
settle() {
    local before after
    sleep 3
    for _ in $(seq 240); do
        before=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat")
        sleep 0.5
        after=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat")
        [ $(( after - before )) -le 5 ] && return
    done
}
ids_section() {
    echo "== ids: unique ids at 8 x 64 in steps of $ids_step up to $ids_total, 32 x 64, resends, restart"
    local mix=(--customers 1000 --dimensions 4 --tag-sets 8) port sock data l l0 l1 l2 next=0 peak=0
    port=$(free_port)
    start_meterd ids "$port"
    sock="$dir/ids/meterd.sock" data="$dir/ids/data"
    # A ladder line: ids remembered, rate, RSS and data dir once settled, growth per id.
    ids_line() {
        local n=$1 line=$2 rss data0 ids_dir=""
        settle "$pid"
        rss=$(kib VmRSS "$pid") data0=$(data_kib "$data")
        [ -d "$data/ids" ] && ids_dir=" ids_dir_mib=$(awk -v k="$(data_kib "$data/ids")" 'BEGIN { printf "%.1f", k / 1024 }')"
        if [ "$n" = 0 ]; then base_rss=$rss base_data=$data0; fi
        awk -v n="$n" -v r="$(field events_per_sec "$line")" -v rss="$rss" -v d="$data0" -v br="$base_rss" -v bd="$base_data" \
            -v p99="$(field p99_ms "$line")" -v x="$ids_dir" 'BEGIN {
            per = n > 0 ? sprintf("%.0f", (d - bd) * 1024 / n) : "-"
            rper = n > 0 ? sprintf("%.0f", (rss - br) * 1024 / n) : "-"
            printf "ids_million=%g rate=%s rss_mib=%.1f data_mib=%.1f bytes_per_id=%s rss_bytes_per_id=%s ids=%d p99_ms=%s%s\n",
                n / 1000000, r, rss / 1024, d / 1024, per, rper, n, p99, x
        }' | tee -a "$results"
        peak=$(awk -v a="$peak" -v b="$(field peak_rss_mib "$line")" 'BEGIN { print (b > a ? b : a) }')
    }
    # Replies that were not ok, did not echo their id, or (fresh ids) said duplicate.
    check_ids() {
        local line=$1 want_dup=$2
        if [ "$(field refused "$line")" != 0 ] || [ "$(field wrong_id "$line")" != 0 ] ||
            [ "$(field duplicates "$line")" != "$([ "$want_dup" = yes ] && field acked "$line" || echo 0)" ]; then
            echo "ids WARNING: unexpected replies: $line" | tee -a "$results"
        fi
    }
    l=$("$loadgen" --socket "$sock" --connections 8 --depth 64 "${mix[@]}" --events "$ids_step" --seconds 3600 --pid "$pid")
    echo "ids step=0 $l" >>"$out/ids-steps.txt"
    ids_line 0 "$l"
    while [ "$next" -lt "$ids_total" ]; do
        local count=$(( ids_total - next < ids_step ? ids_total - next : ids_step ))
        l=$("$loadgen" --socket "$sock" --connections 8 --depth 64 "${mix[@]}" --ids --id-base "$next" \
            --events "$count" --seconds 3600 --pid "$pid")
        check_ids "$l" no
        next=$(field id_next "$l")
        echo "ids step=$next $l" >>"$out/ids-steps.txt"
        ids_line "$next" "$l"
        if [ "$(kib VmRSS "$pid")" -gt $(( ids_rss_limit * 1024 )) ]; then
            echo "ids_stopped ids=$next rss_limit_mib=$ids_rss_limit" | tee -a "$results"
            break
        fi
    done
    # 32 x 64, without ids and with fresh ids, taking turns in three rounds (the virtual disk's
    # flush rate drifts from minute to minute; each figure is the mean of its rounds), each run
    # after meterd is idle again; then resending the oldest remembered ids.
    local remembered=$next round_seconds r0=() r1=()
    round_seconds=$(( (seconds + 2) / 3 ))
    for round in 1 2 3; do
        settle "$pid"
        l0=$("$loadgen" --socket "$sock" --connections 32 --depth 64 "${mix[@]}" --seconds "$round_seconds" --pid "$pid")
        settle "$pid"
        l1=$("$loadgen" --socket "$sock" --connections 32 --depth 64 "${mix[@]}" --ids --id-base "$next" \
            --seconds "$round_seconds" --pid "$pid")
        check_ids "$l1" no
        next=$(field id_next "$l1")
        r0+=("$(field events_per_sec "$l0")") r1+=("$(field events_per_sec "$l1")")
        echo "ids round=$round no_ids $l0" | tee -a "$results"
        echo "ids round=$round fresh_ids $l1" | tee -a "$results"
    done
    local mean0 mean1
    mean0=$(echo "${r0[@]}" | mean) mean1=$(echo "${r1[@]}" | mean)
    # The checkpoints that store the fresh run's ids come first, so they are not charged to resends.
    settle "$pid"
    local rss_fresh rss_resend
    rss_fresh=$(kib VmRSS "$pid")
    l2=$("$loadgen" --socket "$sock" --connections 32 --depth 64 "${mix[@]}" --resend --id-base 0 \
        --events "$remembered" --seconds "$seconds" --pid "$pid")
    check_ids "$l2" yes
    rss_resend=$(kib VmRSS "$pid")
    for line in "$l0" "$l1" "$l2"; do
        peak=$(awk -v a="$peak" -v b="$(field peak_rss_mib "$line")" 'BEGIN { print (b > a ? b : a) }')
    done
    echo "ids resend $l2" | tee -a "$results"
    awk -v a="$mean1" -v b="$mean0" -v c="$(field events_per_sec "$l2")" 'BEGIN {
        printf "ids ratio level=32x64 no_ids_mean=%d fresh_ids_mean=%d ids_over_no_ids=%.2f (target >= 0.80)\n", b, a, a / b
        printf "ids ratio level=32x64 resend_over_fresh=%.2f duplicates (target >= 0.50)\n", c / a
    }' | tee -a "$results"
    # Resends remember nothing new: RSS before and after them.
    awk -v b="$rss_fresh" -v a="$rss_resend" \
        'BEGIN { printf "ids resend rss_before_mib=%.1f rss_after_mib=%.1f\n", b / 1024, a / 1024 }' | tee -a "$results"
    # kill -9 with every id remembered; the restart's time to /readyz 200 and its peak RSS.
    local loaded_rss loaded_hwm started ready hwm=0
    loaded_rss=$(kib VmRSS "$pid") loaded_hwm=$(kib VmHWM "$pid")
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    restart_meterd ids "$port"
    hwm=$(kib VmHWM "$pid")
    sleep 3
    l=$("$loadgen" --socket "$sock" --connections 1 --depth 64 "${mix[@]}" --resend --id-base 0 --events 1000 --seconds 60)
    check_ids "$l" yes
    awk -v s="$started" -v r="$ready" -v n="$next" -v h="$hwm" -v after="$(kib VmRSS "$pid")" -v lr="$loaded_rss" \
        -v lh="$loaded_hwm" -v p="$peak" -v d="$(field duplicates "$l")" 'BEGIN {
        printf "ids restart ids=%d ready_after_kill9_s=%.2f restart_peak_rss_mib=%.1f rss_3s_after_ready_mib=%.1f", n, r - s, h / 1024, after / 1024
        printf " loaded_rss_mib=%.1f loaded_peak_rss_mib=%.1f resent_after_restart=1000 duplicates=%s\n", lr / 1024, (p > lh / 1024 ? p : lh / 1024), d
    }' | tee -a "$results"
    kill -TERM "$pid"
    wait "$pid" || true
}

# The restart after kill -9 with 1,000,000 events for 1,000,000 open keys, with the default
# checkpoint interval and the longest allowed (60 s: none of them checkpointed): events replayed,
# the time to /readyz 200, the restart's peak RSS beside the loaded run's peak, and the RSS 3 s
# after ready.
replay_section() {
    local interval port started ready hwm loaded_hwm loaded_rss replayed opened
    for interval in 1s 60s; do
        echo "== replay: kill -9 with 1,000,000 events (1,000,000 open keys), checkpoint_interval $interval"
        port=$(free_port)
        rm -rf "$dir/replay"
        start_meterd replay "$port" METERD_STORAGE__CHECKPOINT_INTERVAL=$interval
        "$loadgen" --socket "$dir/replay/meterd.sock" --connections 32 --depth 64 --customers 250000 --dimensions 4 \
            --tag-sets 1 --events 1000000 --seconds 50 | tee -a "$results"
        loaded_rss=$(kib VmRSS "$pid") loaded_hwm=$(kib VmHWM "$pid")
        kill -9 "$pid"
        wait "$pid" 2>/dev/null || true
        : >"$dir/replay.log"
        restart_meterd replay "$port" METERD_STORAGE__CHECKPOINT_INTERVAL=$interval
        hwm=$(kib VmHWM "$pid")
        sleep 3
        replayed=$(grep -o '"replayed_events":[0-9]*' "$dir/replay.log" | tail -1 | grep -o '[0-9]*$')
        opened=$(grep -o '"open_records":[0-9]*' "$dir/replay.log" | tail -1 | grep -o '[0-9]*$')
        awk -v i="$interval" -v s="$started" -v r="$ready" -v n="$replayed" -v o="$opened" -v h="$hwm" \
            -v lh="$loaded_hwm" -v lr="$loaded_rss" -v after="$(kib VmRSS "$pid")" 'BEGIN {
            printf "replay checkpoint_interval=%s replayed_events=%s open_records=%s ready_after_kill9_s=%.2f", i, n, o, r - s
            printf " loaded_rss_mib=%.1f loaded_peak_rss_mib=%.1f restart_peak_rss_mib=%.1f rss_3s_after_ready_mib=%.1f\n", lr / 1024, lh / 1024, h / 1024, after / 1024
        }' | tee -a "$results"
        kill -TERM "$pid"
        wait "$pid" || true
    done
}

# Several products: the running build with one product and with two, and (BENCH_BASELINE naming
# another meterd build) that build with one, in turn over three rounds: ingest at 32 x 64 (1,000
# customers x 4 dimensions x 8 tag sets) and at 8 x 64 with 1,000,000 open keys (split over the
# products), with the RSS after.
products_section() {
    local round variant port k rate open rss saved=$meterd
    local two='[{ code = "prod-bench-0" }, { code = "prod-bench-1" }]'
    declare -A prod_rates
    for round in 1 2 3; do
        for variant in one two ${BENCH_BASELINE:+baseline}; do
            local settings=() products=()
            meterd=$saved
            case $variant in
                two) settings=(METERD_AWS__PRODUCT_CODE= "METERD_AWS__PRODUCTS=$two") products=(--products 2) ;;
                baseline) meterd=$BENCH_BASELINE ;;
            esac
            port=$(free_port)
            rm -rf "$dir/products"
            start_meterd products "$port" "${settings[@]}"
            k=$("$loadgen" --socket "$dir/products/meterd.sock" --connections 32 --depth 64 --seconds "$seconds" \
                --pid "$pid" "${products[@]}")
            rate=$(rate "$k")
            prod_rates[$variant-32x64]+=" $rate"
            echo "products round=$round variant=$variant level=32x64 events_per_sec=$rate" | tee -a "$results"
            kill -TERM "$pid"
            wait "$pid" || true
            port=$(free_port)
            rm -rf "$dir/products"
            start_meterd products "$port" "${settings[@]}"
            k=$("$loadgen" --socket "$dir/products/meterd.sock" --connections 8 --depth 64 \
                --customers $((250000 / ${products[1]:-1})) --dimensions 4 --tag-sets 1 --events 2000000 \
                --seconds 120 --pid "$pid" "${products[@]}")
            sleep 3
            open=$(curl -s "127.0.0.1:$port/metrics" | awk '/^meterd_records\{state="open"\}/ { print $2 }')
            rate=$(rate "$k") rss=$(rss_mib "$pid")
            prod_rates[$variant-keys]+=" $rate"
            echo "products round=$round variant=$variant level=1000000keys keys_open=$open events_per_sec=$rate rss_mib=$rss" \
                | tee -a "$results"
            kill -TERM "$pid"
            wait "$pid" || true
        done
    done
    meterd=$saved
    for variant in one two ${BENCH_BASELINE:+baseline}; do
        echo "products variant=$variant mean_32x64=$(mean <<<"${prod_rates[$variant-32x64]}") mean_1000000keys=$(mean <<<"${prod_rates[$variant-keys]}")" \
            | tee -a "$results"
    done
}

echo "== machine"
echo "$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r), $(date -u +%F)"
"$loadgen" --fsync-probe "$dir" --seconds 3 | tee -a "$results"
if [ "$only" = products ]; then
    products_section
    echo "results in $results"
    exit 0
fi
if [ "$only" = restart ]; then
    replay_section
    echo "results in $results"
    exit 0
fi
if [ "$only" = ids ]; then
    : >"$out/ids-steps.txt"
    ids_section
    echo "results in $results; every ladder step's load-generator line in $out/ids-steps.txt"
    exit 0
fi

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

replay_section
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

: >"$out/ids-steps.txt"
ids_section

echo "== plots"
if ! target/bench/venv/bin/python -c "import matplotlib" 2>/dev/null; then
    python3 -m venv target/bench/venv
    target/bench/venv/bin/pip install --quiet --disable-pip-version-check matplotlib
fi
target/bench/venv/bin/python scripts/bench_plots.py "$out"
cp "$out/throughput.png" "$out/latency.png" docs/img/
echo "results in $results; plots in docs/img/"
