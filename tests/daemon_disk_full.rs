//! A disk that fills up: a restart while it is still full (what `Restart=on-failure` does) must
//! not leave the outbox unable to start once space is back, and free space below
//! `storage.min_free_bytes` makes the outbox full exactly like `storage.max_bytes` does.
//!
//! These tests mount a small tmpfs and so need root (CAP_SYS_ADMIN), as `daemon_storage.rs` does.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::hour_start;
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;
const CUSTOMERS: u64 = 10;

/// A data dir on a small tmpfs of its own, under a temporary dir; unmounted when dropped.
struct SmallDisk {
    data: PathBuf,
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&data)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "this test mounts a small tmpfs to fill the disk, and needs root (CAP_SYS_ADMIN)"
        );
        SmallDisk { data, dir }
    }

    /// Where the launched meterd's files go (`data` is its data dir).
    fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.data).status();
    }
}

/// Bytes available to an unprivileged writer on the filesystem of `path`.
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("stat").args(["-f", "--format=%a %S"]).arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (blocks, size) = text.trim().split_once(' ').unwrap();
    blocks.parse::<u64>().unwrap() * size.parse::<u64>().unwrap()
}

/// Fills the filesystem of `dir` to its last byte with `dir/filler`, as another process would.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for size in [1 << 20, 4096, 1] {
        while matches!(file.write(&chunk[..size]), Ok(n) if n > 0) {}
    }
    assert_eq!(free_bytes(dir), 0);
    path
}

/// Leaves `free` bytes available on the filesystem of `dir` with a filler file of the right size.
fn leave_free(filler: &Path, free: u64) {
    let dir = filler.parent().unwrap();
    let now = free_bytes(dir);
    let current = std::fs::metadata(filler).map(|m| m.len()).unwrap_or(0);
    let file = std::fs::OpenOptions::new().create(true).append(true).open(filler).unwrap();
    if now > free {
        // set_len leaves a hole on tmpfs; writing allocates.
        let mut file = file;
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = now - free;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
    } else {
        file.set_len(current.saturating_sub(free - now)).unwrap();
    }
    let after = free_bytes(dir);
    assert!(after.abs_diff(free) < 256 * 1024, "wanted {free} bytes free, have {after}");
}

/// `snap.*.generating` files in the outbox: sled's snapshots that were never finished.
fn unfinished_snapshots(data: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(data.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".generating"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    out.sort();
    out
}

/// Sends `count` events of quantity 1..=3 over [`CUSTOMERS`] customers into the current hour, all
/// acknowledged; adds them to `totals`.
fn send_acked(meterd: &Meterd, tag: &str, count: u64, totals: &mut BTreeMap<String, u64>) {
    let events: Vec<Value> = (0..count)
        .map(|i| {
            let customer = format!("{}", 400_000_000_000 + i % CUSTOMERS);
            *totals.entry(customer.clone()).or_default() += 1 + i % 3;
            let mut e = event(&customer, "requests", 1 + i % 3);
            e["timestamp"] = json!(hour_start(0) + 1);
            e["id"] = json!(format!("{tag}-{i}"));
            e
        })
        .collect();
    let replies = meterd.send(&events);
    assert!(replies.iter().all(|r| r["ok"] == true), "{:?}", replies.iter().find(|r| r["ok"] != true));
}

fn assert_billed(emu: &Emu, totals: &BTreeMap<String, u64>) {
    let records = emu.wait_records(totals.len(), Duration::from_secs(30));
    assert_eq!(records.len(), totals.len());
    for (customer, total) in totals {
        let record = find(&records, customer, "requests", hour_start(0)).unwrap();
        assert_eq!(record["quantity"], json!(total), "{customer}");
    }
    assert!(!emu.statuses().contains_key("DuplicateRecord"));
}

/// The attack's sequence: meterd has run (twice, so that sled's active segment is already
/// allocated to its end), the disk fills up completely, a restart meets the full disk and fails,
/// then space comes back. The restart must fail without writing into the outbox, and the start
/// after it must replay and bill everything acknowledged.
#[test]
fn a_restart_on_a_full_disk_fails_cleanly_and_starts_once_space_is_back() {
    let emu = Emu::start(|_| {});
    let disk = SmallDisk::mount("96m");
    let (dir, data) = (disk.root(), disk.data.as_path());
    let mut totals = BTreeMap::new();
    let meterd = Launch::new(dir, &emu).start();
    send_acked(&meterd, "a", 300, &mut totals);
    assert!(meterd.signal("TERM").success());
    let meterd = Launch::new(dir, &emu).start();
    send_acked(&meterd, "b", 300, &mut totals);
    meterd.kill9();

    let filler = fill(data);
    let (status, stderr) = Meterd::run_to_end(Launch::new(dir, &emu));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let leftovers = unfinished_snapshots(data);
    eprintln!("after the start on a full disk: unfinished snapshots {leftovers:?}");

    std::fs::remove_file(&filler).unwrap();
    emu.set_clock_offset(LATER);
    let meterd = Launch::new(dir, &emu).offset(LATER).start();
    assert_eq!(meterd.get("/readyz").0, 200);
    assert_billed(&emu, &totals);

    // The failed start named the cause and wrote nothing sled would trip over later.
    assert!(
        stderr.contains("storage.min_free_bytes") && stderr.contains("bytes are free on the filesystem of"),
        "{stderr}"
    );
    assert_eq!(leftovers, []);
}

/// What sled leaves when its snapshot write is cut short (a full disk at start, or a crash): an
/// empty or partial `snap.<lsn>.generating`. sled reads the newest snapshot file it finds, so such
/// a file made every later start fail with "Read corrupted data" although nothing was damaged.
#[test]
fn an_unfinished_snapshot_file_does_not_stop_meterd() {
    let emu = Emu::start(|_| {});
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let mut totals = BTreeMap::new();
    let meterd = Launch::new(dir, &emu).start();
    send_acked(&meterd, "a", 300, &mut totals);
    assert!(meterd.signal("TERM").success());

    // Empty, as a start on a full disk leaves it.
    let empty = data.join("outbox").join("snap.7FFFFFFFFFFFFFF0.generating");
    File::create(&empty).unwrap();
    let meterd = Launch::new(dir, &emu).start();
    assert!(!empty.exists());
    send_acked(&meterd, "b", 300, &mut totals);
    meterd.kill9();

    // Partial: the first bytes of a real snapshot, as a write cut short by ENOSPC leaves it.
    let finished: Vec<PathBuf> = std::fs::read_dir(data.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("snap."))
        .collect();
    let newest = finished.iter().max().expect("sled wrote a snapshot");
    let bytes = std::fs::read(newest).unwrap();
    let partial = data.join("outbox").join("snap.7FFFFFFFFFFFFFF1.generating");
    std::fs::write(&partial, &bytes[..bytes.len() / 2]).unwrap();
    emu.set_clock_offset(LATER);
    let meterd = Launch::new(dir, &emu).offset(LATER).start();
    assert!(!partial.exists());
    assert_eq!(meterd.get("/readyz").0, 200);
    assert_billed(&emu, &totals);
    let removed = meterd.wait_log("removed an unfinished sled snapshot", Duration::from_secs(1));
    assert_eq!(removed["level"], "WARN");
}

fn wait_ready(meterd: &Meterd, status: u16, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let (now, body) = meterd.get("/readyz");
        if now == status {
            return body;
        }
        assert!(start.elapsed() < within, "/readyz is {now} ({body}) after {within:?}, expected {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A small disk fills long before `storage.max_bytes`: below `storage.min_free_bytes` free the
/// outbox is full, new events get `overloaded`, `/readyz` fails and an ERROR is logged; it clears
/// only once free space is back above 110 % of the limit.
#[test]
fn low_free_space_makes_the_outbox_full() {
    const MIN_FREE: u64 = 32 << 20;
    let emu = Emu::start(|_| {});
    let disk = SmallDisk::mount("64m");
    let (dir, data) = (disk.root(), disk.data.as_path());
    let mut totals = BTreeMap::new();
    let min_free = MIN_FREE.to_string();
    let meterd = Launch::new(dir, &emu).env("METERD_STORAGE__MIN_FREE_BYTES", &min_free).start();
    send_acked(&meterd, "a", 100, &mut totals);
    assert_eq!(meterd.get("/readyz"), (200, "ready\n".to_string()));

    let filler = data.join("filler");
    leave_free(&filler, MIN_FREE - (4 << 20));
    let body = wait_ready(&meterd, 503, Duration::from_secs(10));
    assert_eq!(
        body,
        "not ready: the outbox is full: its filesystem has less than storage.min_free_bytes free; \
         new events are refused\n"
    );
    let full = meterd.wait_log("free on the outbox's filesystem", Duration::from_secs(1));
    assert_eq!(full["level"], "ERROR");
    assert_eq!(full["min_free_bytes"], json!(MIN_FREE), "{full}");
    let mut e = event("400000000000", "requests", 1);
    e["timestamp"] = json!(hour_start(0) + 1);
    let replies = meterd.send(&[e.clone()]);
    assert_eq!(replies[0]["ok"], false);
    assert_eq!(replies[0]["error"], "overloaded");

    // Above the limit but within 10 % of it: still full, so readiness does not flap.
    leave_free(&filler, MIN_FREE + MIN_FREE / 20);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(meterd.get("/readyz").0, 503);
    assert_eq!(meterd.send(&[e])[0]["error"], "overloaded");

    std::fs::remove_file(&filler).unwrap();
    wait_ready(&meterd, 200, Duration::from_secs(10));
    send_acked(&meterd, "b", 100, &mut totals);
    assert!(meterd.signal("TERM").success());
    emu.set_clock_offset(LATER);
    let _meterd =
        Launch::new(dir, &emu).offset(LATER).env("METERD_STORAGE__MIN_FREE_BYTES", &min_free).start();
    assert_billed(&emu, &totals);
}

/// A checkpoint is written beside the commit thread (`src/commit/checkpoint.rs`). Here the disk
/// fills between two checkpoints, after the journal's segment was allocated: the events are still
/// acknowledged (their journal space is there), the next checkpoint cannot write its open-hours
/// file, and meterd must stop as it does for a failed write on the commit thread. The restart
/// bills every acknowledged event exactly once.
#[test]
fn a_checkpoint_failing_beside_the_commit_thread_stops_meterd_and_loses_nothing() {
    let emu = Emu::start(|_| {});
    let disk = SmallDisk::mount("96m");
    let (dir, data) = (disk.root(), disk.data.as_path());
    let mut totals = BTreeMap::new();
    let meterd = Launch::new(dir, &emu)
        .env("METERD_STORAGE__MIN_FREE_BYTES", "0")
        .env("METERD_STORAGE__JOURNAL_SEGMENT_SIZE", "8388608")
        .env("METERD_STORAGE__CHECKPOINT_INTERVAL", "200ms")
        .start();
    send_acked(&meterd, "a", 300, &mut totals);
    let filler = fill(data);
    send_acked(&meterd, "b", 300, &mut totals);
    let failed =
        meterd.wait_log("outbox checkpoint failed on the checkpoint thread", Duration::from_secs(20));
    assert!(failed.to_string().contains("No space left on device"), "{failed}");
    assert_eq!(meterd.wait_exit(Duration::from_secs(20)).code(), Some(1));

    std::fs::remove_file(&filler).unwrap();
    emu.set_clock_offset(LATER);
    let _meterd = Launch::new(dir, &emu).offset(LATER).start();
    assert_billed(&emu, &totals);
}
