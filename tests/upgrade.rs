//! An upgrade replays what the previous on-disk format held. `tests/fixtures/outbox-0.1.0.tar.gz` is
//! a data dir written by meterd 0.1.0 (commit 5f4e5a3, before the event journal) with
//! `cargo test --test upgrade -- --ignored write_fixture`, run on that commit. It holds:
//!
//! | customer | state in the old outbox | quantity |
//! |---|---|---|
//! | 100000000001 | a sealed record, pending (its endpoint was unreachable) | 1 + 2 + 3 |
//! | 100000000002 | an open hour checkpointed as per-record `o` keys, two tag sets | 5 + 7 |
//! | 100000000003 | events in the sled log after the checkpoint (meterd was killed with -9) | 11 + 13 |
//!
//! and the ids of every event. `meta.json` beside the data dir has the generating clock's `now`.
//! Today's meterd starts on it (its clock and the emulator's moved back to that `now`), bills each
//! record once with the exact quantities and allocations, and answers a resent id as a duplicate.
//!
//! `tests/fixtures/outbox-ids-in-sled.tar.gz` is a data dir written by the meterd that kept ids in
//! sled (`j` keys; commit 5ac37ff) with `METERD_FIXTURE_BIN=<that meterd> cargo test --test upgrade
//! -- --ignored write_ids_fixture`: ids d1, d2 (customer 200000000001, quantities 1 and 2)
//! checkpointed into sled by a clean stop, ids e1, e2 (200000000002, 3 and 4) only in the journal
//! (killed with -9). Today's meterd carries them into its id files.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, allocations, event, find};
use serde_json::{Value, json};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/outbox-0.1.0.tar.gz");
const IDS_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/outbox-ids-in-sled.tar.gz");

fn with(customer: &str, quantity: u64, id: &str, team: Option<&str>) -> Value {
    let mut e = event(customer, "requests", quantity);
    e["id"] = json!(id);
    if let Some(team) = team {
        e["tags"] = json!({ "team": team });
    }
    e
}

fn all_ok(replies: &[Value]) {
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
}

/// Writes the fixture with the meterd of the commit it runs on (see the module header).
#[test]
#[ignore = "writes tests/fixtures/outbox-0.1.0.tar.gz; run only on the release whose format it records"]
fn write_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let now = common::now_secs();
    let unreachable = "http://127.0.0.1:9";
    // Four hours back: sealed at the next start (seal delay 3h), then pending.
    let meterd = Launch::with_endpoint(dir.path(), unreachable).offset(-4 * 3600).start();
    all_ok(&meterd.send(&[with("100000000001", 1, "a1", None), with("100000000001", 2, "a2", None)]));
    all_ok(&meterd.send(&[with("100000000001", 3, "a3", None)]));
    assert!(meterd.signal("TERM").success());
    let meterd = Launch::with_endpoint(dir.path(), unreachable).start();
    meterd.wait_metric("meterd_records{state=\"pending\"}", 1.0, Duration::from_secs(10));
    all_ok(
        &meterd.send(&[with("100000000002", 5, "b1", Some("x")), with("100000000002", 7, "b2", Some("y"))]),
    );
    assert!(meterd.signal("TERM").success());
    // Events after the last checkpoint stay in the log when meterd is killed.
    let meterd = Launch::with_endpoint(dir.path(), unreachable)
        .env("METERD_STORAGE__CHECKPOINT_INTERVAL", "60s")
        .start();
    all_ok(&meterd.send(&[with("100000000003", 11, "c1", None)]));
    all_ok(&meterd.send(&[with("100000000003", 13, "c2", None)]));
    meterd.kill9();
    std::fs::write(dir.path().join("meta.json"), json!({ "now": now }).to_string()).unwrap();
    let out = Path::new(FIXTURE);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let status = std::process::Command::new("tar")
        .args(["-czf", out.to_str().unwrap(), "-C", dir.path().to_str().unwrap(), "data", "meta.json"])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn an_outbox_written_before_the_journal_is_replayed_and_billed_once() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .args(["-xzf", FIXTURE, "-C", dir.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.path().join("meta.json")).unwrap()).unwrap();
    let then = meta["now"].as_i64().unwrap();
    let offset = then - common::now_secs();
    let emu = Emu::start(|_| {});
    emu.set_clock_offset(offset);
    let launch = || Launch::new(dir.path(), &emu).offset(offset);
    let meterd = launch().start();
    // The pending record is submitted; the checkpointed and the logged hours are open again.
    let records = emu.wait_records(1, Duration::from_secs(20));
    let old_hour = (then - 4 * 3600) - (then - 4 * 3600).rem_euclid(3600);
    assert_eq!(find(&records, "100000000001", "requests", old_hour).unwrap()["quantity"], 6);
    meterd.wait_metric("meterd_records{state=\"open\"}", 2.0, Duration::from_secs(5));
    for (customer, id) in [("100000000001", "a2"), ("100000000002", "b1"), ("100000000003", "c2")] {
        let quantity = if customer == "100000000002" { 5 } else { 2 };
        let team = (customer == "100000000002").then_some("x");
        let replies = meterd.send(&[with(customer, if id == "c2" { 13 } else { quantity }, id, team)]);
        assert_eq!(replies, [json!({"ok": true, "id": id, "duplicate": true})], "ids survive the upgrade");
    }
    // A restart after kill -9 on the new format still holds everything.
    meterd.kill9();
    let meterd = launch().start();
    for customer in ["100000000002", "100000000003"] {
        let (code, _, stderr) = Meterd::cli(&launch(), &["flush", "--customer", customer]);
        assert_eq!(code, 0, "{stderr}");
    }
    let records = emu.wait_records(3, Duration::from_secs(20));
    let hour = then - then.rem_euclid(3600);
    assert_eq!(records.len(), 3, "{records:?}");
    let b = find(&records, "100000000002", "requests", hour).unwrap();
    assert_eq!(b["quantity"], 12);
    assert_eq!(allocations(b), [(r#"{"team":"x"}"#.to_string(), 5), (r#"{"team":"y"}"#.to_string(), 7)]);
    assert_eq!(find(&records, "100000000003", "requests", hour).unwrap()["quantity"], 24);
    assert_eq!(emu.statuses().get("DuplicateRecord"), None, "nothing billed twice");
    drop(meterd);
}

/// Writes the ids fixture with the meterd `METERD_FIXTURE_BIN` names (see the module header).
#[test]
#[ignore = "writes tests/fixtures/outbox-ids-in-sled.tar.gz with the meterd METERD_FIXTURE_BIN names"]
fn write_ids_fixture() {
    let bin =
        std::env::var("METERD_FIXTURE_BIN").expect("METERD_FIXTURE_BIN: the meterd whose format it records");
    let script = format!("shift; exec {bin} \"$@\"");
    let under = ["sh", "-c", script.as_str(), "sh"];
    let dir = tempfile::tempdir().unwrap();
    let now = common::now_secs();
    let unreachable = "http://127.0.0.1:9";
    let meterd = Launch::with_endpoint(dir.path(), unreachable).under(&under).start();
    all_ok(&meterd.send(&[with("200000000001", 1, "d1", None), with("200000000001", 2, "d2", None)]));
    assert!(meterd.signal("TERM").success());
    let meterd = Launch::with_endpoint(dir.path(), unreachable)
        .under(&under)
        .env("METERD_STORAGE__CHECKPOINT_INTERVAL", "60s")
        .start();
    all_ok(&meterd.send(&[with("200000000002", 3, "e1", None), with("200000000002", 4, "e2", None)]));
    meterd.kill9();
    std::fs::write(dir.path().join("meta.json"), json!({ "now": now }).to_string()).unwrap();
    let status = std::process::Command::new("tar")
        .args(["-czf", IDS_FIXTURE, "-C", dir.path().to_str().unwrap(), "data", "meta.json"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Unpacks a fixture; returns the generating clock's `now`.
fn unpack(fixture: &str, dir: &Path) -> i64 {
    let status = std::process::Command::new("tar")
        .args(["-xzf", fixture, "-C", dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    meta["now"].as_i64().unwrap()
}

#[test]
fn ids_an_older_meterd_kept_in_sled_and_its_journal_are_still_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let then = unpack(IDS_FIXTURE, dir.path());
    let offset = then - common::now_secs();
    let emu = Emu::start(|_| {});
    emu.set_clock_offset(offset);
    let launch = || Launch::new(dir.path(), &emu).offset(offset);
    let resend = |meterd: &Meterd| {
        for (customer, quantity, id) in [
            ("200000000001", 1, "d1"),
            ("200000000001", 2, "d2"),
            ("200000000002", 3, "e1"),
            ("200000000002", 4, "e2"),
        ] {
            let replies = meterd.send(&[with(customer, quantity, id, None)]);
            assert_eq!(replies, [json!({"ok": true, "id": id, "duplicate": true})], "{id}");
        }
    };
    let meterd = launch().start();
    resend(&meterd);
    let conflict = meterd.send(&[with("200000000001", 5, "d1", None)]);
    assert_eq!(conflict[0]["error"], "id_conflict", "{conflict:?}");
    all_ok(&meterd.send(&[with("200000000002", 10, "f1", None)]));
    // The first checkpoint writes the carried ids as a run; then sled's copies go.
    let ids = dir.path().join("data/ids");
    let has_run = || {
        std::fs::read_dir(&ids)
            .is_ok_and(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "run")))
    };
    for _ in 0..200 {
        if has_run() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(has_run(), "no id run in {}", ids.display());
    meterd.kill9();
    let meterd = launch().start();
    resend(&meterd);
    let replies = meterd.send(&[with("200000000002", 10, "f1", None)]);
    assert_eq!(replies, [json!({"ok": true, "id": "f1", "duplicate": true})]);
    for customer in ["200000000001", "200000000002"] {
        let (code, _, stderr) = Meterd::cli(&launch(), &["flush", "--customer", customer]);
        assert_eq!(code, 0, "{stderr}");
    }
    let records = emu.wait_records(2, Duration::from_secs(20));
    let hour = then - then.rem_euclid(3600);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(find(&records, "200000000001", "requests", hour).unwrap()["quantity"], 3);
    assert_eq!(find(&records, "200000000002", "requests", hour).unwrap()["quantity"], 17);
    assert_eq!(emu.statuses().get("DuplicateRecord"), None, "nothing billed twice");
    drop(meterd);
}
