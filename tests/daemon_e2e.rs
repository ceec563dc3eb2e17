//! End to end: the real `meterd run` process, the real SDK, the emulator. Events for several
//! customers, dimensions, tag sets, hours and a license end up as exactly one record per key
//! with the exact sums and allocations.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::hour_start;
use serde_json::{Value, json};

const LICENSE: &str = "arn:aws:license-manager::123456789012:license:l-0123456789abcdef";

type Key = (String, String, i64, bool);

/// Quantity per key, and per key the quantity of each tag set (as the emulator prints it).
#[derive(Default)]
struct Expected {
    totals: BTreeMap<Key, u64>,
    allocations: BTreeMap<Key, BTreeMap<String, u64>>,
}

impl Expected {
    fn add(&mut self, event: &Value, hour: i64) {
        let key = (
            event["customer_aws_account_id"].as_str().unwrap().to_string(),
            event["dimension"].as_str().unwrap().to_string(),
            hour,
            event.get("license_arn").is_some(),
        );
        let quantity = event["quantity"].as_u64().unwrap();
        *self.totals.entry(key.clone()).or_default() += quantity;
        let tags = event.get("tags").cloned().unwrap_or(json!({})).to_string();
        *self.allocations.entry(key).or_default().entry(tags).or_default() += quantity;
    }
}

#[test]
fn events_become_one_exact_record_per_key() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let hours = [hour_start(2), hour_start(1), hour_start(0)];
    let mut expected = Expected::default();
    let mut events = Vec::new();
    let tag_sets = [None, Some(json!({"team": "a"})), Some(json!({"team": "b", "env": "prod"}))];
    let mut n = 0u64;
    for customer in ["111111111111", "222222222222", "333333333333", "555555555555", "666666666666"] {
        for dimension in ["requests", "storage_gb"] {
            for (h, hour) in hours.iter().enumerate() {
                for tags in &tag_sets {
                    // Customer 3 uses only untagged usage: its records go without allocations.
                    if customer.starts_with('3') && tags.is_some() {
                        continue;
                    }
                    for repeat in 0..2 {
                        n += 1;
                        let mut e = event(customer, dimension, n * 7 % 50 + repeat);
                        e["timestamp"] = json!(hour + h as i64 + repeat as i64);
                        if let Some(tags) = tags {
                            e["tags"] = tags.clone();
                        }
                        expected.add(&e, *hour);
                        events.push(e);
                    }
                }
            }
        }
    }
    for quantity in [5, 6] {
        let mut e = event("444444444444", "requests", quantity);
        e["license_arn"] = json!(LICENSE);
        e["timestamp"] = json!(hours[1] + 10);
        expected.add(&e, hours[1]);
        events.push(e);
    }

    let meterd = Launch::new(dir.path(), &emu).start();
    let replies = meterd.send(&events);
    assert_eq!(replies.len(), events.len());
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    assert_eq!(meterd.metric("meterd_events_accepted_total"), events.len() as f64);
    assert_eq!(meterd.metric("meterd_records{state=\"open\"}"), expected.totals.len() as f64);
    assert!(meterd.signal("TERM").success());
    assert!(emu.records().is_empty(), "nothing is sent before its hour is sealed");

    // Four hours later every hour is sealed (seal_delay is 3h in tests) and submitted.
    emu.set_clock_offset(4 * 3600);
    let meterd = Launch::new(dir.path(), &emu).offset(4 * 3600).start();
    let records = emu.wait_records(expected.totals.len(), Duration::from_secs(30));
    assert_eq!(
        records.len(),
        expected.totals.len(),
        "one record per key; logs:\n{}",
        meterd.logs().join("\n")
    );
    for ((customer, dimension, hour, licensed), total) in &expected.totals {
        let record = find(&records, customer, dimension, *hour).expect("record present");
        assert_eq!(record["quantity"], json!(total), "{customer} {dimension} {hour}");
        assert_eq!(record["timestamp"], json!(hour), "Timestamp is the hour start");
        if *licensed {
            assert_eq!(record["license_arn"], json!(LICENSE));
            assert!(record.get("product_code").is_none());
        } else {
            assert_eq!(record["product_code"], json!(common::daemon::PRODUCT));
        }
        let key = (customer.clone(), dimension.clone(), *hour, *licensed);
        let want = &expected.allocations[&key];
        let allocations = record["allocations"].as_array().cloned().unwrap_or_default();
        if want.len() == 1 && want.contains_key("{}") {
            assert!(allocations.is_empty(), "untagged-only records carry no allocations: {record}");
        } else {
            let got: BTreeMap<String, u64> = allocations
                .iter()
                .map(|a| (a["tags"].to_string(), a["quantity"].as_u64().unwrap()))
                .collect();
            assert_eq!(&got, want, "{customer} {dimension} {hour}");
        }
    }
    meterd.wait_metric(
        "meterd_records{state=\"accepted\"}",
        expected.totals.len() as f64,
        Duration::from_secs(10),
    );
    assert_eq!(meterd.metric("meterd_records{state=\"pending\"}"), 0.0);
    assert_eq!(meterd.metric("meterd_records{state=\"open\"}"), 0.0);
    let statuses = emu.statuses();
    assert_eq!(statuses.get("Success").copied(), Some(expected.totals.len() as u64), "{statuses:?}");
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    // 30 product records go as 25 + 5; the license record in a call of its own.
    let mut batches: Vec<u64> = emu.requests().iter().map(|r| r["records"].as_u64().unwrap()).collect();
    batches.sort();
    assert_eq!(batches, vec![1, 5, 25]);
    assert!(meterd.signal("TERM").success());
}

#[test]
fn sigterm_answers_in_flight_lines_removes_the_socket_and_exits_zero() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let socket = meterd.socket.clone();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    assert_eq!(meterd.send(&[event("111111111111", "requests", 1)])[0]["ok"], true);
    let status = meterd.signal("TERM");
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "socket removed on shutdown");
}

#[test]
fn a_second_meterd_on_the_same_data_dir_is_refused() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let first = Launch::new(dir.path(), &emu).start();
    let other_socket = dir.path().join("second.sock").display().to_string();
    let (status, stderr) =
        Meterd::run_to_end(Launch::new(dir.path(), &emu).env("METERD_INGEST__SOCKET", &other_socket));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("another meterd (pid {}) is using data dir", first.pid())), "{stderr}");
    // The first one is untouched.
    assert_eq!(first.send(&[event("111111111111", "requests", 1)])[0]["ok"], true);
}

#[test]
fn every_invalid_setting_is_reported_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let launch = Launch::with_endpoint(dir.path(), "not-a-url")
        .env("METERD_SUBMIT__LATE_EVENTS", "drop")
        .env("METERD_INGEST__SOCKET_MODE", "999")
        .env("METERD_SUBMIT__SEAL_DELAY", "soon");
    let (status, stderr) = Meterd::run_to_end(launch);
    assert_eq!(status.code(), Some(64), "{stderr}");
    for needle in ["aws.endpoint_url", "late_events", "ingest.socket_mode", "seal_delay"] {
        assert!(stderr.to_lowercase().contains(needle), "{needle} missing from:\n{stderr}");
    }
    assert!(!dir.path().join("data").exists(), "nothing is created before the config is valid");
}
