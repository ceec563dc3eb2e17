//! Limits on connections, with the default settings: a flood of TCP connections to the metrics
//! port cannot use up meterd's file descriptors (ingest and `/healthz` keep answering), idle HTTP
//! connections are closed while active keep-alive ones stay, and connections over a listener's
//! cap are told so and closed (ingest: one `overloaded` line; admin: one error line).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Emu, Launch, Meterd, event};
use serde_json::Value;

/// The defaults of `metrics.max_connections`, `ingest.max_connections`, `admin.max_connections`
/// and `metrics.idle_timeout`.
const METRICS_CAP: usize = 32;
const INGEST_CAP: usize = 512;
const ADMIN_CAP: usize = 16;
const IDLE: Duration = Duration::from_secs(10);

/// Waits until `ready()` holds, checking every 50 ms.
fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < within, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the peer closes `stream` within `within`: a read returns end of stream (or a reset).
fn closed_by_peer<S: Read>(stream: &mut S) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// `GET path`, tolerating a connection closed before the answer (status 0).
fn try_get(meterd: &Meterd, path: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect(meterd.metrics) else { return 0 };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn a_flood_of_metrics_connections_leaves_ingest_and_healthz_working() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    // The attack ran against a 1,024-descriptor limit.
    let status = Command::new("prlimit")
        .args(["--pid", &meterd.pid().to_string(), "--nofile=1024:1024"])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());

    // Connections are accepted in the order they were made: the first METRICS_CAP are held, every
    // later one is closed at once.
    let mut flood: Vec<TcpStream> = (0..1100).map(|_| TcpStream::connect(meterd.metrics).unwrap()).collect();
    for stream in &mut flood[METRICS_CAP..] {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(closed_by_peer(stream), "a connection over metrics.max_connections is closed");
    }
    for stream in &mut flood[..METRICS_CAP] {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let held = stream.read(&mut byte).is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(held, "a connection within metrics.max_connections stays open");
    }
    drop(flood);
    // The flood is gone (the client closed it) and ingest kept every descriptor it needs.
    assert_eq!(meterd.send(&[event("111111111111", "requests", 1)])[0]["ok"], true);
    wait_until("/healthz answers", Duration::from_secs(10), || try_get(&meterd, "/healthz") == 200);
    assert_eq!(
        meterd.metric("meterd_connections_over_limit_total{listener=\"metrics\"}"),
        (1100 - METRICS_CAP) as f64
    );
    assert_eq!(meterd.metric("meterd_accept_errors_total{listener=\"metrics\"}"), 0.0);
    let accept_failures = meterd.logs().iter().filter(|l| l.contains("accept failed")).count();
    assert_eq!(accept_failures, 0);
}

#[test]
fn idle_http_connections_are_closed_and_active_keep_alive_ones_stay() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let started = Instant::now();
    let mut idle = TcpStream::connect(meterd.metrics).unwrap();
    let mut half_request = TcpStream::connect(meterd.metrics).unwrap();
    half_request.write_all(b"GET /metrics HTTP/1.1\r\nhost:").unwrap();
    let mut active = TcpStream::connect(meterd.metrics).unwrap();
    active.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(active.try_clone().unwrap());
    // One request a second for longer than the idle timeout, all on one keep-alive connection.
    for _ in 0..(IDLE.as_secs() + 2) {
        write!(active, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
        let mut line = String::new();
        while line != "\r\n" {
            line.clear();
            reader.read_line(&mut line).unwrap();
        }
        let mut body = [0u8; 3];
        reader.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"ok\n");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(started.elapsed() > IDLE);
    for stream in [&mut idle, &mut half_request] {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(closed_by_peer(stream), "an idle connection is closed after metrics.idle_timeout");
    }
}

#[test]
fn ingest_connections_over_the_cap_get_one_overloaded_line() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    // Connections are accepted in the order they were made: these fill the cap.
    let mut open: Vec<UnixStream> =
        (0..INGEST_CAP).map(|_| UnixStream::connect(&meterd.socket).unwrap()).collect();

    let extra = UnixStream::connect(&meterd.socket).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut lines = BufReader::new(extra).lines();
    let refusal: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(refusal["ok"], false);
    assert_eq!(refusal["error"], "overloaded");
    assert_eq!(refusal["message"], "meterd has ingest.max_connections (512) connections open; retry later");
    assert!(lines.next().is_none(), "the connection is closed after the refusal");
    assert_eq!(meterd.metric("meterd_connections{listener=\"ingest\"}"), INGEST_CAP as f64);
    // Every connection within the cap is served.
    let first = &mut open[0];
    writeln!(first, "{}", event("111111111111", "requests", 1)).unwrap();
    let mut line = String::new();
    BufReader::new(first.try_clone().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    assert_eq!(meterd.metric("meterd_connections_over_limit_total{listener=\"ingest\"}"), 1.0);

    // A slot frees when a client leaves.
    drop(open.pop());
    wait_until("a slot frees", Duration::from_secs(10), || {
        meterd.metric("meterd_connections{listener=\"ingest\"}") == (INGEST_CAP - 1) as f64
    });
    assert_eq!(meterd.send(&[event("111111111111", "requests", 1)])[0]["ok"], true);
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 2.0);
}

#[test]
fn admin_connections_over_the_cap_are_refused_and_idle_ones_time_out() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = Launch::new(dir.path(), &emu);
    let meterd = Meterd::start(Launch::new(dir.path(), &emu));
    let admin = dir.path().join("admin.sock");
    let mut idle: Vec<UnixStream> = (0..ADMIN_CAP).map(|_| UnixStream::connect(&admin).unwrap()).collect();
    let (code, _, stderr) = Meterd::cli(&launch, &["status"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("meterd has admin.max_connections (16) connections open; retry later"),
        "{stderr}"
    );
    assert_eq!(meterd.metric("meterd_connections_over_limit_total{listener=\"admin\"}"), 1.0);
    assert_eq!(meterd.metric("meterd_connections{listener=\"admin\"}"), ADMIN_CAP as f64);

    // A connection that sends no request is told so and closed after the admin request timeout.
    for stream in &mut idle {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "{\"ok\":false,\"error\":\"no request line within 10s; closing\"}\n");
    }
    assert_eq!(Meterd::cli(&launch, &["status"]).0, 0);
}
