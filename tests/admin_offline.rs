//! The operator's commands with meterd stopped read the data dir and never write to it: no lock
//! file rewritten, no file created, changed or removed; and a data dir that does not exist or holds
//! no outbox is an error that says so, not a new empty outbox.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::daemon::{Emu, Launch, Meterd, event};
use common::hour_start;
use serde_json::{Value, json};

/// Every file and directory under `root`: its content (files) and modification time.
fn tree(root: &Path) -> BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_dir() {
                dirs.push(path.clone());
                None
            } else {
                Some(std::fs::read(&path).unwrap())
            };
            out.insert(path, (content, meta.modified().unwrap()));
        }
    }
    out
}

#[test]
fn offline_reads_leave_the_data_dir_untouched() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let meterd = Launch::new(dir.path(), &emu).start();
    let daemon_pid = meterd.pid().to_string();
    let events: Vec<Value> = (0..20)
        .map(|i| {
            let mut e = event(&format!("{}", 500_000_000_000u64 + i % 4), "requests", 2);
            e["timestamp"] = json!(hour_start(0) + 1);
            e
        })
        .collect();
    assert!(meterd.send(&events).iter().all(|r| r["ok"] == true));
    // A crash, so that sled has a log tail to recover and would like to write a new snapshot.
    meterd.kill9();
    let before = tree(&data);
    assert_eq!(std::fs::read_to_string(data.join("meterd.lock")).unwrap(), daemon_pid);

    let launch = Launch::new(dir.path(), &emu);
    let (code, stdout, stderr) = Meterd::cli(&launch, &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["running"], false);
    assert_eq!(status["records"]["open"], 4);
    assert_eq!(status["data_dir"], json!(data.display().to_string()));
    for args in
        [&["status"][..], &["dlq", "list"], &["receipts", "export", "--since", "0", "--format", "json"]]
    {
        let (code, _, stderr) = Meterd::cli(&launch, args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_to_string(data.join("meterd.lock")).unwrap(), daemon_pid);
    assert_eq!(tree(&data), before);

    // What was read is what the daemon then starts from.
    let meterd = Launch::new(dir.path(), &emu).start();
    assert_eq!(meterd.wait_log("open hours restored", Duration::from_secs(1))["open_records"], 4);
}

#[test]
fn a_data_dir_without_an_outbox_is_an_error_and_nothing_is_created() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let launch = Launch::new(dir.path(), &emu).env("METERD_STORAGE__DATA_DIR", missing.to_str().unwrap());
    let (code, stdout, stderr) = Meterd::cli(&launch, &["status", "--config", "/dev/null"]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "meterd: there is no data dir at {} (storage.data_dir), so there is nothing to read; \
             name meterd's data dir with --config or METERD_STORAGE__DATA_DIR\n",
            missing.display()
        )
    );
    assert!(!missing.exists());

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let launch = Launch::new(dir.path(), &emu).env("METERD_STORAGE__DATA_DIR", empty.to_str().unwrap());
    for args in [&["status"][..], &["dlq", "list"], &["receipts", "export", "--since", "0"]] {
        let (code, stdout, stderr) = Meterd::cli(&launch, args);
        assert_eq!((code, stdout.as_str()), (1, ""), "{args:?}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "meterd: {} (storage.data_dir) holds no meterd outbox (no outbox/db): meterd has never \
                 run with this data dir, or it is not meterd's data dir; name meterd's data dir with \
                 --config or METERD_STORAGE__DATA_DIR\n",
                empty.display()
            )
        );
    }
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}
