//! `meterd flush`: a customer's open hours are sealed now and submitted at once (an unsubscribe
//! window); later events for those hours go to the next hour; every customer at once only in the
//! sandbox, where it is the way to see a record billed within a minute.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::hour_start;

#[test]
fn a_flushed_customer_is_sealed_and_submitted_now_and_no_other() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = || Launch::new(dir.path(), &emu);
    let meterd = launch().start();
    let replies = meterd.send(&[event("111111111111", "requests", 5), event("222222222222", "requests", 7)]);
    assert!(replies.iter().all(|r| r["ok"] == true));
    let hour = hour_start(0);

    let (code, stdout, stderr) = Meterd::cli(&launch(), &["flush", "--customer", "111111111111"]);
    assert_eq!((code, stdout.as_str()), (0, "sealed 1 record(s); they are submitted now\n"), "{stderr}");
    let records = emu.wait_records(1, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    assert_eq!(find(&records, "111111111111", "requests", hour).expect("submitted now")["quantity"], 5);
    assert_eq!(meterd.metric("meterd_records{state=\"open\"}"), 1.0, "the other customer stays open");

    // Later usage of the flushed customer in this hour goes to the next hour.
    assert_eq!(meterd.send(&[event("111111111111", "requests", 2)])[0]["ok"], true);
    assert_eq!(meterd.metric("meterd_late_events_total{policy=\"carry_forward\"}"), 1.0);

    let (code, _, stderr) = Meterd::cli(&launch(), &["flush", "--all"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("only the sandbox allows it"), "{stderr}");
    let (code, stdout, _) = Meterd::cli(&launch(), &["flush", "--customer", "999999999999"]);
    assert_eq!((code, stdout.as_str()), (0, "sealed 0 record(s); they are submitted now\n"));
}

#[test]
fn the_sandbox_bills_a_record_within_seconds_of_a_flush() {
    let cwd = tempfile::tempdir().unwrap();
    let meterd = env!("CARGO_BIN_EXE_meterd");
    let mut sandbox = Command::new(meterd)
        .args(["run", "--sandbox"])
        .current_dir(cwd.path())
        .env("METERD_LOG__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut stdout = BufReader::new(sandbox.stdout.take().unwrap());
    while !banner.contains("cargo run -- status --sandbox") {
        assert!(stdout.read_line(&mut banner).unwrap() > 0, "the sandbox stopped: {banner}");
    }
    assert!(!banner.contains(":9464"), "the sandbox picks a free metrics port: {banner}");
    let run = |args: &[&str]| {
        let out = Command::new(meterd).args(args).current_dir(cwd.path()).output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, sent) = run(&[
        "send",
        "--sandbox",
        "--customer-aws-account-id",
        "111122223333",
        "--dimension",
        "requests",
        "--quantity",
        "5",
    ]);
    assert_eq!(code, 0, "{sent}");
    // The sandbox's listing: a dimension it does not have is refused at once; a customer with no
    // subscription is taken, and the service answers its record `CustomerNotSubscribed`.
    let (code, refused) = run(&[
        "send",
        "--sandbox",
        "--customer-aws-account-id",
        "111122223333",
        "--dimension",
        "cpu",
        "--quantity",
        "1",
    ]);
    assert!(code == 1 && refused.contains("\"error\":\"unknown_dimension\""), "{refused}");
    let (code, sent) = run(&[
        "send",
        "--sandbox",
        "--customer-aws-account-id",
        "444455556666",
        "--dimension",
        "storage_gb",
        "--quantity",
        "2",
    ]);
    assert_eq!(code, 0, "{sent}");
    assert_eq!(
        run(&["flush", "--sandbox", "--all"]),
        (0, "sealed 2 record(s); they are submitted now\n".into())
    );
    let start = Instant::now();
    let receipts = loop {
        let (_, csv) =
            run(&["receipts", "export", "--sandbox", "--since", "2000-01-01T00:00:00Z", "--format", "csv"]);
        if csv.lines().count() > 1 || start.elapsed() > Duration::from_secs(20) {
            break csv;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let rows: Vec<&str> = receipts.lines().collect();
    assert_eq!(rows.len(), 2, "a header and the subscribed customer's record: {receipts}");
    assert!(rows[1].contains("111122223333") && rows[1].contains("requests"), "{receipts}");
    let metrics = banner.split("metrics:").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
    let not_subscribed = "meterd_records_submitted_total{status=\"customer_not_subscribed\"} 1";
    let start = Instant::now();
    while !scrape(metrics).contains(not_subscribed) {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", scrape(metrics));
        std::thread::sleep(Duration::from_millis(100));
    }
    sandbox.kill().unwrap();
    sandbox.wait().unwrap();
}

/// The body of `GET url` (`http://host:port/path`).
fn scrape(url: &str) -> String {
    use std::io::{Read, Write};
    let (host, path) = url.trim_start_matches("http://").split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(stream, "GET /{path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}
