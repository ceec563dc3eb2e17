//! An idempotency id names one event: an identical resend is a duplicate, a different event under
//! a known id is refused `id_conflict` and counted nowhere. Ids are scoped to the sending uid, so
//! another application cannot answer for (or block) this one's ids. An outbox written before ids
//! were bound to their events (log format 1, `i` id keys) is replayed, and its ids still hold.

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::daemon::{Emu, Launch, event};
use serde::Serialize;
use serde_json::{Value, json};

fn with_id(customer: &str, dimension: &str, quantity: u64, id: &str) -> Value {
    let mut e = event(customer, dimension, quantity);
    e["id"] = json!(id);
    e
}

#[test]
fn an_id_is_bound_to_its_event() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let first = with_id("111111111111", "requests", 5, "same");
    assert_eq!(meterd.send(std::slice::from_ref(&first)), [json!({"ok": true, "id": "same"})]);
    assert_eq!(meterd.send(&[first]), [json!({"ok": true, "id": "same", "duplicate": true})]);
    let other = with_id("222222222222", "storage", 700, "same");
    assert_eq!(
        meterd.send(&[other]),
        [json!({
            "ok": false,
            "id": "same",
            "error": "id_conflict",
            "message": "id \"same\" was already used for a different event in the last 25 hours; give every event its own id"
        })]
    );
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 1.0);
    assert_eq!(meterd.metric("meterd_events_rejected_total{reason=\"id_conflict\"}"), 1.0);

    // The binding survives a restart (ids and their digests are replayed from the log).
    meterd.kill9();
    let meterd = Launch::new(dir.path(), &emu).start();
    let replies = meterd.send(&[with_id("111111111111", "requests", 6, "same")]);
    assert_eq!(replies[0]["error"], "id_conflict");
    let replies = meterd.send(&[with_id("111111111111", "requests", 5, "same")]);
    assert_eq!(replies[0]["duplicate"], true);
}

#[test]
fn ids_are_scoped_to_the_sending_uid() {
    if running_as_root().is_none() {
        eprintln!("skipped: sending as another uid needs root (CI runs as root)");
        return;
    }
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let meterd = Launch::new(dir.path(), &emu).env("METERD_INGEST__SOCKET_MODE", "0666").start();
    assert_eq!(meterd.send(&[with_id("111111111111", "requests", 5, "k-1")])[0]["ok"], true);
    // uid 65534 (nobody) uses the same id for its own, different event: its own scope.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meterd"))
        .args(["send", "--socket"])
        .arg(&meterd.socket)
        .args(["--customer-aws-account-id", "222222222222", "--dimension", "storage", "--quantity", "7"])
        .args(["--id", "k-1"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    let reply: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(reply, json!({"ok": true, "id": "k-1"}));
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 2.0);
}

/// `Some(())` when this process runs as root.
fn running_as_root() -> Option<()> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_string();
    (uid == "0").then_some(())
}

/// An event as a log chunk of format 1 holds it.
#[derive(Serialize)]
struct AdmittedV1 {
    key: meterd::model::RecordKey,
    tags: Vec<(String, String)>,
    quantity: u32,
    id: Option<String>,
    at: i64,
}

#[test]
fn an_outbox_of_the_previous_format_is_replayed_and_its_ids_hold() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    assert!(meterd.signal("TERM").success());
    // What an older meterd left: one logged event with id "old-1" and a checkpointed id "old-2".
    let now = common::now_secs();
    let hour = now - now.rem_euclid(3600);
    let key = meterd::model::RecordKey {
        scope: meterd::model::Scope::ProductCode(common::daemon::PRODUCT.into()),
        customer: meterd::model::Customer::AwsAccountId("555555555555".into()),
        dimension: "requests".into(),
        hour,
    };
    let old = vec![AdmittedV1 { key, tags: vec![], quantity: 8, id: Some("old-1".into()), at: now }];
    let db = sled::Config::new()
        .path(dir.path().join("data/outbox"))
        .segment_size(meterd::outbox::SEGMENT_SIZE)
        .open()
        .unwrap();
    let mut log_key = vec![b'l'];
    log_key.extend_from_slice(&1_000_000u64.to_be_bytes());
    log_key.extend_from_slice(&0u16.to_be_bytes());
    db.insert(log_key, postcard::to_extend(&old, vec![1u8]).unwrap()).unwrap();
    db.insert(b"iold-2", postcard::to_extend(&(now + 3600), vec![1u8]).unwrap()).unwrap();
    db.flush().unwrap();
    drop(db);

    let meterd = Launch::new(dir.path(), &emu).start();
    // The old event is replayed (the gauge is set by the commit stage's first checkpoint).
    meterd.wait_metric("meterd_records{state=\"open\"}", 1.0, Duration::from_secs(5));
    for id in ["old-1", "old-2"] {
        let replies = meterd.send(&[with_id("666666666666", "storage", 1, id)]);
        assert_eq!(replies, [json!({"ok": true, "id": id, "duplicate": true})], "legacy ids match any event");
    }
    let replies = meterd.send(&[with_id("666666666666", "storage", 1, "new-1")]);
    assert_eq!(replies, [json!({"ok": true, "id": "new-1"})]);
    meterd.wait_metric("meterd_records{state=\"open\"}", 2.0, Duration::from_secs(5));
}

/// The files in a data dir's `ids/`, by kind.
fn id_files(dir: &std::path::Path) -> (usize, usize) {
    let names: Vec<String> = std::fs::read_dir(dir.join("data/ids"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    (
        names.iter().filter(|n| n.ends_with(".run")).count(),
        names.iter().filter(|n| n.ends_with(".log")).count(),
    )
}

#[test]
fn ids_expire_by_the_hour_and_their_files_go_with_them() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    // Two hours of ids, 27 and 26 hours ago.
    let ids =
        |from: usize| (from..from + 500).map(|n| with_id("111111111111", "requests", 1, &format!("id-{n}")));
    for (hours_ago, from) in [(27, 0), (26, 500)] {
        let offset = -hours_ago * 3600;
        emu.set_clock_offset(offset);
        let meterd = Launch::new(dir.path(), &emu).offset(offset).start();
        let replies = meterd.send(&ids(from).collect::<Vec<_>>());
        assert!(replies.iter().all(|r| r["ok"] == true && r.get("duplicate").is_none()), "{replies:?}");
        assert!(meterd.signal("TERM").success());
    }
    // The first hour's ids went into a run when the second hour's came; the second's are in a log.
    assert_eq!(id_files(dir.path()), (1, 1));
    // Between the two hours' expiries (25 hours after each one's last id): the first hour's ids
    // are forgotten, the second's not yet.
    let offset = -5400;
    emu.set_clock_offset(offset);
    let meterd = Launch::new(dir.path(), &emu).offset(offset).start();
    meterd.wait_metric("meterd_remembered_ids", 500.0, Duration::from_secs(10));
    let old = meterd.send(&ids(0).take(3).collect::<Vec<_>>());
    assert!(old.iter().all(|r| r["ok"] == true && r.get("duplicate").is_none()), "forgotten: {old:?}");
    let recent = meterd.send(&ids(500).take(3).collect::<Vec<_>>());
    assert!(recent.iter().all(|r| r["duplicate"] == true), "still remembered: {recent:?}");
    meterd.wait_metric("meterd_remembered_ids", 503.0, Duration::from_secs(10));
    assert!(meterd.signal("TERM").success());
    assert_eq!(id_files(dir.path()), (1, 1), "the first hour's run is gone");
    // An hour on, the second hour's ids have expired too: only the three sent since are left.
    let offset = 0;
    emu.set_clock_offset(offset);
    let meterd = Launch::new(dir.path(), &emu).offset(offset).start();
    meterd.wait_metric("meterd_remembered_ids", 3.0, Duration::from_secs(10));
    let replies = meterd.send(&ids(500).take(1).collect::<Vec<_>>());
    assert_eq!(replies, [json!({"ok": true, "id": "id-500"})], "counted again once forgotten");
    assert!(meterd.signal("TERM").success());
    assert_eq!(
        id_files(dir.path()),
        (1, 1),
        "the second hour's run is gone; the last hour's ids are in a log"
    );
}
