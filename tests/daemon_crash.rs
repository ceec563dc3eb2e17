//! Crash and restart: SIGKILL and SIGTERM at each point of a record's life. Every acknowledged
//! event is billed exactly once, and the service never sees a second quantity for a key.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::hour_start;
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;

/// Events for three customers in the current hour, with totals per customer.
fn workload(round: u64) -> (Vec<Value>, BTreeMap<String, u64>) {
    let mut events = Vec::new();
    let mut totals = BTreeMap::new();
    for i in 0..60u64 {
        let customer = format!("{}", 100_000_000_000u64 + i % 3);
        let quantity = (i * 13 + round) % 17;
        let mut e = event(&customer, "requests", quantity);
        e["timestamp"] = json!(hour_start(0) + 1);
        e["id"] = json!(format!("r{round}-e{i}"));
        *totals.entry(customer).or_default() += quantity;
        events.push(e);
    }
    (events, totals)
}

fn merge(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

fn assert_billed_once(emu: &Emu, totals: &BTreeMap<String, u64>) {
    let records = emu.wait_records(totals.len(), Duration::from_secs(30));
    assert_eq!(records.len(), totals.len(), "{records:?}");
    for (customer, total) in totals {
        let record = find(&records, customer, "requests", hour_start(0)).expect("record present");
        assert_eq!(record["quantity"], json!(total), "{customer}");
    }
    let statuses = emu.statuses();
    assert!(!statuses.contains_key("DuplicateRecord"), "{statuses:?}");
}

fn all_ok(replies: &[Value]) {
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
}

#[test]
fn kill9_with_open_hours_loses_nothing() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let mut totals = BTreeMap::new();
    for round in 0..3 {
        let meterd = Launch::new(dir.path(), &emu).start();
        let (events, round_totals) = workload(round);
        all_ok(&meterd.send(&events));
        merge(&mut totals, round_totals);
        meterd.kill9();
        assert!(dir.path().join("meterd.sock").exists(), "a killed meterd leaves its socket behind");
    }
    // The stale socket is replaced; ids survive restarts, so resending round 0 counts nothing.
    let meterd = Launch::new(dir.path(), &emu).start();
    let replies = meterd.send(&workload(0).0);
    assert!(replies.iter().all(|r| r["ok"] == true && r["duplicate"] == true), "{replies:?}");
    meterd.kill9();

    emu.set_clock_offset(LATER);
    let meterd = Launch::new(dir.path(), &emu).offset(LATER).start();
    assert_billed_once(&emu, &totals);
    drop(meterd);
}

/// Accepts round `round`'s events, stops, and starts again `LATER` with `fault` set, so that the
/// hour is sealed and submitted into the fault.
fn submitting_under_fault(
    emu: &Emu,
    dir: &std::path::Path,
    round: u64,
    fault: Value,
) -> (Meterd, BTreeMap<String, u64>) {
    let meterd = Launch::new(dir, emu).start();
    let (events, totals) = workload(round);
    all_ok(&meterd.send(&events));
    assert!(meterd.signal("TERM").success());
    emu.set_clock_offset(LATER);
    emu.faults(fault);
    (Launch::new(dir, emu).offset(LATER).start(), totals)
}

#[test]
fn kill9_after_sealing_before_the_service_answered() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    // Sealed and retried, but every attempt fails; then the process dies.
    let (meterd, totals) = submitting_under_fault(&emu, dir.path(), 1, json!({"http_500": 1000}));
    meterd.wait_log("sealed hourly records", Duration::from_secs(10));
    while emu.requests().len() < 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    meterd.kill9();
    assert!(emu.records().is_empty());

    emu.clear_faults();
    let meterd = Launch::new(dir.path(), &emu).offset(LATER).start();
    assert_billed_once(&emu, &totals);
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 3.0, Duration::from_secs(10));
}

#[test]
fn kill9_after_the_service_applied_but_the_answer_was_lost() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let (meterd, totals) = submitting_under_fault(&emu, dir.path(), 2, json!({"drop_after_apply": 1000}));
    let applied = emu.wait_records(3, Duration::from_secs(10));
    assert_eq!(applied.len(), 3, "the service applied the batch");
    let ids: Vec<Value> = applied.iter().map(|r| r["metering_record_id"].clone()).collect();
    meterd.kill9();

    emu.clear_faults();
    let meterd = Launch::new(dir.path(), &emu).offset(LATER).start();
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 3.0, Duration::from_secs(10));
    assert_billed_once(&emu, &totals);
    let after: Vec<Value> = emu.records().iter().map(|r| r["metering_record_id"].clone()).collect();
    assert_eq!(after, ids, "the resend matched the applied records");
    let dropped = emu.requests().iter().filter(|r| r["outcome"] == "dropped").count();
    assert!(dropped >= 1);
}

#[test]
fn kill9_under_load_then_clients_resend_unanswered_events() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let socket = meterd.socket.clone();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Eight clients each pipeline 2000 events with ids; SIGKILL lands while they are sending.
    let clients: Vec<_> = (0..8u64)
        .map(|c| {
            let socket = socket.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let events: Vec<Value> = (0..2000u64)
                    .map(|i| {
                        let mut e = event(&format!("{}", 200_000_000_000u64 + c), "requests", 1 + i % 3);
                        e["timestamp"] = json!(hour_start(0) + 1);
                        e["id"] = json!(format!("c{c}-{i}"));
                        e
                    })
                    .collect();
                let answered = send_until_cut(&socket, &events, &acked);
                (events, answered)
            })
        })
        .collect();
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 2000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    meterd.kill9();
    let results: Vec<(Vec<Value>, usize)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let answered: usize = results.iter().map(|(_, n)| n).sum();
    assert!(answered > 0, "some events were acknowledged before the kill");
    assert!(answered < 16_000, "the kill landed while clients were still sending");

    // Clients resend everything with the same ids; acknowledged ones come back as duplicates.
    let meterd = Launch::new(dir.path(), &emu).start();
    let mut totals = BTreeMap::new();
    let mut duplicates = 0;
    for (events, acked) in &results {
        let replies = meterd.send(events);
        all_ok(&replies);
        let dup = replies.iter().filter(|r| r["duplicate"] == true).count();
        assert!(dup >= *acked, "every acknowledged event is remembered ({dup} < {acked})");
        duplicates += dup;
        for e in events {
            *totals.entry(e["customer_aws_account_id"].as_str().unwrap().to_string()).or_default() +=
                e["quantity"].as_u64().unwrap();
        }
    }
    assert!(duplicates >= answered);
    assert!(meterd.signal("TERM").success());

    emu.set_clock_offset(LATER);
    let _meterd = Launch::new(dir.path(), &emu).offset(LATER).start();
    assert_billed_once(&emu, &totals);
}

/// Pipelines `events` over one connection; returns how many `ok` replies arrived before the
/// connection was cut.
fn send_until_cut(
    socket: &std::path::Path,
    events: &[Value],
    acked: &std::sync::atomic::AtomicUsize,
) -> usize {
    use std::io::{BufRead, BufReader, Write};
    let Ok(stream) = std::os::unix::net::UnixStream::connect(socket) else { return 0 };
    let mut writer = stream.try_clone().unwrap();
    let bytes: Vec<u8> = events.iter().flat_map(|e| format!("{e}\n").into_bytes()).collect();
    let sender = std::thread::spawn(move || {
        for chunk in bytes.chunks(4096) {
            if writer.write_all(chunk).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut ok = 0;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["ok"], true, "{reply}");
        ok += 1;
        acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let _ = sender.join();
    ok
}

#[test]
fn an_expired_record_becomes_a_dead_letter() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    all_ok(&meterd.send(&workload(3).0));
    assert!(meterd.signal("TERM").success());
    // Down for longer than the 12-hour deadline: nothing may be sent any more.
    let meterd = Launch::new(dir.path(), &emu).offset(13 * 3600).start();
    meterd.wait_metric("meterd_dead_letters{reason=\"expired\"}", 3.0, Duration::from_secs(10));
    assert!(emu.requests().is_empty());
    assert_eq!(meterd.metric("meterd_records{state=\"dead_letter\"}"), 3.0);
}
