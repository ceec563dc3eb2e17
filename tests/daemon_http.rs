//! HTTP ingest (`ingest.http_listen`, `POST /v1/events`) against the real daemon: the socket's
//! replies, in order, for good and bad events; 413, 415, 404 and 405; the loopback rule; and a
//! SIGKILL in the middle of a request, after which a resend by id is billed once.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::hour_start;
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;

/// A meterd with HTTP ingest on a free loopback port, and that port.
fn start(launch: Launch) -> (Meterd, SocketAddr) {
    let meterd = launch.env("METERD_INGEST__HTTP_LISTEN", "127.0.0.1:0").start();
    let line = meterd.wait_log("serving HTTP ingest", Duration::from_secs(10));
    let addr = line["http"].as_str().unwrap().parse().unwrap();
    (meterd, addr)
}

/// The request's head for a body of `len` bytes.
fn head(method: &str, path: &str, content_type: Option<&str>, len: usize) -> String {
    let content_type = content_type.map_or(String::new(), |t| format!("content-type: {t}\r\n"));
    format!(
        "{method} {path} HTTP/1.1\r\nhost: meterd\r\nconnection: close\r\n{content_type}content-length: {len}\r\n\r\n"
    )
}

/// Sends one request; returns the status, the content type and the body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(head(method, path, content_type, body.len()).as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut text = Vec::new();
    stream.read_to_end(&mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// Posts NDJSON; returns the status and the reply lines.
fn post(addr: SocketAddr, body: &str) -> (u16, Vec<Value>) {
    let (status, content_type, body) =
        request(addr, "POST", "/v1/events", Some("application/x-ndjson"), body.as_bytes());
    if status == 200 {
        assert_eq!(content_type, "application/x-ndjson");
    }
    (status, body.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("JSON: {l}"))).collect())
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

#[test]
fn replies_are_the_sockets_in_order_for_good_and_bad_events() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let (meterd, addr) = start(Launch::new(dir.path(), &emu).env("METERD_AWS__DIMENSIONS", "[requests]"));
    let mut with_id = event("111111111111", "requests", 3);
    with_id["id"] = json!("h-1");
    let mut conflict = event("111111111111", "requests", 4);
    conflict["id"] = json!("h-1");
    let body = format!(
        "{with_id}\n{{not json\n\n{}\r\n{}\n{with_id}\n{conflict}\n{}",
        json!({"dimension": "requests", "quantity": 1}),
        event("111111111111", "cpu_hours", 1),
        // The last line has no newline: the body is complete, so it counts.
        event("222222222222", "requests", 5),
    );
    let (status, replies) = post(addr, &body);
    assert_eq!(status, 200);
    assert_eq!(replies.len(), 7, "{replies:?}");
    assert_eq!(replies[0], json!({"ok": true, "id": "h-1"}));
    assert_eq!(replies[1]["error"], "invalid_json");
    assert_eq!(replies[2]["error"], "missing_field");
    assert_eq!(replies[3]["error"], "unknown_dimension");
    assert_eq!(replies[4], json!({"ok": true, "id": "h-1", "duplicate": true}));
    assert_eq!((&replies[5]["error"], &replies[5]["id"]), (&json!("id_conflict"), &json!("h-1")));
    let generated = replies[6]["id"].as_str().unwrap();
    assert!(replies[6]["ok"] == true && generated.split_once('-').is_some(), "{replies:?}");

    // HTTP ids are one scope of their own: the socket's "h-1" is another id.
    let socket = meterd.send(&[conflict.clone()]);
    assert_eq!(socket, [json!({"ok": true, "id": "h-1"})]);

    assert_eq!(request(addr, "GET", "/v1/events", None, b"").0, 405);
    assert_eq!(request(addr, "POST", "/v2/events", Some("application/x-ndjson"), b"{}").0, 404);
    assert_eq!(meterd.metric("meterd_http_requests_total{code=\"200\"}"), 1.0);
    assert_eq!(meterd.metric("meterd_http_requests_total{code=\"405\"}"), 1.0);
    assert_eq!(meterd.metric("meterd_http_request_duration_seconds_count"), 3.0);
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 3.0);
}

#[test]
fn an_oversized_body_is_413_and_a_wrong_content_type_415_and_nothing_is_counted() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let (meterd, addr) =
        start(Launch::new(dir.path(), &emu).env("METERD_INGEST__HTTP_MAX_BODY_BYTES", "4096"));
    let events: Vec<Value> =
        (0..100).map(|i| event(&format!("{}", 300_000_000_000u64 + i), "requests", 1)).collect();
    let body = ndjson(&events);
    assert!(body.len() > 4096);
    let (status, content_type, text) =
        request(addr, "POST", "/v1/events", Some("application/x-ndjson"), body.as_bytes());
    assert_eq!((status, content_type.as_str()), (413, "application/json"));
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((&error["ok"], &error["error"]), (&json!(false), &json!("body_too_large")));
    assert!(error["message"].as_str().unwrap().contains("ingest.http_max_body_bytes (4096)"), "{error}");

    let one = ndjson(&events[..1]);
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let (status, _, text) = request(addr, "POST", "/v1/events", content_type, one.as_bytes());
        assert_eq!(status, 415, "{content_type:?}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"], "unsupported_media_type");
    }
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 0.0);
    assert_eq!(meterd.metric("meterd_http_requests_total{code=\"413\"}"), 1.0);
    assert_eq!(meterd.metric("meterd_http_requests_total{code=\"415\"}"), 3.0);
    // The same body within the limit, with parameters in its content type, is taken.
    let (status, _, text) =
        request(addr, "POST", "/v1/events", Some("application/json; charset=utf-8"), one.as_bytes());
    assert_eq!(status, 200);
    assert!(text.starts_with("{\"ok\":true"), "{text}");
}

#[test]
fn a_non_loopback_address_is_a_configuration_error_unless_allowed() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = || Launch::new(dir.path(), &emu).env("METERD_INGEST__HTTP_LISTEN", "0.0.0.0:8471");
    let (code, _, stderr) = Meterd::cli(&launch(), &["check-config"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("ingest.http_listen 0.0.0.0:8471 is not a loopback address"), "{stderr}");
    assert!(stderr.contains("ingest.http_allow_non_loopback = true"), "{stderr}");
    let (status, stderr) = Meterd::run_to_end(launch());
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing was opened before the check");
    // Allowed explicitly, the same address passes (this test binds nothing but loopback).
    let allowed = launch().env("METERD_INGEST__HTTP_ALLOW_NON_LOOPBACK", "true");
    let (code, _, stderr) = Meterd::cli(&allowed, &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) =
        Meterd::cli(&launch().env("METERD_INGEST__HTTP_LISTEN", "localhost"), &["check-config"]);
    assert_eq!(code, 64);
    assert!(stderr.contains("must be an address and port"), "{stderr}");
}

/// Events with ids for three customers in this hour, and their totals.
fn workload() -> (Vec<Value>, BTreeMap<String, u64>) {
    let mut events = Vec::new();
    let mut totals = BTreeMap::new();
    for i in 0..90u64 {
        let customer = format!("{}", 400_000_000_000u64 + i % 3);
        let quantity = i % 7 + 1;
        let mut e = event(&customer, "requests", quantity);
        e["timestamp"] = json!(hour_start(0) + 1);
        e["id"] = json!(format!("http-{i}"));
        *totals.entry(customer).or_default() += quantity;
        events.push(e);
    }
    (events, totals)
}

#[test]
fn kill9_in_the_middle_of_a_request_then_a_resend_by_id_is_billed_once() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let (events, totals) = workload();
    let body = ndjson(&events);

    // Half a body, then SIGKILL: nothing of it is answered.
    let (meterd, addr) = start(Launch::new(dir.path(), &emu));
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(head("POST", "/v1/events", Some("application/x-ndjson"), body.len()).as_bytes())
        .unwrap();
    stream.write_all(&body.as_bytes()[..body.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    meterd.kill9();
    drop(stream);

    // The whole body, then SIGKILL before the answer is read: some events may be durable.
    let (meterd, addr) = start(Launch::new(dir.path(), &emu));
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(head("POST", "/v1/events", Some("application/x-ndjson"), body.len()).as_bytes())
        .unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    meterd.kill9();
    drop(stream);

    // The client resends everything under the same ids: each is answered ok, once counted.
    let (meterd, addr) = start(Launch::new(dir.path(), &emu));
    let (status, replies) = post(addr, &body);
    assert_eq!(status, 200);
    assert_eq!(replies.len(), events.len());
    for (reply, event) in replies.iter().zip(&events) {
        assert_eq!((&reply["ok"], &reply["id"]), (&json!(true), &event["id"]), "{reply}");
    }
    let (_, again) = post(addr, &body);
    assert!(again.iter().all(|r| r["duplicate"] == true), "{again:?}");
    meterd.kill9();

    emu.set_clock_offset(LATER);
    let meterd = Launch::new(dir.path(), &emu).offset(LATER).start();
    let records = emu.wait_records(totals.len(), Duration::from_secs(30));
    assert_eq!(records.len(), totals.len(), "{records:?}");
    for (customer, total) in &totals {
        let record = find(&records, customer, "requests", hour_start(0)).expect("record present");
        assert_eq!(record["quantity"], json!(total), "{customer}");
    }
    assert!(!emu.statuses().contains_key("DuplicateRecord"));
    drop(meterd);
}
