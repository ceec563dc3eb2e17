//! AMI and container products (`aws.mode = "meter_usage"`): a MeterUsage retry after a lost
//! answer is the same request, `ClientToken` included, and with `aws.register_usage` nothing is
//! metered, or acknowledged, before RegisterUsage has succeeded. The real `meterd` against the
//! emulator.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::daemon::{ACCESS_KEY, Emu, Launch, Meterd, PRODUCT};
use common::{hour_start, now_secs};
use meterd::model::{Customer, RecordKey, Scope};
use serde_json::{Value, json};

fn metered<'a>(dir: &'a std::path::Path, emu: &Emu) -> Launch<'a> {
    Launch::new(dir, emu).env("METERD_AWS__MODE", "meter_usage").env("METERD_SUBMIT__DEADLINE", "6h")
}

/// Seals `quantity` of `cpu` five hours back: a run of meterd with its clock there, stopped.
fn sealed_five_hours_ago(dir: &std::path::Path, emu: &Emu, quantity: u64) {
    let meterd = metered(dir, emu).offset(-5 * 3600).start();
    let event = json!({ "dimension": "cpu", "quantity": quantity, "timestamp": now_secs() - 5 * 3600 });
    assert_eq!(meterd.send(&[event])[0]["ok"], true);
    // Killed, not stopped: a stopping meter_usage meterd would submit its hour at once.
    meterd.kill9();
}

fn meter_requests(emu: &Emu) -> Vec<Value> {
    emu.requests().into_iter().filter(|r| r["operation"] == "MeterUsage").collect()
}

#[test]
fn a_meter_usage_retry_after_a_lost_answer_sends_the_same_client_token() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    sealed_five_hours_ago(dir.path(), &emu, 42);
    // The first two calls are applied and their answers lost; then one after a restart.
    emu.faults(json!({ "drop_after_apply": 2 }));
    let meterd = metered(dir.path(), &emu).start();
    meterd.wait_metric(
        "meterd_api_requests_total{operation=\"MeterUsage\",outcome=\"connection\"}",
        2.0,
        Duration::from_secs(30),
    );
    meterd.kill9();
    let meterd = metered(dir.path(), &emu).start();
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 1.0, Duration::from_secs(30));

    let calls = meter_requests(&emu);
    let outcomes: Vec<&str> = calls.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["dropped", "dropped", "ok"]);
    let key = RecordKey {
        scope: Scope::ProductCode(PRODUCT.into()),
        customer: Customer::Caller,
        dimension: "cpu".into(),
        hour: hour_start(5),
    };
    let token = meterd::submit::api::client_token(&key);
    assert_eq!(token.len(), 64);
    assert!(calls.iter().all(|r| r["client_token"] == token.as_str()), "{calls:?}");
    let records = emu.records();
    assert_eq!(records.len(), 1);
    assert_eq!((&records[0]["quantity"], &records[0]["client_token"]), (&json!(42), &json!(token)));
}

/// An event sent on a fresh connection; the reply, if one comes within `wait`.
fn send_and_wait(stream: &mut UnixStream, wait: Duration) -> Option<Value> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut line = String::new();
    match BufReader::new(stream.try_clone().unwrap()).read_line(&mut line) {
        Ok(n) if n > 0 => Some(serde_json::from_str(&line).unwrap()),
        _ => None,
    }
}

#[test]
fn nothing_is_metered_or_acknowledged_before_register_usage_succeeds() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    // A sealed hour from an earlier run is waiting to be sent.
    sealed_five_hours_ago(dir.path(), &emu, 7);
    // Every request is throttled for now: RegisterUsage keeps being retried.
    emu.faults(json!({ "throttle": 1_000_000 }));
    let meterd = Meterd::spawn(metered(dir.path(), &emu).env("METERD_AWS__REGISTER_USAGE", "true"));
    let start = Instant::now();
    while !emu.requests().iter().any(|r| r["operation"] == "RegisterUsage") {
        assert!(start.elapsed() < Duration::from_secs(10), "RegisterUsage was never called");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = meterd.get("/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("registering usage with AWS Marketplace"), "{body}");
    // The socket file is there and takes the connection, but nothing is read or acknowledged.
    let mut stream = UnixStream::connect(&meterd.socket).expect("the socket is bound while registering");
    let event = json!({ "dimension": "cpu", "quantity": 3, "id": "early" });
    writeln!(stream, "{event}").unwrap();
    assert_eq!(
        send_and_wait(&mut stream, Duration::from_millis(1500)),
        None,
        "acknowledged while registering"
    );
    assert!(meter_requests(&emu).is_empty(), "MeterUsage sent while registering: {:?}", meter_requests(&emu));
    assert_eq!(meterd.get("/readyz").0, 503);

    emu.clear_faults();
    meterd.wait_log("meterd ready", Duration::from_secs(30));
    let reply = send_and_wait(&mut stream, Duration::from_secs(10)).expect("answered once registered");
    assert_eq!((&reply["ok"], &reply["id"]), (&json!(true), &json!("early")));
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 1.0, Duration::from_secs(30));
    // In the service's log: RegisterUsage's success, then MeterUsage.
    let sequence: Vec<(String, String)> = emu
        .requests()
        .iter()
        .filter(|r| r["outcome"] != "ThrottlingException")
        .map(|r| (r["operation"].as_str().unwrap().to_string(), r["outcome"].as_str().unwrap().to_string()))
        .collect();
    let expected =
        [("RegisterUsage", "ok"), ("MeterUsage", "ok")].map(|(o, r)| (o.to_string(), r.to_string()));
    assert_eq!(sequence, expected);
    assert_eq!(emu.records()[0]["caller"], ACCESS_KEY);
}
