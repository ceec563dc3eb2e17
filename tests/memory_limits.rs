//! The memory limits of the systemd unit and the container manifests cover what meterd can use
//! with the settings each of them runs with (docs/operations.md, "Limits"): the runtime and sled's
//! cache, every ingest connection's unsent replies and read buffer, and room for open hours. And a
//! restart fits in them: it needs no more than the run it recovers.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::daemon::{Emu, Launch};
use meterd::config::Config;
use serde_json::Value;
use yaml_rust2::YamlLoader;

const MIB: u64 = 1 << 20;

/// The runtime, the AWS client and sled's 64 MiB page cache.
const BASE: u64 = 96 * MIB;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// A setting from `env` (as `METERD_<SECTION>__<KEY>`), else its default.
fn setting(env: &BTreeMap<String, String>, name: &str, default: usize) -> u64 {
    env.get(name).map_or(default as u64, |v| v.parse().unwrap())
}

/// What meterd can hold for connections and its runtime under `env`, without open hours.
fn bound(env: &BTreeMap<String, String>) -> u64 {
    let defaults = Config::default().ingest;
    let connections = setting(env, "METERD_INGEST__MAX_CONNECTIONS", defaults.max_connections);
    let replies = setting(env, "METERD_INGEST__MAX_PENDING_REPLY_BYTES", defaults.max_pending_reply_bytes);
    let line = setting(env, "METERD_INGEST__MAX_LINE_BYTES", defaults.max_line_bytes);
    BASE + connections * (replies + line + 128 * 1024)
}

/// `"256Mi"`, `"2G"`, or a number of MiB (ECS).
fn bytes(text: &str) -> u64 {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().unwrap();
    match unit {
        "Mi" | "M" | "" => n * MIB,
        "Gi" | "G" => n * 1024 * MIB,
        _ => panic!("unit of {text:?}"),
    }
}

#[test]
fn the_systemd_unit_leaves_room_for_a_saas_products_open_hours() {
    let unit = read("systemd/meterd.service");
    let env: BTreeMap<String, String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap())
        .collect();
    let limits: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("MemoryMax=")).collect();
    assert_eq!(limits.len(), 1, "one MemoryMax=");
    let limit = bytes(limits[0]);
    assert_eq!(bound(&env), 704 * MIB, "the defaults' figure in docs/operations.md");
    // At least a gigabyte for open hours: ~5 million customer × dimension keys at ~200 bytes.
    assert!(limit >= bound(&env) + 1024 * MIB, "MemoryMax {limit} vs {}", bound(&env));
}

#[test]
fn the_container_sidecars_fit_their_connections_in_their_memory_limit() {
    let task: Value = serde_json::from_str(&read("deploy/ecs/task-definition.json")).unwrap();
    let meterd = &task["containerDefinitions"][0];
    assert_eq!(meterd["name"], "meterd");
    let env: BTreeMap<String, String> = meterd["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
        .collect();
    let ecs_limit = meterd["memory"].as_u64().expect("a hard memory limit for meterd") * MIB;

    let docs = YamlLoader::load_from_str(&read("deploy/kubernetes/meterd-sidecar.yaml")).unwrap();
    let deployment = docs.iter().find(|d| d["kind"].as_str() == Some("Deployment")).unwrap();
    let sidecar = &deployment["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"].as_str(), Some("meterd"));
    let k8s_env: BTreeMap<String, String> = sidecar["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
        .collect();
    let k8s_limit = bytes(sidecar["resources"]["limits"]["memory"].as_str().unwrap());

    // meter_usage mode: a few open keys (dimensions × hours); 64 MiB of room is plenty.
    for (what, env, limit) in [("ECS", &env, ecs_limit), ("Kubernetes", &k8s_env, k8s_limit)] {
        assert_eq!(env["METERD_AWS__MODE"], "meter_usage", "{what}");
        assert!(limit >= bound(env) + 64 * MIB, "{what}: limit {limit} vs {}", bound(env));
    }
}

/// Events sent before the kill, each its own key (customer × dimension), in this many parts at once.
const RESTART_EVENTS: u64 = 200_000;
const RESTART_PARTS: u64 = 4;

/// A restart after kill -9 replays the journal without holding it: with the longest checkpoint
/// interval allowed, a run of open keys none of which a checkpoint holds yet, then kill -9. The
/// restart's peak resident set (`VmHWM`, meterd's own accounting) stays within 32 MiB of the peak
/// of the run it recovers (docs/operations.md, "Restart"). The figures at a million keys come
/// from `scripts/bench.sh` (docs/performance.md).
#[test]
fn a_restart_after_kill_9_needs_no_more_memory_than_the_run_it_recovers() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = || Launch::new(dir.path(), &emu).env("METERD_STORAGE__CHECKPOINT_INTERVAL", "60s");
    let meterd = launch().start();
    std::thread::scope(|scope| {
        let share = RESTART_EVENTS / RESTART_PARTS;
        let parts: Vec<_> = (0..RESTART_PARTS)
            .map(|part| {
                let meterd = &meterd;
                scope.spawn(move || {
                    let mut lines = Vec::new();
                    for n in part * share..(part + 1) * share {
                        let (customer, dimension) = (100_000_000_000 + n / 4, n % 4);
                        writeln!(
                            lines,
                            r#"{{"customer_aws_account_id":"{customer}","dimension":"dim{dimension}","quantity":1}}"#
                        )
                        .unwrap();
                    }
                    let replies = meterd.send_raw(&lines);
                    assert_eq!(replies.len() as u64, share);
                    assert!(replies.iter().all(|r| r["ok"] == true), "every event accepted");
                })
            })
            .collect();
        parts.into_iter().for_each(|p| p.join().unwrap());
    });
    let (loaded_rss, loaded_peak) = meterd.memory();
    meterd.kill9();

    let meterd = launch().start();
    let restored = meterd.wait_log("open hours restored", Duration::from_secs(5));
    let (rss, peak) = meterd.memory();
    let replayed = restored["replayed_events"].as_u64().unwrap();
    println!(
        "replayed_events={replayed} open_records={} loaded_rss_mib={:.1} loaded_peak_mib={:.1} \
         restart_peak_mib={:.1} rss_after_restart_mib={:.1}",
        restored["open_records"],
        loaded_rss / MIB as f64,
        loaded_peak / MIB as f64,
        peak / MIB as f64,
        rss / MIB as f64,
    );
    // A machine slow enough to pass the 60 s interval while sending checkpoints some of the keys:
    // the replay is shorter, but still most of the run.
    assert!(replayed >= RESTART_EVENTS / 2, "only {replayed} events replayed");
    assert_eq!(restored["open_records"].as_u64(), Some(RESTART_EVENTS));
    assert!(
        peak <= loaded_peak + 32.0 * MIB as f64,
        "the restart peaked at {:.1} MiB, the run it recovers at {:.1} MiB",
        peak / MIB as f64,
        loaded_peak / MIB as f64
    );
}
