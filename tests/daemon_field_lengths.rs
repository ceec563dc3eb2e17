//! Field lengths are counted as the Metering Service counts them, in UTF-16 code units, so an event
//! ingest acknowledges is never refused later as invalid; and a key given twice in `tags` is
//! refused instead of silently keeping the last value.

mod common;

use std::time::Duration;

use common::daemon::{Emu, Launch};
use common::hour_start;
use serde_json::{Value, json};

/// U+1F600, two UTF-16 code units.
const EMOJI: &str = "\u{1F600}";

fn codes(replies: &[Value]) -> Vec<&str> {
    replies.iter().map(|r| r["error"].as_str().unwrap_or("ok")).collect()
}

#[test]
fn lengths_are_utf16_code_units_and_what_ingest_accepts_the_service_accepts() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let at = hour_start(1) + 60;
    // 200 emoji are 200 characters but 400 code units: the service refuses a 256th unit.
    let too_long_dimension = EMOJI.repeat(200);
    let longest_dimension = format!("{}a", EMOJI.repeat(127));
    let too_long_customer = EMOJI.repeat(128);
    let longest_customer = format!("{}b", EMOJI.repeat(127));
    let events = [
        json!({"customer_aws_account_id": "111111111111", "dimension": too_long_dimension, "quantity": 1, "timestamp": at, "id": "dim-400"}),
        json!({"customer_aws_account_id": "111111111111", "dimension": longest_dimension, "quantity": 2, "timestamp": at, "id": "dim-255"}),
        json!({"customer_identifier": too_long_customer, "dimension": "requests", "quantity": 3, "timestamp": at, "id": "cust-256"}),
        json!({"customer_identifier": longest_customer, "dimension": "requests", "quantity": 4, "timestamp": at, "id": "cust-255"}),
    ];
    let replies = meterd.send(&events);
    assert_eq!(codes(&replies), ["invalid_field", "ok", "invalid_field", "ok"], "{replies:?}");
    assert_eq!(
        replies[0]["message"],
        "`dimension` must be 1 to 255 UTF-16 code units (as the Metering Service counts them); it has 400"
    );
    assert_eq!(
        replies[2]["message"],
        "`customer_identifier` must be 1 to 255 UTF-16 code units (as the Metering Service counts them); it has 256"
    );
    assert_eq!(replies[0]["id"], "dim-400");
    assert!(meterd.signal("TERM").success());

    // Four hours later the hour is sealed and submitted: the service takes both 255-unit records.
    emu.set_clock_offset(4 * 3600);
    let meterd = Launch::new(dir.path(), &emu).offset(4 * 3600).start();
    let records = emu.wait_records(2, Duration::from_secs(30));
    assert_eq!(records.len(), 2, "{records:?}");
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 2.0, Duration::from_secs(10));
    assert_eq!(meterd.metric("meterd_dead_letters{reason=\"invalid\"}"), 0.0);
    let statuses = emu.statuses();
    assert_eq!(statuses.get("Success").copied(), Some(2), "{statuses:?}");
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert!(meterd.signal("TERM").success());
}

#[test]
fn a_tag_key_given_twice_is_refused_with_a_precise_message() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let lines = [
        r#"{"customer_aws_account_id":"111111111111","dimension":"requests","quantity":1,"tags":{"team":"a","env":"prod","team":"b"},"id":"dup"}"#,
        r#"{"customer_aws_account_id":"111111111111","dimension":"requests","quantity":1,"tags":{"team":"a","env":"prod"},"id":"fine"}"#,
    ];
    let replies = meterd.send_raw(format!("{}\n", lines.join("\n")).as_bytes());
    assert_eq!(codes(&replies), ["invalid_field", "ok"], "{replies:?}");
    assert_eq!(replies[0]["id"], "dup");
    assert_eq!(replies[0]["message"], "`tags` has the key \"team\" twice; each key may appear once");
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 1.0);
    assert_eq!(meterd.metric("meterd_events_rejected_total{reason=\"invalid_field\"}"), 1.0);
}
