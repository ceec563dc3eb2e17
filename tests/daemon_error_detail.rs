//! Where the service's errors go: `/readyz` gives a short reason (the error code), a dead letter
//! keeps the service's code and message, and the SDK's full description (the raw response with
//! its request id and headers) goes only to the ERROR log and to `meterd status`.

mod common;

use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event};
use common::hour_start;
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;

/// What AWS says to an assumed role without the permission: the message names the account.
const DENIED: &str = "User: arn:aws:sts::123456789012:assumed-role/meterd-metering/i-0123456789abcdef0 \
                      is not authorized to perform: aws-marketplace:BatchMeterUsage";

/// One acknowledged event in the current hour, then a meterd four hours later (the hour sealed)
/// against an emulator with `faults`.
fn submitting_with(emu: &Emu, dir: &std::path::Path, faults: Value) -> Meterd {
    let meterd = Launch::new(dir, emu).start();
    let mut e = event("111111111111", "requests", 3);
    e["timestamp"] = json!(hour_start(0) + 1);
    assert!(meterd.send(&[e]).iter().all(|r| r["ok"] == true));
    assert!(meterd.signal("TERM").success());
    emu.set_clock_offset(LATER);
    emu.faults(faults);
    Launch::new(dir, emu).offset(LATER).start()
}

#[test]
fn readiness_gives_the_error_code_and_the_detail_goes_to_the_log_and_status() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let faults =
        json!({"error": {"type": "AccessDeniedException", "status": 400, "message": DENIED, "count": 1000}});
    let meterd = submitting_with(&emu, dir.path(), faults);

    let paused = meterd.wait_log("submission paused", Duration::from_secs(10));
    assert_eq!(paused["level"], "ERROR");
    let logged = paused["error"].as_str().unwrap();
    assert!(logged.starts_with(&format!("AccessDeniedException: {DENIED} [")), "{logged}");
    assert!(logged.contains("x-amzn-requestid"), "the log has the raw response: {logged}");

    assert_eq!(
        meterd.get("/readyz"),
        (503, "not ready: submission paused: AccessDeniedException\n".to_string())
    );

    let launch = Launch::new(dir.path(), &emu).offset(LATER);
    let (code, stdout, stderr) = Meterd::cli(&launch, &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["not_ready"], json!(["submission paused: AccessDeniedException"]));
    let detail = status["paused"].as_str().unwrap();
    assert!(detail.starts_with(&format!("AccessDeniedException: {DENIED} [")), "{detail}");
    assert!(detail.contains("x-amzn-requestid"), "{detail}");
    let (code, text, _) = Meterd::cli(&launch, &["status"]);
    assert_eq!(code, 0);
    assert!(text.contains(&format!("submission: PAUSED: AccessDeniedException: {DENIED} [")), "{text}");
    assert!(text.contains("ready: no: submission paused: AccessDeniedException\n"), "{text}");
}

#[test]
fn a_dead_letter_keeps_the_services_code_and_message() {
    const INVALID: &str = "Dimension requests is not valid for product prod-test";
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let faults = json!({"error": {"type": "InvalidUsageDimensionException", "status": 400, "message": INVALID, "count": 1}});
    let meterd = submitting_with(&emu, dir.path(), faults);
    meterd.wait_metric("meterd_dead_letters{reason=\"invalid\"}", 1.0, Duration::from_secs(30));
    let expected = format!("InvalidUsageDimensionException: {INVALID}");

    let launch = Launch::new(dir.path(), &emu).offset(LATER);
    let (code, stdout, stderr) = Meterd::cli(&launch, &["dlq", "export", "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let dead: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(dead[0]["message"], json!(expected));
    let (code, list, _) = Meterd::cli(&launch, &["dlq", "list"]);
    assert_eq!(code, 0);
    let row = list.lines().nth(1).unwrap();
    assert!(row.ends_with(&format!("{:<23}  {expected}", "invalid")), "{list}");
}
