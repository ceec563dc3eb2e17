//! What the service throws at meterd: throttling, HTTP 500, UnprocessedRecords, a bad record
//! inside a full batch, an out-of-window record, a configuration error.

mod common;

use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::hour_start;
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;

/// One event per customer in `hour`, quantity = index + 1.
fn events(customers: usize, dimension: impl Fn(usize) -> &'static str, hour: i64) -> Vec<Value> {
    (0..customers)
        .map(|i| {
            let mut e = event(&format!("{}", 300_000_000_000u64 + i as u64), dimension(i), i as u64 + 1);
            e["timestamp"] = json!(hour + 5);
            e
        })
        .collect()
}

/// Sends `events` to a fresh meterd, stops it, and starts it again four hours later.
fn sealed_and_submitting(emu: &Emu, dir: &std::path::Path, events: &[Value]) -> Meterd {
    let meterd = Launch::new(dir, emu).start();
    assert!(meterd.send(events).iter().all(|r| r["ok"] == true));
    assert!(meterd.signal("TERM").success());
    emu.set_clock_offset(LATER);
    Launch::new(dir, emu).offset(LATER).start()
}

fn outcomes(emu: &Emu) -> Vec<String> {
    emu.requests().iter().map(|r| r["outcome"].as_str().unwrap().to_string()).collect()
}

#[test]
fn throttling_server_errors_and_unprocessed_records_are_retried_unchanged() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    emu.faults(json!({"throttle": 2, "http_500": 2, "unprocessed_share": 0.4}));
    let sent = events(30, |_| "requests", hour_start(0));
    let meterd = sealed_and_submitting(&emu, dir.path(), &sent);
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 30.0, Duration::from_secs(30));
    let records = emu.records();
    assert_eq!(records.len(), 30);
    for (i, _) in sent.iter().enumerate() {
        let record =
            find(&records, &format!("{}", 300_000_000_000u64 + i as u64), "requests", hour_start(0)).unwrap();
        assert_eq!(record["quantity"], json!(i + 1));
    }
    let outcomes = outcomes(&emu);
    assert_eq!(outcomes.iter().filter(|o| *o == "ThrottlingException").count(), 2, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "InternalServiceErrorException").count(), 2, "{outcomes:?}");
    let statuses = emu.statuses();
    assert!(statuses["Unprocessed"] > 0, "{statuses:?}");
    assert!(!statuses.contains_key("DuplicateRecord"), "{statuses:?}");
    assert_eq!(
        meterd.metric("meterd_api_requests_total{operation=\"BatchMeterUsage\",outcome=\"throttled\"}"),
        2.0
    );
    assert_eq!(
        meterd.metric("meterd_api_requests_total{operation=\"BatchMeterUsage\",outcome=\"server_error\"}"),
        2.0
    );
    assert_eq!(meterd.metric("meterd_records_submitted_total{status=\"success\"}"), 30.0);
}

#[test]
fn an_invalid_dimension_in_a_full_batch_dead_letters_only_that_record() {
    let emu = Emu::start(|c| c.catalogue.dimensions = Some(vec!["requests".into()]));
    let dir = tempfile::tempdir().unwrap();
    let sent = events(25, |i| if i == 17 { "retired_dimension" } else { "requests" }, hour_start(0));
    let meterd = sealed_and_submitting(&emu, dir.path(), &sent);
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 24.0, Duration::from_secs(30));
    meterd.wait_metric("meterd_dead_letters{reason=\"invalid\"}", 1.0, Duration::from_secs(10));
    let records = emu.records();
    assert_eq!(records.len(), 24);
    assert!(records.iter().all(|r| r["dimension"] == "requests"));
    let first = &emu.requests()[0];
    assert_eq!(
        (first["records"].as_u64(), first["outcome"].as_str()),
        (Some(25), Some("InvalidUsageDimensionException"))
    );
    assert_eq!(meterd.metric("meterd_records{state=\"pending\"}"), 0.0);
}

#[test]
fn an_out_of_window_record_becomes_a_dead_letter_and_the_rest_goes() {
    // The service's window (5h30m) is shorter than meterd's deadline (12h). Four hours on, the
    // current hour is 4h to 5h old and accepted, whatever the minute; the hour two hours back is
    // 6h to 7h old and refused. (A customer not subscribed is kept and asked again:
    // tests/daemon_submit.rs.)
    let emu = Emu::start(|c| c.window = Some(Duration::from_secs(5 * 3600 + 1800)));
    let dir = tempfile::tempdir().unwrap();
    let mut sent = events(3, |_| "requests", hour_start(0));
    sent.extend(events(1, |_| "requests", hour_start(2)));
    let meterd = sealed_and_submitting(&emu, dir.path(), &sent);
    meterd.wait_metric("meterd_dead_letters{reason=\"invalid\"}", 1.0, Duration::from_secs(30));
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 3.0, Duration::from_secs(10));
    let records = emu.records();
    assert_eq!(records.len(), 3);
    assert!(find(&records, "300000000000", "requests", hour_start(2)).is_none());
    assert!(outcomes(&emu).contains(&"TimestampOutOfBoundsException".to_string()));
    assert_eq!(meterd.metric("meterd_submission_paused"), 0.0);
}

#[test]
fn a_configuration_error_pauses_submission_and_keeps_everything() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    emu.faults(json!({"error": {"type": "InvalidProductCodeException", "count": 3}}));
    let meterd = sealed_and_submitting(&emu, dir.path(), &events(5, |_| "requests", hour_start(0)));
    let paused = meterd.wait_log("submission paused", Duration::from_secs(10));
    assert_eq!(paused["level"], "ERROR");
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 5.0, Duration::from_secs(30));
    let outcomes = outcomes(&emu);
    assert_eq!(outcomes.iter().filter(|o| *o == "InvalidProductCodeException").count(), 3, "{outcomes:?}");
    assert_eq!(meterd.metric("meterd_dead_letters{reason=\"invalid\"}"), 0.0);
}
