//! Every `ok` means fdatasync'ed, read off the system calls: meterd runs under strace, and for
//! every acknowledged event the trace must show, in this order, the journal write that holds the
//! event, then a completed `fdatasync` (or `fsync`) of that same journal file, then the reply.
//! strace stops each traced thread at every system call until it has written the line, so the
//! order of the lines follows cause and effect between threads.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::daemon::{Emu, Launch, event};
use serde_json::{Value, json};

/// One system call: its name, its arguments as strace prints them, and the lines where it was
/// entered and where it returned.
#[derive(Debug)]
struct Call {
    name: String,
    args: String,
    entered: usize,
    returned: usize,
}

/// The calls of a `strace -f -o` file, with `<unfinished ...>` and `<... resumed>` joined.
fn calls(trace: &str) -> Vec<Call> {
    let mut pending: HashMap<&str, (usize, String, String)> = HashMap::new();
    let mut out = Vec::new();
    for (line_no, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else { continue };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            if let Some((entered, name, args)) = pending.remove(pid) {
                let tail = resumed.split_once("resumed>").map_or("", |(_, t)| t);
                out.push(Call { name, args: args + tail, entered, returned: line_no });
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else { continue };
        if let Some(args) = args.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, (line_no, name.to_string(), args.to_string()));
        } else {
            out.push(Call { name: name.into(), args: args.into(), entered: line_no, returned: line_no });
        }
    }
    out
}

/// The path strace's `-y` shows for a call's first argument (`5</path/to/file>`).
fn path(call: &Call) -> &str {
    call.args.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map_or("", |(path, _)| path)
}

#[test]
fn every_ok_is_preceded_by_an_fdatasync_of_the_journal_file_that_holds_its_event() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let trace_file = dir.path().join("trace.txt");
    let trace_arg = trace_file.display().to_string();
    let meterd = Launch::new(dir.path(), &emu)
        .under(&[
            "strace",
            "-f",
            "-y",
            "-s",
            "65536",
            "-e",
            "trace=pwrite64,write,writev,fdatasync,fsync,sendto,sendmsg",
            "-o",
            &trace_arg,
        ])
        .start();
    // One at a time (a group each), then pipelined groups.
    let mut ids = Vec::new();
    for n in 0..20 {
        let id = format!("one-{n:04}");
        let mut e = event("123456789012", "requests", 1);
        e["id"] = json!(id);
        assert_eq!(meterd.send(&[e]), [json!({"ok": true, "id": id})]);
        ids.push(id);
    }
    for round in 0..3 {
        let batch: Vec<Value> = (0..300)
            .map(|n| {
                let mut e = event("123456789012", "requests", 1);
                e["id"] = json!(format!("many-{round}-{n:04}"));
                e
            })
            .collect();
        assert!(meterd.send(&batch).iter().all(|r| r["ok"] == true));
        ids.extend(batch.iter().map(|e| e["id"].as_str().unwrap().to_string()));
    }
    // The child is strace: killing it would leave meterd running, detached. Stop meterd itself
    // (strace's child); strace exits with it.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", meterd.pid())).unwrap();
    for child in children.split_whitespace() {
        assert!(std::process::Command::new("kill").args(["-TERM", child]).status().unwrap().success());
    }
    meterd.wait_exit(Duration::from_secs(20));
    let trace = std::fs::read_to_string(&trace_file).unwrap();
    let calls = calls(&trace);
    let journal = |call: &&Call| path(call).contains("/data/journal/");
    let writes: Vec<&Call> = calls.iter().filter(|c| c.name == "pwrite64").filter(journal).collect();
    let syncs: Vec<&Call> =
        calls.iter().filter(|c| c.name == "fdatasync" || c.name == "fsync").filter(journal).collect();
    let replies: Vec<&Call> = calls
        .iter()
        .filter(|c| path(c).starts_with("socket:") && c.args.contains(r#"\"ok\":true"#))
        .collect();
    assert!(!writes.is_empty() && !syncs.is_empty() && !replies.is_empty(), "nothing traced:\n{trace}");
    for id in &ids {
        let quoted = format!(r#"\"id\":\"{id}\""#);
        let reply =
            replies.iter().find(|c| c.args.contains(&quoted)).unwrap_or_else(|| panic!("no reply for {id}"));
        let write = writes
            .iter()
            .find(|c| c.args.contains(id.as_str()) && c.returned < reply.entered)
            .unwrap_or_else(|| panic!("{id}: no journal write before its ok"));
        let synced = syncs
            .iter()
            .any(|s| path(s) == path(write) && s.entered > write.returned && s.returned < reply.entered);
        assert!(synced, "{id}: acknowledged without an fdatasync of {} after its write", path(write));
    }
}
