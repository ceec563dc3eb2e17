//! A data dir of the one-product meterd (commit 52de32e, before `aws.products`) replays and
//! submits unchanged, under one product and under several, its records belonging to the product
//! it was configured with. `tests/fixtures/outbox-52de32e.tar.gz` was written with
//! `METERD_FIXTURE_BIN=<meterd of 52de32e> cargo test --test upgrade_products -- --ignored
//! write_fixture`, with `aws.product_code = "prod-test"`. It holds:
//!
//! | customer | state in the data dir | quantity |
//! |---|---|---|
//! | 300000000001 | a sealed record, pending (its endpoint was unreachable) | 1 + 2 |
//! | 300000000002 | an open hour in the checkpoint (clean stop), two tag sets | 5 + 7 |
//! | 300000000003 | events only in the journal (killed with -9) | 11 + 13 |
//! | 300000000004 | an open hour of a license ARN, in the journal | 17 |
//!
//! with the ids of every event; `meta.json` has the generating clock's `now`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, allocations, event, find};
use serde_json::{Value, json};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/outbox-52de32e.tar.gz");
const LICENSE: &str = "arn:aws:license-manager::111111111111:license:l-old";

/// Event `id` of the fixture, as its client sent it (and resends it).
fn sent(customer: &str, quantity: u64, id: &str) -> Value {
    let mut e = event(customer, "requests", quantity);
    e["id"] = json!(id);
    match customer {
        "300000000002" => e["tags"] = json!({ "team": if id == "b1" { "x" } else { "y" } }),
        "300000000004" => e["license_arn"] = json!(LICENSE),
        _ => {}
    }
    e
}

const EVENTS: [(&str, u64, &str); 7] = [
    ("300000000001", 1, "a1"),
    ("300000000001", 2, "a2"),
    ("300000000002", 5, "b1"),
    ("300000000002", 7, "b2"),
    ("300000000003", 11, "c1"),
    ("300000000003", 13, "c2"),
    ("300000000004", 17, "d1"),
];

fn all_ok(replies: &[Value]) {
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
}

/// Writes the fixture with the meterd `METERD_FIXTURE_BIN` names (see the module header).
#[test]
#[ignore = "writes tests/fixtures/outbox-52de32e.tar.gz with the meterd METERD_FIXTURE_BIN names"]
fn write_fixture() {
    let bin = std::env::var("METERD_FIXTURE_BIN")
        .expect("METERD_FIXTURE_BIN: the meterd whose data dir it records");
    let script = format!("shift; exec {bin} \"$@\"");
    let under = ["sh", "-c", script.as_str(), "sh"];
    let dir = tempfile::tempdir().unwrap();
    let now = common::now_secs();
    let unreachable = "http://127.0.0.1:9";
    let old = || Launch::with_endpoint(dir.path(), unreachable).under(&under);
    let send = |meterd: &Meterd, range: std::ops::Range<usize>| {
        let events: Vec<Value> = EVENTS[range].iter().map(|(c, q, id)| sent(c, *q, id)).collect();
        all_ok(&meterd.send(&events));
    };
    // Four hours back: sealed at the next start (seal delay 3h), then pending.
    let meterd = old().offset(-4 * 3600).start();
    send(&meterd, 0..2);
    assert!(meterd.signal("TERM").success());
    let meterd = old().start();
    meterd.wait_metric("meterd_records{state=\"pending\"}", 1.0, Duration::from_secs(10));
    send(&meterd, 2..4);
    assert!(meterd.signal("TERM").success());
    let meterd = old().env("METERD_STORAGE__CHECKPOINT_INTERVAL", "60s").start();
    send(&meterd, 4..7);
    meterd.kill9();
    std::fs::write(dir.path().join("meta.json"), json!({ "now": now }).to_string()).unwrap();
    let status = std::process::Command::new("tar")
        .args(["-czf", FIXTURE, "-C", dir.path().to_str().unwrap(), "data", "meta.json"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Unpacks the fixture; returns the generating clock's `now`.
fn unpack(dir: &Path) -> i64 {
    let status = std::process::Command::new("tar")
        .args(["-xzf", FIXTURE, "-C", dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    meta["now"].as_i64().unwrap()
}

/// Starts today's meterd on the fixture with `products` (`None`: the one-product shorthand the
/// fixture was written with), resends every event by id (naming prod-test when `named`), and
/// checks that everything is billed once, under prod-test, with the quantities of the fixture.
fn replays(products: Option<&str>, named: bool) {
    let dir = tempfile::tempdir().unwrap();
    let then = unpack(dir.path());
    let offset = then - common::now_secs();
    let emu = Emu::start(|_| {});
    emu.set_clock_offset(offset);
    let launch = || {
        let launch = Launch::new(dir.path(), &emu).offset(offset);
        match products {
            Some(products) => {
                launch.env("METERD_AWS__PRODUCT_CODE", "").env("METERD_AWS__PRODUCTS", products)
            }
            None => launch,
        }
    };
    // Read offline first: the pending record is of the product the old meterd had.
    let (code, stdout, stderr) = Meterd::cli(&launch(), &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["pending_by_product"], json!({ "prod-test": 1 }));
    let meterd = launch().start();
    let records = emu.wait_records(1, Duration::from_secs(20));
    let old_hour = (then - 4 * 3600) - (then - 4 * 3600).rem_euclid(3600);
    let pending =
        find(&records, "300000000001", "requests", old_hour).expect("the pending record is submitted");
    assert_eq!((&pending["quantity"], &pending["product_code"]), (&json!(3), &json!("prod-test")));
    meterd.wait_metric("meterd_records{state=\"open\"}", 3.0, Duration::from_secs(5));
    for (customer, quantity, id) in EVENTS {
        let mut event = sent(customer, quantity, id);
        if named {
            event["product_code"] = json!("prod-test");
        }
        assert_eq!(meterd.send(&[event]), [json!({"ok": true, "id": id, "duplicate": true})], "{id}");
    }
    for customer in ["300000000002", "300000000003", "300000000004"] {
        let (code, _, stderr) = Meterd::cli(&launch(), &["flush", "--customer", customer]);
        assert_eq!(code, 0, "{stderr}");
    }
    let records = emu.wait_records(4, Duration::from_secs(20));
    assert_eq!(records.len(), 4, "{records:?}");
    let hour = then - then.rem_euclid(3600);
    let b = find(&records, "300000000002", "requests", hour).unwrap();
    assert_eq!((&b["quantity"], &b["product_code"]), (&json!(12), &json!("prod-test")));
    assert_eq!(allocations(b), [(r#"{"team":"x"}"#.to_string(), 5), (r#"{"team":"y"}"#.to_string(), 7)]);
    let c = find(&records, "300000000003", "requests", hour).unwrap();
    assert_eq!((&c["quantity"], &c["product_code"]), (&json!(24), &json!("prod-test")));
    let d = find(&records, "300000000004", "requests", hour).unwrap();
    assert_eq!((&d["quantity"], &d["license_arn"]), (&json!(17), &json!(LICENSE)));
    assert_eq!(emu.statuses().get("DuplicateRecord"), None, "nothing billed twice");
    drop(meterd);
}

#[test]
fn a_one_product_data_dir_replays_unchanged_under_the_same_product() {
    replays(None, false);
}

#[test]
fn a_one_product_data_dir_replays_unchanged_under_aws_products() {
    replays(Some(r#"[{ code = "prod-test" }]"#), false);
}

#[test]
fn a_one_product_data_dir_replays_unchanged_when_a_second_product_is_added() {
    replays(Some(r#"[{ code = "prod-test" }, { code = "prod-new" }]"#), true);
}
