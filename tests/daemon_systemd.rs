//! What systemd and the host see: socket activation across a restart, sd_notify readiness and
//! watchdog, SIGHUP reload (valid and invalid), and the peer-uid check on the ingest socket.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::time::Duration;

use common::daemon::{Emu, Launch, event, find};
use common::hour_start;
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;

fn lines(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn read_replies(stream: &UnixStream, count: usize) -> Vec<Value> {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(stream);
    (0..count)
        .map(|_| {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("reply is JSON: {line:?}"))
        })
        .collect()
}

fn timed(customer: &str, quantity: u64) -> Value {
    let mut e = event(customer, "requests", quantity);
    e["timestamp"] = json!(hour_start(0) + 1);
    e
}

#[test]
fn socket_activation_keeps_clients_waiting_across_a_restart() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("meterd.sock");
    // The harness plays systemd: it binds the socket and keeps it open across restarts.
    let listener = UnixListener::bind(&socket).unwrap();

    // Sent before meterd has started: the connection waits in the kernel's backlog.
    let mut early = UnixStream::connect(&socket).unwrap();
    early.write_all(lines(&[timed("100000000001", 3), timed("100000000001", 4)]).as_bytes()).unwrap();
    let meterd = Launch::new(dir.path(), &emu).activated(&listener).start();
    let replies = read_replies(&early, 2);
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    assert!(meterd.wait_log("socket activation", Duration::from_secs(1))["level"] == "INFO");
    assert!(meterd.signal("TERM").success());
    assert!(socket.exists(), "a socket systemd passed stays when meterd stops");

    // Sent while no meterd runs at all.
    let mut between = UnixStream::connect(&socket).unwrap();
    between.write_all(lines(&[timed("100000000002", 5)]).as_bytes()).unwrap();
    let meterd = Launch::new(dir.path(), &emu).activated(&listener).start();
    let replies = read_replies(&between, 1);
    assert_eq!(replies[0]["ok"], true, "{replies:?}");
    assert!(meterd.signal("TERM").success());

    drop(listener);
    emu.set_clock_offset(LATER);
    let _meterd = Launch::new(dir.path(), &emu).offset(LATER).start();
    let records = emu.wait_records(2, Duration::from_secs(20));
    assert_eq!(find(&records, "100000000001", "requests", hour_start(0)).unwrap()["quantity"], 7);
    assert_eq!(find(&records, "100000000002", "requests", hour_start(0)).unwrap()["quantity"], 5);
}

#[test]
fn readiness_watchdog_and_stopping_are_notified() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let receive = || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let meterd = Launch::new(dir.path(), &emu)
        .env("NOTIFY_SOCKET", notify_path.to_str().unwrap())
        .env("WATCHDOG_USEC", "200000")
        .start();
    assert_eq!(receive(), "READY=1\nSTATUS=accepting events");
    for _ in 0..3 {
        assert_eq!(receive(), "WATCHDOG=1");
    }
    assert!(meterd.signal("TERM").success());
    // Everything sent after the pings above: maybe more pings, and last STOPPING=1.
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut rest = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = notify.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(rest.last().map(String::as_str), Some("STOPPING=1\nSTATUS=stopping"), "{rest:?}");
    assert!(rest[..rest.len() - 1].iter().all(|m| m == "WATCHDOG=1"), "{rest:?}");
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meterd.toml");
    std::fs::write(&file, "[aws]\ndimensions = [\"requests\"]\n").unwrap();
    let meterd = Launch::new(dir.path(), &emu).arg("--config").arg(file.to_str().unwrap()).start();
    let codes = |replies: Vec<Value>| -> Vec<String> {
        replies.iter().map(|r| r["error"].as_str().unwrap_or("ok").to_string()).collect()
    };
    let storage = event("111111111111", "storage", 1);
    assert_eq!(codes(meterd.send(std::slice::from_ref(&storage))), ["unknown_dimension"]);

    std::fs::write(&file, "[aws]\ndimensions = [\"requests\", \"storage\"]\n[log]\nlevel = \"debug\"\n")
        .unwrap();
    meterd.signal_only("HUP");
    let reloaded = meterd.wait_log("configuration reloaded", Duration::from_secs(10));
    assert_eq!(reloaded["applied"], "[\"aws.dimensions\", \"log.level\"]");
    assert_eq!(codes(meterd.send(std::slice::from_ref(&storage))), ["ok"]);
    assert_eq!(meterd.metric("meterd_config_reloads_total{result=\"ok\"}"), 1.0);

    std::fs::write(&file, "[aws]\ndimensions = []\n[submit]\nlate_events = \"drop\"\n").unwrap();
    meterd.signal_only("HUP");
    let refused = meterd.wait_log("reload refused", Duration::from_secs(10));
    assert_eq!(refused["level"], "ERROR");
    assert!(refused["message"].as_str().unwrap().contains("submit.late_events"), "{refused}");
    meterd.wait_metric("meterd_config_reloads_total{result=\"invalid\"}", 1.0, Duration::from_secs(5));
    // The old allowlist still holds: "storage" yes, anything else no.
    let other = event("111111111111", "other", 1);
    assert_eq!(codes(meterd.send(&[storage, other])), ["ok", "unknown_dimension"]);

    // A key that needs a restart is named, not applied.
    std::fs::write(
        &file,
        "[aws]\ndimensions = [\"requests\", \"storage\"]\n[ingest]\nmax_line_bytes = 2048\n",
    )
    .unwrap();
    meterd.signal_only("HUP");
    let warned = meterd.wait_log("take effect only after a restart", Duration::from_secs(10));
    assert_eq!(warned["keys"], "[\"ingest.max_line_bytes\"]");
}

/// This process's uid, from /proc.
fn own_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn only_allowed_uids_may_send() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let other_uid = (own_uid() + 4242).to_string();
    let meterd =
        Launch::new(dir.path(), &emu).env("METERD_INGEST__ALLOWED_UIDS", &format!("[{other_uid}]")).start();
    let replies = meterd.send(&[event("111111111111", "requests", 1)]);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["error"], "permission_denied");
    assert_eq!(replies[0]["message"], format!("uid {} may not send events (ingest.allowed_uids)", own_uid()));
    assert_eq!(meterd.metric("meterd_connections_refused_total"), 1.0);
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 0.0);
    assert!(meterd.signal("TERM").success());

    let allowed = format!("[{other_uid}, {}]", own_uid());
    let meterd = Launch::new(dir.path(), &emu).env("METERD_INGEST__ALLOWED_UIDS", &allowed).start();
    assert_eq!(meterd.send(&[event("111111111111", "requests", 1)])[0]["ok"], true);
}
