//! What ingest refuses so that a record can always be sent and never bills twice: an event that
//! would grow its record past what one request carries (`record_too_large`), and the same
//! customer and hour reported both with and without a license ARN. A legacy
//! `customer_identifier` is accepted with one deprecation WARN per customer per day.

mod common;

use common::daemon::{Emu, Launch, event};
use serde_json::{Value, json};

const ARN: &str = "arn:aws:license-manager::123456789012:license/l-0123456789abcdef";

/// Five long tags that make tag set `n` distinct.
fn tagged(n: usize) -> Value {
    let mut e = event("111111111111", "requests", 1);
    let long = "v".repeat(250);
    e["tags"] = json!({
        "a": format!("{n:06}{long}"), "b": long, "c": long, "d": long, "e": long,
    });
    e
}

#[test]
fn an_event_that_would_outgrow_one_request_is_refused_and_nothing_else_is() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let events: Vec<Value> = (0..800).map(tagged).collect();
    let replies = meterd.send(&events);
    let first_refused = replies.iter().position(|r| r["ok"] != true).expect("some are refused");
    assert!((600..800).contains(&first_refused), "{first_refused}");
    for reply in &replies[first_refused..] {
        assert_eq!(reply["error"], "record_too_large", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("more than one request can carry (990000)"),
            "{reply}"
        );
    }
    // A tag set the record already has adds nothing, and other keys are unaffected.
    let replies = meterd.send(&[tagged(0), event("222222222222", "requests", 3)]);
    assert_eq!(replies.iter().filter(|r| r["ok"] == true).count(), 2, "{replies:?}");
    assert_eq!(
        meterd.metric("meterd_events_rejected_total{reason=\"record_too_large\"}"),
        (800 - first_refused) as f64
    );
    // The largest record ingest allows goes through the real SDK in one request under 1 MB.
    assert!(meterd.signal("TERM").success());
    emu.set_clock_offset(4 * 3600);
    let meterd = Launch::new(dir.path(), &emu).offset(4 * 3600).start();
    let records = emu.wait_records(2, std::time::Duration::from_secs(30));
    let big =
        common::daemon::find(&records, "111111111111", "requests", common::hour_start(0)).expect("accepted");
    assert_eq!(big["quantity"], json!(first_refused + 1));
    assert_eq!(big["allocations"].as_array().unwrap().len(), first_refused);
    assert_eq!(meterd.metric("meterd_dead_letters{reason=\"invalid\"}"), 0.0);
}

#[test]
fn a_customer_hour_is_reported_with_or_without_a_license_never_both() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let mut licensed = event("333333333333", "requests", 2);
    licensed["license_arn"] = json!(ARN);
    let plain = event("333333333333", "storage", 4);
    let replies = meterd.send(&[licensed.clone(), plain]);
    assert_eq!(replies[0]["ok"], true);
    assert_eq!(replies[1]["error"], "invalid_field");
    let hour = replies_hour();
    assert_eq!(
        replies[1]["message"],
        format!(
            "this customer's usage in the hour starting {hour} was already reported with a license_arn; reporting it both with and without a license_arn would bill the customer twice"
        )
    );
    // Another customer, or the same scope again, is fine.
    let replies = meterd.send(&[licensed, event("444444444444", "storage", 4)]);
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
}

fn replies_hour() -> i64 {
    common::hour_start(0)
}

#[test]
fn a_legacy_customer_identifier_warns_once_per_customer_per_day() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let legacy = |id: &str| json!({"customer_identifier": id, "dimension": "requests", "quantity": 1});
    let replies = meterd.send(&[legacy("cust-a"), legacy("cust-a"), legacy("cust-b")]);
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    let replies = meterd.send(&[legacy("cust-a")]);
    assert_eq!(replies[0]["ok"], true);
    let warnings: Vec<String> = meterd
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("customer_identifier is deprecated")))
        .map(|l| l["customer_identifier"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(warnings, ["cust-a", "cust-b"]);
}
