//! A damaged data dir: truncated, bit-flipped or zeroed sled and journal files. meterd must either
//! recover every acknowledged event intact or refuse to start, naming the file and the way out; it
//! must never start silently without acknowledged data. A torn write at the journal's end, never
//! acknowledged, is cut off.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{Emu, Launch, Meterd, event};
use serde_json::json;

const EVENTS: u64 = 3000;
const CUSTOMERS: usize = 10;

/// Fills a data dir with acknowledged events and kills meterd with SIGKILL; returns the
/// acknowledged quantity per customer.
/// With a tag of `padding` bytes on each event (large events fill journal
/// segments, which checkpoints then remove).
fn acknowledged_with(dir: &Path, emu: &Emu, padding: usize) -> BTreeMap<String, u64> {
    let meterd = Launch::new(dir, emu).env("METERD_STORAGE__JOURNAL_SEGMENT_SIZE", "2097152").start();
    let mut expected = BTreeMap::new();
    let events: Vec<_> = (0..EVENTS)
        .map(|n| {
            let customer = format!("{:012}", 700_000_000_000 + n % 10);
            *expected.entry(customer.clone()).or_default() += n % 5 + 1;
            let mut e = event(&customer, "requests", n % 5 + 1);
            e["id"] = json!(format!("c-{n}"));
            if padding > 0 {
                // Tag values hold at most 256 characters: several tags of one tag set.
                let value = "p".repeat(250);
                let tags: serde_json::Map<String, serde_json::Value> =
                    (0..padding.div_ceil(250)).map(|t| (format!("pad{t}"), json!(value))).collect();
                e["tags"] = tags.into();
            }
            e
        })
        .collect();
    for chunk in events.chunks(500) {
        let replies = meterd.send(chunk);
        assert!(replies.iter().all(|r| r["ok"] == true), "{:?}", replies.iter().find(|r| r["ok"] != true));
        std::thread::sleep(Duration::from_millis(150));
    }
    if padding > 0 {
        // Large events filled segments: wait until a checkpoint has removed the first one, however
        // slowly checkpoints come on a busy machine.
        let start = Instant::now();
        while segment(dir).exists() {
            assert!(start.elapsed() < Duration::from_secs(30), "no checkpoint removed the first segment");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    meterd.kill9();
    expected
}

/// What meterd did with the damaged data dir: refused to start (its stderr), or started, sealed
/// everything and billed these totals.
enum Outcome {
    Refused(String),
    Billed(BTreeMap<String, u64>),
}

fn restart(dir: &Path, emu: &Emu) -> Outcome {
    let launch = Launch::new(dir, emu).offset(3 * 3600).env("METERD_SUBMIT__SEAL_DELAY", "5m");
    let mut meterd = Meterd::spawn(launch);
    let start = Instant::now();
    loop {
        if meterd.logs().iter().any(|l| l.contains("meterd ready")) {
            break;
        }
        if let Some(code) = meterd.exited() {
            assert_ne!(code, Some(0));
            return Outcome::Refused(meterd.logs().join("\n"));
        }
        assert!(start.elapsed() < Duration::from_secs(30), "neither ready nor refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One record per customer once everything is sealed and sent; fewer if data was lost.
    let records = emu.wait_records(CUSTOMERS, Duration::from_secs(30));
    let mut billed = BTreeMap::new();
    for r in records {
        *billed.entry(r["customer_aws_account_id"].as_str().unwrap().to_string()).or_default() +=
            r["quantity"].as_u64().unwrap();
    }
    Outcome::Billed(billed)
}

fn db_file(dir: &Path) -> std::path::PathBuf {
    dir.join("data/outbox/db")
}

/// The length of the written part of sled's db file (it is preallocated in segments).
fn written_len(path: &Path) -> u64 {
    let mut bytes = Vec::new();
    std::fs::File::open(path).unwrap().read_to_end(&mut bytes).unwrap();
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i as u64 + 1)
}

fn flip(path: &Path, at: u64) {
    let mut file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut byte).unwrap();
    byte[0] ^= 0x10;
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&byte).unwrap();
}

/// What a damage must lead to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Refused to start with this in its message (which names the file and the way out).
    Refused(&'static str),
    /// Everything acknowledged is billed.
    Recovered,
}

fn check(
    name: &str,
    outcome: Outcome,
    expected: &BTreeMap<String, u64>,
    expect: Expect,
    dir: &Path,
    emu: &Emu,
) {
    match outcome {
        Outcome::Refused(logs) => {
            let Expect::Refused(message) = expect else { panic!("{name}: refused to start:\n{logs}") };
            let message = message.replace("{data}", &dir.join("data").display().to_string());
            assert!(logs.contains(&message), "{name}: wanted {message:?} in:\n{logs}");
            assert!(
                logs.contains("\\\"A damaged outbox\\\" in docs/operations.md"),
                "{name}: the way out:\n{logs}"
            );
            // The way out starts with exporting what is left: the offline commands still read it.
            let (code, out, err) =
                Meterd::cli(&Launch::new(dir, emu), &["receipts", "export", "--since", "0"]);
            assert_eq!(code, 0, "{name}: offline export of a damaged outbox:\n{err}");
            assert!(out.starts_with("id,hour,"), "{name}: {out}");
            assert!(err.contains("meterd: warning: ") || err.contains("meterd: "), "{name}: {err}");
        }
        Outcome::Billed(billed) => {
            assert_eq!(expect, Expect::Recovered, "{name}: started");
            assert_eq!(&billed, expected, "{name}: started, so every acknowledged event must be billed");
        }
    }
    println!("{name}: {expect:?}");
}

/// Each damage gets the data dir and the written length of the file it damages.
type Damage = Box<dyn Fn(&Path, u64)>;

fn run(cases: Vec<(String, Expect, Damage)>, file: fn(&Path) -> std::path::PathBuf, padding: usize) {
    for (name, expect, damage) in cases {
        let emu = Emu::start(|_| {});
        let dir = tempfile::tempdir().unwrap();
        let expected = acknowledged_with(dir.path(), &emu, padding);
        damage(dir.path(), written_len(&file(dir.path())));
        check(&name, restart(dir.path(), &emu), &expected, expect, dir.path(), &emu);
    }
}

/// sled holds only checkpoints now: whatever it loses, the journal since the checkpoint it kept
/// still holds (no segment was removed in this run), so everything is billed.
#[test]
fn damaged_sled_files_are_recovered_from_the_journal() {
    let mut cases: Vec<(String, Expect, Damage)> = Vec::new();
    for percent in [10u64, 30, 50, 70, 90, 99] {
        cases.push((
            format!("bit flip at {percent}% of db"),
            Expect::Recovered,
            Box::new(move |dir: &Path, written: u64| flip(&db_file(dir), written * percent / 100)),
        ));
    }
    for percent in [50u64, 90] {
        cases.push((
            format!("db truncated at {percent}%"),
            Expect::Recovered,
            Box::new(move |dir: &Path, written: u64| truncate(&db_file(dir), written * percent / 100)),
        ));
    }
    cases.push((
        "snapshot files removed".into(),
        Expect::Recovered,
        Box::new(|dir: &Path, _| {
            for entry in std::fs::read_dir(dir.join("data/outbox")).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().unwrap().to_string_lossy().starts_with("snap.") {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }),
    ));
    cases.push((
        "conf truncated".into(),
        Expect::Recovered,
        Box::new(|dir: &Path, _| std::fs::write(dir.join("data/outbox/conf"), b"").unwrap()),
    ));
    run(cases, db_file, 0);
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

/// The journal's only segment in a run that filled none.
fn segment(dir: &Path) -> std::path::PathBuf {
    dir.join("data/journal/0000000000000000.seg")
}

const LOST: &str = "has lost acknowledged data: it holds events up to log sequence";
const DAMAGED: &str = "the journal segment {data}/journal/0000000000000000.seg is damaged at offset";

#[test]
fn a_damaged_journal_is_refused_and_a_torn_tail_is_cut_off() {
    let mut cases: Vec<(String, Expect, Damage)> = Vec::new();
    for percent in [20u64, 50, 80] {
        cases.push((
            format!("bit flip at {percent}% of the journal"),
            Expect::Refused(DAMAGED),
            Box::new(move |dir: &Path, written: u64| flip(&segment(dir), written * percent / 100)),
        ));
    }
    cases.push((
        "journal truncated at 60%".into(),
        Expect::Refused(LOST),
        Box::new(|dir: &Path, written: u64| truncate(&segment(dir), written * 60 / 100)),
    ));
    cases.push((
        "the journal's last 100 bytes zeroed".into(),
        Expect::Refused(LOST),
        Box::new(|dir: &Path, written: u64| {
            let file = OpenOptions::new().write(true).open(segment(dir)).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &[0; 100], written - 100).unwrap();
        }),
    ));
    cases.push((
        "journal removed".into(),
        Expect::Refused(LOST),
        Box::new(|dir: &Path, _| std::fs::remove_dir_all(dir.join("data/journal")).unwrap()),
    ));
    cases.push((
        "a torn write after the last acknowledged record".into(),
        Expect::Recovered,
        Box::new(|dir: &Path, written: u64| {
            // Half a record: a length and a checksum that its bytes do not match.
            let at = written.next_multiple_of(8);
            let file = OpenOptions::new().write(true).open(segment(dir)).unwrap();
            let torn = [200u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
            std::os::unix::fs::FileExt::write_all_at(&file, &torn, at).unwrap();
        }),
    ));
    run(cases, segment, 0);
}

/// With large events the journal fills segments, and checkpoints remove them: sled must then
/// keep its checkpoint, and one it lost is refused (the watermark names the checkpoint made
/// durable).
#[test]
fn a_lost_checkpoint_whose_journal_was_removed_is_refused() {
    let cases: Vec<(String, Expect, Damage)> = vec![(
        "db truncated at 20% after journal segments were removed".into(),
        Expect::Refused("has lost acknowledged data: its checkpoint holds events up to log sequence"),
        Box::new(|dir: &Path, written: u64| {
            assert!(!segment(dir).exists(), "the first journal segment was removed");
            truncate(&db_file(dir), written * 20 / 100)
        }),
    )];
    run(cases, db_file, 1250);
}

/// An open-hours chunk whose checksum holds but whose content does not decode (written by a
/// meterd with another format, say) stops the start, naming it: a start that went on would
/// checkpoint the open hours without that chunk's records, and they would be gone. Once the
/// file is fixed (here: put back), everything acknowledged is billed.
#[test]
fn an_open_hours_chunk_that_does_not_decode_stops_the_start() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let expected = acknowledged_with(dir.path(), &emu, 0);
    // A clean stop after the kill's replay writes the open hours to their files.
    let meterd = Launch::new(dir.path(), &emu).start();
    assert!(meterd.signal("TERM").success());
    let open_dir = dir.path().join("data/open");
    let file = std::fs::read_dir(&open_dir).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let good = std::fs::read(&file).unwrap();
    let len = u32::from_le_bytes(good[..4].try_into().unwrap()) as usize;
    let mut bad = good.clone();
    bad[8..8 + len].fill(0xff);
    let crc = crc32c::crc32c(&bad[8..8 + len]);
    bad[4..8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&file, &bad).unwrap();
    let Outcome::Refused(logs) = restart(dir.path(), &emu) else {
        panic!("started on a chunk it cannot read")
    };
    assert!(logs.contains("the open hours cannot be restored"), "{logs}");
    std::fs::write(&file, &good).unwrap();
    check("the chunk put back", restart(dir.path(), &emu), &expected, Expect::Recovered, dir.path(), &emu);
}
