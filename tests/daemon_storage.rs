//! Bounded disk use: a full outbox refuses new events with `overloaded` and fails `/readyz`; a
//! full filesystem answers `storage_error`, never acknowledges what it could not store, and loses
//! nothing that was acknowledged.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::hour_start;
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;

/// Batches of 500 events for ten customers (with ids, so each is distinct), at most 400, until
/// `stop` says so; returns the events sent and their replies.
fn flood(meterd: &Meterd, tag: &str, stop: impl Fn(&[Value]) -> bool) -> (Vec<Value>, Vec<Value>) {
    let (mut sent, mut replies) = (Vec::new(), Vec::new());
    for round in 0..400 {
        let batch: Vec<Value> = (0..500)
            .map(|i| {
                let mut e = event(&format!("{}", 100_000_000_000u64 + i % 10), "requests", 1 + i % 3);
                e["timestamp"] = json!(hour_start(0) + 1);
                e["id"] = json!(format!("{tag}-{round}-{i}-{}", "x".repeat(60)));
                e
            })
            .collect();
        // meterd may also stop on a failed checkpoint, between two batches (the connection is
        // refused) or during one (its replies end early, in order: the events after the last
        // reply were never answered, so never acknowledged). Nothing more is sent then.
        let Ok(answered) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| meterd.send(&batch)))
        else {
            break;
        };
        let cut_short = answered.len() < batch.len();
        sent.extend(batch.into_iter().take(answered.len()));
        replies.extend(answered);
        if cut_short || stop(&replies) {
            break;
        }
    }
    (sent, replies)
}

fn refused_with(replies: &[Value], code: &str) -> usize {
    replies.iter().filter(|r| r["error"] == code).count()
}

/// Acknowledged quantity per customer.
fn acked_totals(sent: &[Value], replies: &[Value]) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for (event, reply) in sent.iter().zip(replies) {
        if reply["ok"] == true {
            let customer = event["customer_aws_account_id"].as_str().unwrap().to_string();
            *totals.entry(customer).or_default() += event["quantity"].as_u64().unwrap();
        }
    }
    totals
}

fn assert_billed(emu: &Emu, totals: &BTreeMap<String, u64>) {
    let records = emu.wait_records(totals.len(), Duration::from_secs(30));
    assert_eq!(records.len(), totals.len());
    for (customer, total) in totals {
        assert_eq!(
            find(&records, customer, "requests", hour_start(0)).unwrap()["quantity"],
            json!(total),
            "{customer}"
        );
    }
    assert!(!emu.statuses().contains_key("DuplicateRecord"));
}

#[test]
fn a_full_outbox_refuses_events_and_fails_readiness() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).env("METERD_STORAGE__MAX_BYTES", "1048576").start();
    assert_eq!(meterd.get("/readyz").0, 200);
    // Full is a moment: checkpoints trim the journal and make room again. Flood until the
    // refusals, readiness and the size all say full at once.
    let full = std::cell::RefCell::new(None);
    let (sent, replies) = flood(&meterd, "a", |r| {
        if refused_with(r, "overloaded") == 0 {
            return false;
        }
        let (status, body) = meterd.get("/readyz");
        let bytes = meterd.metric("meterd_outbox_bytes");
        let seen = status == 503 && bytes > 1048576.0;
        seen.then(|| *full.borrow_mut() = Some(body)).is_some()
    });
    let overloaded = refused_with(&replies, "overloaded");
    eprintln!("sent {}, overloaded {overloaded}", sent.len());
    let body = full.into_inner().unwrap_or_else(|| panic!("never seen full after {} events", sent.len()));
    assert!(body.contains("the outbox is full"), "{body}");
    let message = replies.iter().find(|r| r["error"] == "overloaded").unwrap()["message"].clone();
    assert_eq!(message, "the outbox is full (storage.max_bytes); retry later");
    let totals = acked_totals(&sent, &replies);
    assert!(meterd.signal("TERM").success());

    // With room again, it is ready, and everything acknowledged is billed exactly.
    emu.set_clock_offset(LATER);
    let meterd = Launch::new(dir.path(), &emu).offset(LATER).start();
    assert_eq!(meterd.get("/readyz").0, 200);
    assert_billed(&emu, &totals);
}

fn mount_tmpfs(at: &Path, size: &str) {
    std::fs::create_dir_all(at).unwrap();
    let status =
        Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "this test mounts a small tmpfs to fill the disk, and needs root (CAP_SYS_ADMIN)"
    );
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_answers_storage_error_and_loses_nothing_acknowledged() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    mount_tmpfs(&data, "7m");
    let _unmount = Unmount(&data);
    // Without the free-space floor (which would refuse to start on 7 MiB): the disk can still fill
    // between two measurements, and then this is what happens.
    let meterd = Launch::new(dir.path(), &emu)
        .env("METERD_STORAGE__MIN_FREE_BYTES", "0")
        .env("METERD_STORAGE__JOURNAL_SEGMENT_SIZE", "2097152")
        .start();
    let (sent, replies) = flood(&meterd, "d", |r| refused_with(r, "storage_error") > 0);
    // The disk fills at a journal append (that group is answered storage_error) or at a
    // checkpoint between two batches (meterd stops before the next one is read).
    let sent = &sent[..replies.len()];
    if let Some(first_error) = replies.iter().position(|r| r["error"] == "storage_error") {
        assert!(
            replies[first_error..].iter().all(|r| r["ok"] != true),
            "no ok after the first storage_error"
        );
    }
    let totals = acked_totals(sent, &replies);
    let acked = replies.iter().filter(|r| r["ok"] == true).count();
    eprintln!(
        "sent {}, acked {acked}, storage_error {}",
        sent.len(),
        refused_with(&replies, "storage_error")
    );
    assert!(acked > 0, "something was acknowledged before the disk filled");
    // meterd stops after a storage failure; a service manager restarts it.
    let exited = meterd.wait_exit(Duration::from_secs(20));
    assert_eq!(exited.code(), Some(1));

    // Space comes back; the restarted meterd bills exactly what was acknowledged.
    let status = Command::new("mount").args(["-o", "remount,size=64m"]).arg(&data).status().unwrap();
    assert!(status.success());
    emu.set_clock_offset(LATER);
    let _meterd =
        Launch::new(dir.path(), &emu).offset(LATER).env("METERD_STORAGE__MIN_FREE_BYTES", "0").start();
    assert_billed(&emu, &totals);
}
