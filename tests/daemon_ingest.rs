//! The socket protocol against bad input: every error code, a 10 MB line, binary garbage, half a
//! line then a disconnect. A bad line is answered precisely and touches nothing else.

mod common;

use std::io::Write;
use std::time::Duration;

use common::daemon::{Emu, Launch, event};
use common::{hour_start, now_secs};
use serde_json::{Value, json};

fn codes(replies: &[Value]) -> Vec<String> {
    replies.iter().map(|r| r["error"].as_str().map_or("ok".to_string(), str::to_string)).collect()
}

#[test]
fn each_error_code_and_the_good_lines_around_it() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu)
        .env("METERD_AWS__DIMENSIONS", "[requests,storage_gb]")
        .env("METERD_INGEST__MAX_LINE_BYTES", "4096")
        .start();
    let good = event("111111111111", "requests", 1);
    let mut old = event("111111111111", "requests", 1);
    old["timestamp"] = json!(now_secs() - 13 * 3600);
    let mut future = event("111111111111", "requests", 1);
    future["timestamp"] = json!(now_secs() + 3600);
    let mut huge = event("222222222222", "requests", 2_147_483_647);
    huge["timestamp"] = json!(hour_start(0) + 1);
    let mut one_more = event("222222222222", "requests", 1);
    one_more["timestamp"] = json!(hour_start(0) + 2);
    let lines = [
        good.to_string(),
        "{not json".to_string(),
        json!({"dimension": "requests", "quantity": 1}).to_string(),
        json!({"customer_aws_account_id": "1", "dimension": "requests", "quantity": -5}).to_string(),
        event("111111111111", "cpu_hours", 1).to_string(),
        old.to_string(),
        future.to_string(),
        format!("{{\"pad\":\"{}\"}}", "x".repeat(5000)),
        huge.to_string(),
        one_more.to_string(),
        good.to_string(),
    ];
    let replies = meterd.send_raw(format!("{}\n", lines.join("\n")).as_bytes());
    assert_eq!(
        codes(&replies),
        [
            "ok",
            "invalid_json",
            "missing_field",
            "invalid_field",
            "unknown_dimension",
            "out_of_window",
            "future_timestamp",
            "line_too_long",
            "ok",
            "quantity_overflow",
            "ok"
        ]
    );
    for reply in replies.iter().filter(|r| r["ok"] == false) {
        assert!(!reply["message"].as_str().unwrap().is_empty(), "{reply}");
    }
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 3.0);
    assert_eq!(meterd.metric("meterd_events_rejected_total{reason=\"quantity_overflow\"}"), 1.0);
    assert_eq!(meterd.metric("meterd_events_rejected_total{reason=\"line_too_long\"}"), 1.0);
}

#[test]
fn a_10_mb_line_binary_garbage_and_a_torn_line_leave_the_connection_and_others_intact() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let good = format!("{}\n", event("111111111111", "requests", 4));

    let mut bytes = vec![b'a'; 10 * 1024 * 1024];
    bytes.push(b'\n');
    bytes.extend_from_slice(good.as_bytes());
    let replies = meterd.send_raw(&bytes);
    assert_eq!(codes(&replies), ["line_too_long", "ok"]);

    let mut garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    garbage.retain(|&b| b != b'\n');
    garbage.extend_from_slice(b"\n\xff\xfe\x00\x01\n");
    garbage.extend_from_slice(good.as_bytes());
    let replies = meterd.send_raw(&garbage);
    assert_eq!(codes(&replies), ["invalid_json", "invalid_json", "ok"]);

    // Half a line, then the client goes away: nothing is counted, nothing is answered.
    let mut torn = std::os::unix::net::UnixStream::connect(&meterd.socket).unwrap();
    torn.write_all(br#"{"customer_aws_account_id":"111111111111","dimension":"requests","quan"#).unwrap();
    drop(torn);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(codes(&meterd.send_raw(good.as_bytes())), ["ok"]);
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 3.0);
    assert_eq!(meterd.metric("meterd_events_rejected_total{reason=\"invalid_json\"}"), 2.0);
}

#[test]
fn meterd_send_prints_replies_and_fails_on_a_refusal() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let send = |args: &[&str], stdin: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meterd"))
            .arg("send")
            .arg("--socket")
            .arg(&meterd.socket)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let flags = ["--customer-aws-account-id", "111111111111", "--dimension", "requests", "--quantity", "3"];
    let (code, out) = send(&[&flags[..], &["--tag", "team=a", "--id", "evt-1"]].concat(), "");
    assert_eq!((code, out.as_str()), (Some(0), "{\"ok\":true,\"id\":\"evt-1\"}\n"));
    let stdin = format!("{}\nnope\n", event("111111111111", "requests", 1));
    let (code, out) = send(&[], &stdin);
    assert_eq!(code, Some(1));
    assert_eq!(
        codes(&out.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Value>>()),
        ["ok", "invalid_json"]
    );
    // A quantity meterd does not take reaches meterd's own check, not the argument parser's.
    for bad in ["-1", "2.5", "lots"] {
        let (code, out) = send(&[&flags[..4], &["--quantity", bad]].concat(), "");
        let reply: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(
            (code, reply["error"].as_str()),
            (Some(1), Some("invalid_field")),
            "--quantity {bad}: {out}"
        );
    }
}
