//! Inline commits (src/commit/inline.rs): a client sending one event at a time has it logged,
//! synced and answered on its own connection's thread; concurrent clients go through the commit
//! queue as one group. Either way every ok survives kill -9, is billed once, and a connection's
//! events are judged in the order it sent them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::hour_start;
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;

/// A connection that sends one line and waits for its reply before the next.
struct Lockstep {
    stream: BufReader<UnixStream>,
}

impl Lockstep {
    fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connect to the ingest socket");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self { stream: BufReader::new(stream) }
    }

    fn send(&mut self, event: &Value) -> Value {
        writeln!(self.stream.get_mut(), "{event}").unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("a reply");
        serde_json::from_str(&line).expect("a JSON reply")
    }
}

fn in_this_hour(customer: &str, quantity: u64, id: &str) -> Value {
    let mut e = event(customer, "requests", quantity);
    e["timestamp"] = json!(hour_start(0) + 1);
    e["id"] = json!(id);
    e
}

/// The `meterd_barriers_total` samples, by thread.
fn barriers(meterd: &Meterd) -> (f64, f64, f64) {
    let (_, text) = meterd.get("/metrics");
    let sample = |by: &str| {
        let prefix = format!("meterd_barriers_total{{by=\"{by}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.parse().unwrap())
    };
    (sample("connection"), sample("commit"), sample("sync"))
}

/// Restarts `LATER`, when the hour is sealed and submitted, and checks each customer's total.
fn assert_billed(emu: &Emu, dir: &Path, totals: &[(&str, u64)]) {
    emu.set_clock_offset(LATER);
    let meterd = Launch::new(dir, emu).offset(LATER).start();
    let records = emu.wait_records(totals.len(), Duration::from_secs(30));
    assert_eq!(records.len(), totals.len(), "{records:?}");
    for (customer, total) in totals {
        let record = find(&records, customer, "requests", hour_start(0)).expect("record present");
        assert_eq!(record["quantity"], json!(total), "{customer}");
    }
    assert!(!emu.statuses().contains_key("DuplicateRecord"));
    drop(meterd);
}

#[test]
fn a_lone_client_commits_on_its_connection_and_every_ok_survives_kill9() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    // No checkpoint tick after the first (a checkpoint holds the committer, and an event that
    // arrives meanwhile is queued).
    let meterd = Launch::new(dir.path(), &emu).env("METERD_STORAGE__CHECKPOINT_INTERVAL", "60s").start();
    let mut client = Lockstep::connect(&dir.path().join("meterd.sock"));
    // The first event finds no history of lone events and goes through the queue.
    assert_eq!(client.send(&in_this_hour("111111111111", 1, "first")), json!({"ok": true, "id": "first"}));
    // The ticker's first tick comes at once, and its checkpoint may still be running.
    std::thread::sleep(Duration::from_millis(300));
    let before = barriers(&meterd);
    for i in 0..40u64 {
        let reply = client.send(&in_this_hour("111111111111", i % 5 + 1, &format!("e{i}")));
        assert_eq!(reply, json!({"ok": true, "id": format!("e{i}")}));
    }
    let after = barriers(&meterd);
    // Every later one is committed on its connection's thread. A runtime with a single worker
    // is never blocked on the device: there the commit thread syncs them all.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let expected = if workers > 1 { (40.0, 0.0, 0.0) } else { (0.0, 40.0, 0.0) };
    assert_eq!((after.0 - before.0, after.1 - before.1, after.2 - before.2), expected);
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 41.0);
    meterd.kill9();
    // 1, then 40 events with quantities 1..=5 in turn: 8 rounds of 15.
    assert_billed(&emu, dir.path(), &[("111111111111", 121)]);
}

#[test]
fn concurrent_clients_keep_their_order_and_are_billed_once() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let socket = dir.path().join("meterd.sock");
    let clients: Vec<_> = (0..12u64)
        .map(|c| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let customer = format!("{}", 200_000_000_000 + c);
                let mut client = Lockstep::connect(&socket);
                let mut replies = Vec::new();
                for i in 0..30u64 {
                    replies.push(client.send(&in_this_hour(&customer, 2, &format!("c{c}-{i}"))));
                    if i % 10 == 9 {
                        // The same id again, then with another quantity: a duplicate, then a
                        // conflict, judged after the event they repeat.
                        replies.push(client.send(&in_this_hour(&customer, 2, &format!("c{c}-{i}"))));
                        replies.push(client.send(&in_this_hour(&customer, 3, &format!("c{c}-{i}"))));
                    }
                }
                replies
            })
        })
        .collect();
    for (c, client) in clients.into_iter().enumerate() {
        let replies = client.join().unwrap();
        assert_eq!(replies.len(), 36);
        let mut at = 0;
        for i in 0..30 {
            let id = format!("c{c}-{i}");
            assert_eq!(replies[at], json!({"ok": true, "id": id}), "client {c}");
            at += 1;
            if i % 10 == 9 {
                assert_eq!(replies[at], json!({"ok": true, "id": id, "duplicate": true}), "client {c}");
                assert_eq!(replies[at + 1]["error"], "id_conflict", "client {c}: {}", replies[at + 1]);
                at += 2;
            }
        }
    }
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 360.0);
    assert_eq!(meterd.metric("meterd_events_duplicate_total"), 36.0);
    assert_eq!(meterd.metric("meterd_events_rejected_total{reason=\"id_conflict\"}"), 36.0);
    meterd.kill9();
    let customers: Vec<String> = (0..12u64).map(|c| format!("{}", 200_000_000_000 + c)).collect();
    let totals: Vec<(&str, u64)> = customers.iter().map(|c| (c.as_str(), 60)).collect();
    assert_billed(&emu, dir.path(), &totals);
}
