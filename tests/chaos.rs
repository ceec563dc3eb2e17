//! Chaos: a client sends events with ids at full speed while meterd is SIGKILLed at random moments
//! and restarted, and the emulator throttles, fails with HTTP 500, leaves records unprocessed and
//! applies requests then drops their connections. After each restart the client resends every
//! event it has no answer for, with the same id. At the end the emulator's billed totals equal
//! exactly what was acknowledged, with no DuplicateRecord.
//!
//! CI runs 6 kills, each 1.5 to 4.5 s into a run. The long version (docs/testing.md):
//! `METERD_CHAOS_KILLS=25 METERD_CHAOS_RUN_MS=8000 cargo test --test chaos -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::daemon::{Emu, Launch, Meterd};
use serde_json::{Value, json};

const CUSTOMERS: u64 = 10;
const DIMENSIONS: [&str; 3] = ["requests", "storage_gb", "seats"];
/// meterd's clock starts this far back and reaches the real time by the last run, so the runs
/// spread over that many hours and every restart seals some of them while faults are injected.
const SPAN_HOURS: i64 = 8;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The event with id `n`: its customer, dimension and quantity follow from `n`.
fn event(n: u64) -> Value {
    json!({
        "customer_aws_account_id": format!("{:012}", 100_000_000_000 + n % CUSTOMERS),
        "dimension": DIMENSIONS[(n / CUSTOMERS % 3) as usize],
        "quantity": n % 7 + 1,
        "id": format!("chaos-{n}"),
    })
}

fn key_of(n: u64) -> (String, String) {
    let e = event(n);
    (e["customer_aws_account_id"].as_str().unwrap().into(), e["dimension"].as_str().unwrap().into())
}

/// The client: pipelines batches of events and keeps, for each id, whether it was acknowledged.
struct Client {
    next: u64,
    unanswered: Vec<u64>,
    acked: Vec<bool>,
    sent: u64,
}

impl Client {
    /// Sends until the connection breaks (meterd was killed) or `stop` is set.
    fn run(&mut self, meterd: &Meterd, stop: &AtomicBool) {
        let Ok(stream) = UnixStream::connect(&meterd.socket) else { return };
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        while !stop.load(Ordering::SeqCst) {
            // First whatever is owed from before the last kill, then new events.
            let mut batch: Vec<u64> = std::mem::take(&mut self.unanswered);
            while batch.len() < 256 {
                batch.push(self.next);
                self.acked.push(false);
                self.next += 1;
            }
            let mut bytes = Vec::new();
            for n in &batch {
                bytes.extend_from_slice(event(*n).to_string().as_bytes());
                bytes.push(b'\n');
            }
            self.sent += batch.len() as u64;
            let written = writer.write_all(&bytes).is_ok();
            let mut answered = 0;
            let mut line = String::new();
            while written && answered < batch.len() {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let reply: Value = serde_json::from_str(&line).unwrap();
                let n = batch[answered];
                assert_eq!(reply["id"], format!("chaos-{n}"), "replies come in order");
                assert_eq!(reply["ok"], true, "{reply}");
                self.acked[n as usize] = true;
                answered += 1;
            }
            self.unanswered = batch[answered..].to_vec();
            if answered < batch.len() {
                return;
            }
        }
    }
}

#[test]
fn kill_9_under_load_and_faults_bills_exactly_what_was_acknowledged() {
    let kills = env_number("METERD_CHAOS_KILLS", 6);
    let run_ms = env_number("METERD_CHAOS_RUN_MS", 3000);
    let emu = Arc::new(Emu::start(|config| config.requests_per_second = 20.0));
    let dir = tempfile::tempdir().unwrap();
    let launch = |offset: i64| {
        Launch::new(dir.path(), &emu)
            .offset(offset)
            .env("METERD_SUBMIT__SEAL_DELAY", "5m")
            .env("METERD_SUBMIT__BACKOFF_BASE", "20ms")
            .env("METERD_SUBMIT__BACKOFF_MAX", "200ms")
    };

    // Faults, all the time: each a few requests long, one after another.
    let faults_injected = Arc::new(AtomicU64::new(0));
    let stop_faults = Arc::new(AtomicBool::new(false));
    let injector = {
        let (emu, count, stop) = (emu.clone(), faults_injected.clone(), stop_faults.clone());
        std::thread::spawn(move || {
            let kinds = [
                json!({ "throttle": 2 }),
                json!({ "http_500": 2 }),
                json!({ "unprocessed_share": 0.3 }),
                json!({ "unprocessed_share": 0.0 }),
                json!({ "drop_after_apply": 1 }),
            ];
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                emu.faults(kinds[i % kinds.len()].clone());
                count.fetch_add(1, Ordering::SeqCst);
                i += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            emu.clear_faults();
        })
    };

    let mut client = Client { next: 0, unanswered: Vec::new(), acked: Vec::new(), sent: 0 };
    let started = Instant::now();
    for run in 0..kills {
        // Time moves forward by up to SPAN_HOURS over the runs: earlier hours seal at each restart.
        let offset = -SPAN_HOURS * 3600 + (run as i64 * SPAN_HOURS * 3600) / kills as i64;
        let meterd = launch(offset).start();
        let stop = AtomicBool::new(false);
        let pid = meterd.pid();
        let kill_after = Duration::from_millis(run_ms / 2 + fastrand::u64(0..run_ms));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(kill_after);
                let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
                assert!(status.unwrap().success());
            });
            client.run(&meterd, &stop);
        });
        stop.store(true, Ordering::SeqCst);
        meterd.kill9();
    }

    // Faults stop. At the real time, the events still unanswered at the last kill are resent (each
    // is a duplicate if it was durable); then meterd's clock moves past the last hour used, so every
    // hour seals and goes out.
    stop_faults.store(true, Ordering::SeqCst);
    injector.join().unwrap();
    let meterd = launch(0).start();
    let owed: Vec<Value> = client.unanswered.iter().map(|n| event(*n)).collect();
    for (n, reply) in client.unanswered.iter().zip(meterd.send(&owed)) {
        assert_eq!(reply["ok"], true, "{reply}");
        client.acked[*n as usize] = true;
    }
    client.sent += owed.len() as u64;
    assert!(meterd.signal("TERM").success());
    let meterd = launch(2 * 3600).start();
    meterd.wait_metric("meterd_records{state=\"open\"}", 0.0, Duration::from_secs(60));
    meterd.wait_metric("meterd_records{state=\"pending\"}", 0.0, Duration::from_secs(120));

    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (n, acked) in client.acked.iter().enumerate() {
        assert!(acked, "every event was acknowledged in the end (chaos-{n})");
        *expected.entry(key_of(n as u64)).or_default() += event(n as u64)["quantity"].as_u64().unwrap();
    }
    let mut billed: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut per_hour = std::collections::BTreeSet::new();
    for r in emu.records() {
        let key = (
            r["customer_aws_account_id"].as_str().unwrap().to_string(),
            r["dimension"].as_str().unwrap().to_string(),
        );
        assert!(per_hour.insert((key.clone(), r["hour"].as_i64().unwrap())), "one record per key and hour");
        *billed.entry(key).or_default() += r["quantity"].as_u64().unwrap();
    }
    let statuses = emu.statuses();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for request in emu.requests() {
        *outcomes.entry(request["outcome"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let faults = faults_injected.load(Ordering::SeqCst);
    let acked = client.acked.len();
    println!(
        "chaos: {} events sent (with resends), {acked} acknowledged, {kills} kills, {faults} faults injected, \
         {} records billed over {} hours, requests by outcome {outcomes:?}, record statuses {statuses:?}, {:.1}s",
        client.sent,
        per_hour.len(),
        per_hour.iter().map(|(_, h)| h).collect::<std::collections::BTreeSet<_>>().len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(billed, expected, "billed totals per customer and dimension equal the acknowledged events");
    assert_eq!(statuses.get("DuplicateRecord"), None, "no DuplicateRecord: {statuses:?}");
    assert_eq!(meterd.metric("meterd_records{state=\"dead_letter\"}"), 0.0);
    assert!(acked > 1000 * kills as usize, "the client kept sending: {acked}");
    let faulted: u64 = outcomes.iter().filter(|(o, _)| o.as_str() != "ok").map(|(_, n)| n).sum();
    assert!(
        faulted + statuses.get("Unprocessed").copied().unwrap_or(0) >= kills,
        "faults hit requests: {outcomes:?}"
    );
}
