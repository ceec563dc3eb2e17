//! Every task of a running meterd is supervised: one that panics or returns before shutdown is an
//! ERROR that stops meterd with a non-zero exit, so that systemd, ECS or Kubernetes restart it
//! instead of leaving it acknowledging events it no longer bills. Replay makes the restart safe.

mod common;

use std::time::Duration;

use common::daemon::{Emu, Launch, event};
use serde_json::json;

const FAULT: &str = "METERD_TEST_FAIL_TASK";

#[test]
fn a_task_that_panics_or_returns_stops_meterd_with_exit_1() {
    let emu = Emu::start(|_| {});
    let cases = [
        ("metrics", "metrics", "panicked"),
        ("commit", "commit", "panicked"),
        ("submit", "submit", "panicked"),
        ("ticker", "ticker", "panicked"),
        ("ingest", "ingest", "panicked"),
        ("admin", "admin", "panicked"),
        ("reload:return", "reload", "returned"),
        ("submit:return", "submit", "returned"),
    ];
    for (fault, task, how) in cases {
        let dir = tempfile::tempdir().unwrap();
        let meterd = Launch::new(dir.path(), &emu).env(FAULT, fault).start();
        let line = meterd.wait_log("while meterd was running", Duration::from_secs(30));
        assert_eq!(line["level"], "ERROR", "{fault}: {line}");
        assert_eq!(line["task"], task, "{fault}: {line}");
        let message = line["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("the {task} task {how}")), "{fault}: {message}");
        let status = meterd.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "{fault}: meterd must exit non-zero");
    }
}

#[test]
fn after_a_dead_task_the_restart_replays_every_acknowledged_event() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..3)
        .map(|i| {
            let mut e = event("111122223333", "requests", 5);
            e["id"] = json!(format!("e-{i}"));
            e
        })
        .collect();
    let meterd =
        Launch::new(dir.path(), &emu).env(FAULT, "submit").env("METERD_TEST_FAIL_AFTER_MS", "3000").start();
    let replies = meterd.send(&events);
    assert!(replies.iter().all(|r| r["ok"] == true && r.get("duplicate").is_none()), "{replies:?}");
    meterd.wait_log("the submit task panicked", Duration::from_secs(30));
    assert_eq!(meterd.wait_exit(Duration::from_secs(30)).code(), Some(1));

    let meterd = Launch::new(dir.path(), &emu).start();
    let replies = meterd.send(&events);
    assert_eq!(replies.len(), 3);
    for reply in replies {
        assert_eq!(reply["duplicate"], true, "replayed, so known: {reply}");
    }
    assert_eq!(meterd.metric("meterd_records{state=\"open\"}"), 1.0);
}
