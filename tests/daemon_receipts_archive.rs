//! A month of receipts kept while ingest goes on: meterd's clock (and the emulator's) moved a day
//! at a time over 32 days, each day's records accepted and moved to the receipts archive
//! (`<data_dir>/receipts/`), and `receipts export` returning every one of them, online and
//! offline.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event};
use common::hour_start;
use serde_json::{Value, json};

const DAYS: i64 = 32;
const CUSTOMERS: u64 = 30;

fn customer(n: u64) -> String {
    format!("{:012}", 400_000_000_000 + n)
}

/// Every receipt: `--until` by default is the real clock's hour, before the moved one.
fn export(launch: &Launch) -> Vec<Value> {
    let args = ["receipts", "export", "--since", "0", "--until", "4000000000", "--format", "json"];
    let (code, stdout, stderr) = Meterd::cli(launch, &args);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str::<Value>(&stdout).unwrap().as_array().unwrap().clone()
}

fn status(launch: &Launch) -> Value {
    let (code, stdout, stderr) = Meterd::cli(launch, &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn a_month_of_receipts_is_archived_and_exported_while_events_are_accepted() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    for day in 0..DAYS {
        let offset = day * 86_400;
        emu.set_clock_offset(offset);
        let meterd = Launch::new(dir.path(), &emu).offset(offset).start();
        // Five hours back: past its seal point (3h) and inside the deadline (12h), so the hour is
        // sealed at the next checkpoint and submitted at once.
        let hour = hour_start(5) + offset;
        let events: Vec<Value> = (0..CUSTOMERS)
            .map(|n| {
                let mut e = event(&customer(n), "requests", n + 1);
                e["timestamp"] = json!(hour + 1);
                e
            })
            .collect();
        let replies = meterd.send(&events);
        assert!(replies.iter().all(|r| r["ok"] == true), "day {day}: {replies:?}");
        let total = ((day + 1) as u64 * CUSTOMERS) as f64;
        meterd.wait_metric("meterd_records{state=\"accepted\"}", total, Duration::from_secs(30));
        assert_eq!(meterd.get("/readyz"), (200, "ready\n".to_string()));
        assert!(meterd.signal("TERM").success());
    }

    let offset = DAYS * 86_400;
    emu.set_clock_offset(offset);
    let launch = || Launch::new(dir.path(), &emu).offset(offset);
    let meterd = launch().start();
    let receipts = (DAYS as u64 * CUSTOMERS) as usize;
    // The receipts of the last day move to the archive at this start.
    let moved = meterd.wait_log("moved receipts to the receipts archive", Duration::from_secs(10));
    assert_eq!(moved["records"], CUSTOMERS);
    assert_eq!(meterd.metric("meterd_records{state=\"accepted\"}"), receipts as f64);
    let archive = dir.path().join("data/receipts");
    let files: Vec<_> = std::fs::read_dir(&archive).unwrap().map(|e| e.unwrap().path()).collect();
    let on_disk: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    // One file per UTC day the receipts settled on (a day's run may cross midnight).
    assert!((DAYS as usize..=2 * DAYS as usize).contains(&files.len()), "{files:?}");
    meterd.wait_metric("meterd_receipts_archive_bytes", on_disk as f64, Duration::from_secs(10));
    let online = status(&launch());
    assert_eq!(online["records"]["accepted"], receipts);
    assert_eq!(online["archive_bytes"], on_disk);

    // Still accepting: a new event now, with a month of receipts kept.
    let now_event = event(&customer(0), "requests", 1);
    assert_eq!(meterd.send(&[now_event])[0]["ok"], true);
    assert_eq!(meterd.get("/readyz"), (200, "ready\n".to_string()));

    let expected: BTreeSet<String> =
        emu.records().iter().map(|r| r["metering_record_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(expected.len(), receipts);
    let ids = |rows: &[Value]| -> BTreeSet<String> {
        rows.iter().map(|r| r["metering_record_id"].as_str().unwrap().to_string()).collect()
    };
    let rows = export(&launch());
    assert_eq!(rows.len(), receipts, "each receipt once");
    assert_eq!(ids(&rows), expected);
    assert!(rows.iter().all(|r| r["state"] == "accepted"));
    assert!(meterd.signal("TERM").success());

    let offline = export(&launch());
    assert_eq!(offline, rows);
    let stopped = status(&launch());
    assert_eq!(stopped["records"]["accepted"], receipts);
    assert_eq!(stopped["archive_bytes"], on_disk);
}
