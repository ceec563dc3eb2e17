//! Where late events go, and that a sealed record is never written twice whatever the clock does:
//! an event for a past hour is counted in its own hour while that key's hour was never sealed; a
//! key whose hour is sealed follows `late_events`; after the clock steps back (a restored VM
//! snapshot), an event for a sealed key and hour is late like any other, and the first record
//! keeps its receipt.

mod common;

use std::time::Duration;

use common::daemon::{Emu, Launch, event, find};
use common::hour_start;
use serde_json::{Value, json};

const H: i64 = 3600;

fn at(customer: &str, quantity: u64, timestamp: Option<i64>) -> Value {
    let mut e = event(customer, "requests", quantity);
    if let Some(timestamp) = timestamp {
        e["timestamp"] = json!(timestamp);
    }
    e
}

fn codes(replies: &[Value]) -> Vec<String> {
    replies
        .iter()
        .map(|r| if r["ok"] == true { "ok".into() } else { r["error"].as_str().unwrap().into() })
        .collect()
}

#[test]
fn a_late_event_goes_to_its_own_hour_until_that_key_is_sealed_then_follows_late_events() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    // A fresh data dir: nothing was sealed for this key, so 5 hours back is its own hour.
    assert_eq!(codes(&meterd.send(&[at("111111111111", 9, Some(hour_start(5) + 10))])), ["ok"]);
    let records = emu.wait_records(1, Duration::from_secs(20));
    let record = find(&records, "111111111111", "requests", hour_start(5)).expect("sealed in its own hour");
    assert_eq!(record["quantity"], 9);
    assert_eq!(meterd.metric("meterd_late_events_total{policy=\"carry_forward\"}"), 0.0);
    // Now that key's hour is sealed: the next event for it is carried into the open hour.
    let before = hour_start(0);
    assert_eq!(codes(&meterd.send(&[at("111111111111", 4, Some(hour_start(5) + 20))])), ["ok"]);
    let after = hour_start(0);
    assert_eq!(meterd.metric("meterd_late_events_total{policy=\"carry_forward\"}"), 1.0);
    assert_eq!(meterd.metric("meterd_records{state=\"open\"}"), 1.0);
    assert!(meterd.signal("TERM").success());
    emu.set_clock_offset(4 * H);
    let _meterd = Launch::new(dir.path(), &emu).offset(4 * H).start();
    let records = emu.wait_records(2, Duration::from_secs(20));
    let carried = records.iter().find(|r| r["quantity"] == 4).expect("the carried record");
    let hour = carried["hour"].as_i64().unwrap();
    assert!(hour == before || hour == after, "carried into the hour it arrived in: {hour}");
    assert_eq!(find(&records, "111111111111", "requests", hour_start(5)).unwrap()["quantity"], 9);
    assert!(!emu.statuses().contains_key("DuplicateRecord"));

    // late_events = reject refuses only a key whose hour is sealed.
    let dir = tempfile::tempdir().unwrap();
    let meterd =
        Launch::new(dir.path(), &emu).offset(4 * H).env("METERD_SUBMIT__LATE_EVENTS", "reject").start();
    assert_eq!(codes(&meterd.send(&[at("222222222222", 5, Some(hour_start(2) + 10))])), ["ok"]);
    emu.wait_records(3, Duration::from_secs(20));
    let replies = meterd.send(&[at("222222222222", 5, Some(hour_start(2) + 10))]);
    assert_eq!(codes(&replies), ["out_of_window"]);
    assert_eq!(
        replies[0]["message"],
        format!("the hour starting {} is already sealed (late_events = reject)", hour_start(2))
    );
    assert_eq!(meterd.metric("meterd_late_events_total{policy=\"reject\"}"), 1.0);
}

#[test]
fn a_clock_that_steps_back_never_reseals_a_sealed_hour() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let hour = hour_start(5);
    let meterd = Launch::new(dir.path(), &emu).start();
    assert_eq!(codes(&meterd.send(&[at("333333333333", 10, Some(hour + 60))])), ["ok"]);
    let first = emu.wait_records(1, Duration::from_secs(20));
    assert_eq!(first.len(), 1);
    let receipt = first[0]["metering_record_id"].clone();
    assert!(meterd.signal("TERM").success());

    // The clock is restored 5 hours back, into the sealed hour: "now" is an hour meterd sealed.
    let back = hour - hour_start(0);
    emu.set_clock_offset(back);
    let meterd = Launch::new(dir.path(), &emu).offset(back).start();
    meterd.wait_log("meterd's clock is behind the hours it has sealed", Duration::from_secs(10));
    let replies = meterd.send(&[at("333333333333", 7, None), at("444444444444", 3, None)]);
    assert_eq!(codes(&replies), ["ok", "ok"]);
    // The sealed key's event is late and carried past the sealed hour; the other customer never
    // had a record for this hour, so it gets one, sealed at once.
    assert_eq!(meterd.metric("meterd_late_events_total{policy=\"carry_forward\"}"), 1.0);
    let records = emu.wait_records(2, Duration::from_secs(20));
    assert_eq!(find(&records, "444444444444", "requests", hour).unwrap()["quantity"], 3);
    assert!(meterd.signal("TERM").success());

    emu.set_clock_offset(0);
    let _meterd = Launch::new(dir.path(), &emu).start();
    let records = emu.wait_records(3, Duration::from_secs(20));
    assert_eq!(records.len(), 3, "{records:?}");
    let sealed = find(&records, "333333333333", "requests", hour).unwrap();
    assert_eq!(sealed["quantity"], 10, "the first record stands");
    assert_eq!(sealed["metering_record_id"], receipt);
    assert_eq!(find(&records, "333333333333", "requests", hour + H).unwrap()["quantity"], 7);
    let statuses = emu.statuses();
    assert!(!statuses.contains_key("DuplicateRecord"), "{statuses:?}");
    let (_, receipts, _) = common::daemon::Meterd::cli(
        &Launch::new(dir.path(), &emu),
        &["receipts", "export", "--since", "2000-01-01T00:00:00Z", "--format", "json"],
    );
    assert!(receipts.contains(receipt.as_str().unwrap()), "the first receipt is kept: {receipts}");
}
