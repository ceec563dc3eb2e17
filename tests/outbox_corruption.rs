//! A damaged outbox: truncated or bit-flipped sled files. meterd must either recover every
//! acknowledged event intact or refuse to start, naming the file and the way out; it must never
//! start silently without acknowledged data.

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
fn acknowledged(dir: &Path, emu: &Emu) -> BTreeMap<String, u64> {
    let meterd = Launch::new(dir, emu).start();
    let mut expected = BTreeMap::new();
    let events: Vec<_> = (0..EVENTS)
        .map(|n| {
            let customer = format!("{:012}", 700_000_000_000 + n % 10);
            *expected.entry(customer.clone()).or_default() += n % 5 + 1;
            let mut e = event(&customer, "requests", n % 5 + 1);
            e["id"] = json!(format!("c-{n}"));
            e
        })
        .collect();
    for chunk in events.chunks(500) {
        assert!(meterd.send(chunk).iter().all(|r| r["ok"] == true));
        std::thread::sleep(Duration::from_millis(150));
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
    /// sled's log lost a stretch: the watermark shows acknowledged events are missing.
    Refused,
    /// sled rebuilds what was damaged from its log: everything is billed.
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
            assert_eq!(expect, Expect::Refused, "{name}: refused to start:\n{logs}");
            let db = dir.join("data/outbox/db").display().to_string();
            assert!(
                logs.contains(&format!("the outbox at {db} has lost acknowledged data")),
                "{name}:\n{logs}"
            );
            assert!(
                logs.contains("\\\"A damaged outbox\\\" in docs/operations.md"),
                "{name}: the way out:\n{logs}"
            );
            // The way out starts with exporting what is left: the offline commands still read it.
            let (code, out, err) =
                Meterd::cli(&Launch::new(dir, emu), &["receipts", "export", "--since", "0"]);
            assert_eq!(code, 0, "{name}: offline export of a damaged outbox:\n{err}");
            assert!(out.starts_with("id,hour,"), "{name}: {out}");
            assert!(err.contains("meterd: warning: the outbox at"), "{name}: {err}");
        }
        Outcome::Billed(billed) => {
            assert_eq!(expect, Expect::Recovered, "{name}: started");
            assert_eq!(&billed, expected, "{name}: started, so every acknowledged event must be billed");
        }
    }
    println!("{name}: {expect:?}");
}

#[test]
fn damaged_sled_files_are_recovered_intact_or_refused() {
    // Each damage gets the data dir and the written length of its db file.
    type Damage = Box<dyn Fn(&Path, u64)>;
    let mut cases: Vec<(String, Expect, Damage)> = Vec::new();
    for percent in [10u64, 30, 50, 70, 90, 99] {
        cases.push((
            format!("bit flip at {percent}% of db"),
            Expect::Refused,
            Box::new(move |dir: &Path, written: u64| flip(&db_file(dir), written * percent / 100)),
        ));
    }
    for percent in [50u64, 90] {
        cases.push((
            format!("db truncated at {percent}%"),
            Expect::Refused,
            Box::new(move |dir: &Path, written: u64| {
                let file = OpenOptions::new().write(true).open(db_file(dir)).unwrap();
                file.set_len(written * percent / 100).unwrap()
            }),
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
    for (name, expect, damage) in cases {
        let emu = Emu::start(|_| {});
        let dir = tempfile::tempdir().unwrap();
        let expected = acknowledged(dir.path(), &emu);
        damage(dir.path(), written_len(&db_file(dir.path())));
        check(&name, restart(dir.path(), &emu), &expected, expect, dir.path(), &emu);
    }
}
