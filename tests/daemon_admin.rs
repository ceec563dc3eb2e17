//! The operator's commands against a running meterd and against its stopped data dir:
//! `status`, `dlq list|show|export|retry|drop`, `receipts export`, `check-config`,
//! `resolve-customer`, and the `/healthz` and `/readyz` endpoints.

mod common;

use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::hour_start;
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;
const SUBSCRIBED: &str = "300000000000";
const RETRIED: &str = "300000000001";
const DROPPED: &str = "300000000002";

fn json_out(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// The id `meterd dlq list` gives the dead letter of `customer`.
fn dead_letter_id(launch: &Launch, customer: &str) -> String {
    let (code, stdout, stderr) = Meterd::cli(launch, &["dlq", "export", "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let records = json_out(&stdout);
    let record = records.as_array().unwrap().iter().find(|r| r["customer_aws_account_id"] == customer);
    record.unwrap_or_else(|| panic!("no dead letter for {customer} in {stdout}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The dimension the listing (the emulator's catalogue) lacks: its records become `invalid` dead
/// letters. (A customer not subscribed is offered again until the record's deadline.)
const MISSING: &str = "gpu_hours";

fn listing_without_missing(c: &mut meterd::emulator::EmulatorConfig) {
    c.catalogue.dimensions = Some(vec!["requests".into()]);
}

#[test]
fn status_dead_letters_and_receipts_online_and_offline() {
    let emu = Emu::start(listing_without_missing);
    let dir = tempfile::tempdir().unwrap();
    let hour = hour_start(0);
    let meterd = Launch::new(dir.path(), &emu).start();
    let events: Vec<Value> = [(SUBSCRIBED, "requests", 5), (RETRIED, MISSING, 7), (DROPPED, MISSING, 9)]
        .iter()
        .map(|(customer, dimension, quantity)| {
            let mut e = event(customer, dimension, *quantity);
            e["timestamp"] = json!(hour + 1);
            e
        })
        .collect();
    assert!(meterd.send(&events).iter().all(|r| r["ok"] == true));
    assert!(meterd.signal("TERM").success());
    emu.set_clock_offset(LATER);
    let launch = || Launch::new(dir.path(), &emu).offset(LATER);
    let meterd = launch().start();
    meterd.wait_metric("meterd_dead_letters{reason=\"invalid\"}", 2.0, Duration::from_secs(30));
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 1.0, Duration::from_secs(10));

    // status, from the daemon
    let (code, stdout, stderr) = Meterd::cli(&launch(), &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status = json_out(&stdout);
    assert_eq!(status["running"], true);
    assert_eq!(status["records"]["accepted"], 1);
    assert_eq!(status["records"]["dead_letter"], 2);
    assert_eq!(status["records"]["pending"], 0);
    assert_eq!(status["dead_letters"]["invalid"], 2);
    // The last call was one of the refused records, sent alone.
    assert_eq!(status["last_submission"][0], "client_error");
    assert_eq!(status["paused"], Value::Null);
    assert_eq!(status["not_ready"], json!([]));
    assert!(status["outbox_bytes"].as_u64().unwrap() > 0);
    let (code, text, _) = Meterd::cli(&launch(), &["status"]);
    assert_eq!(code, 0);
    assert!(text.contains("records: accepted 1, dead_letter 2"), "{text}");
    assert!(text.contains("ready: yes"), "{text}");

    // dlq list / show / export
    let retried = dead_letter_id(&launch(), RETRIED);
    let dropped = dead_letter_id(&launch(), DROPPED);
    let (code, list, _) = Meterd::cli(&launch(), &["dlq", "list"]);
    assert_eq!(code, 0);
    assert!(
        list.contains(&retried) && list.contains(&dropped) && list.contains("2 dead letter(s)"),
        "{list}"
    );
    let (code, shown, _) = Meterd::cli(&launch(), &["dlq", "show", &retried]);
    assert_eq!(code, 0);
    let shown = json_out(&shown);
    assert_eq!((shown["quantity"].as_u64(), shown["reason"].as_str()), (Some(7), Some("invalid")));
    let (code, csv, _) = Meterd::cli(&launch(), &["dlq", "export", "--format", "csv"]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].starts_with("id,hour,product_code"));
    let (code, _, stderr) = Meterd::cli(&launch(), &["dlq", "show", "000000000000"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no dead letter with id 000000000000"), "{stderr}");

    // receipts: the accepted record with the service's MeteringRecordId
    let since = hour.to_string();
    let (code, receipts, _) =
        Meterd::cli(&launch(), &["receipts", "export", "--since", &since, "--format", "json"]);
    assert_eq!(code, 0);
    let receipts = json_out(&receipts);
    let accepted = find(&emu.records(), SUBSCRIBED, "requests", hour).unwrap().clone();
    assert_eq!(receipts.as_array().unwrap().len(), 1);
    assert_eq!(receipts[0]["metering_record_id"], accepted["metering_record_id"]);
    assert_eq!(receipts[0]["quantity"], 5);

    // drop needs --yes; retry after the dimension was added to the listing; drop the other
    let (code, _, stderr) = Meterd::cli(&launch(), &["dlq", "drop", &dropped]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--yes"));
    let mut catalogue = emu.control("GET", "/_emulator/catalogue", Value::Null);
    catalogue["dimensions"] = json!(["requests", MISSING]);
    emu.control("PUT", "/_emulator/catalogue", catalogue);
    let (code, out, stderr) = Meterd::cli(&launch(), &["dlq", "retry", &retried]);
    assert_eq!((code, out.trim()), (0, "retried 1 dead letter(s)"), "{stderr}");
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 2.0, Duration::from_secs(10));
    assert_eq!(find(&emu.records(), RETRIED, MISSING, hour).unwrap()["quantity"], 7);
    let (code, out, _) = Meterd::cli(&launch(), &["dlq", "drop", &dropped, "--yes"]);
    assert_eq!((code, out.trim()), (0, "dropped 1 dead letter(s)"));
    meterd.wait_metric("meterd_records{state=\"dead_letter\"}", 0.0, Duration::from_secs(5));
    assert!(meterd.logs().iter().any(|l| l.contains("dead letter dropped by an operator")));
    assert!(meterd.logs().iter().any(|l| l.contains("dead letter retried by an operator")));
    assert!(meterd.signal("TERM").success());

    // offline: the same reads from the data dir
    let (code, stdout, stderr) = Meterd::cli(&launch(), &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status = json_out(&stdout);
    assert_eq!(status["running"], false);
    assert_eq!(
        (status["records"]["accepted"].as_u64(), status["records"]["dead_letter"].as_u64()),
        (Some(2), Some(0))
    );
    let (code, csv, _) = Meterd::cli(&launch(), &["receipts", "export", "--since", &since]);
    assert_eq!(code, 0);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains(accepted["metering_record_id"].as_str().unwrap()));
    let (code, list, _) = Meterd::cli(&launch(), &["dlq", "list"]);
    assert_eq!(code, 0);
    assert!(list.contains("0 dead letter(s)"), "{list}");
    let (code, _, stderr) = Meterd::cli(&launch(), &["dlq", "retry", "--all"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("meterd is not running"), "{stderr}");
}

#[test]
fn check_config_reports_every_problem() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[aws]\nproduct_code = \"prod-1\"\ndimensions = [\"requests\"]\n").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[storage]\nretention = \"1h\"\n[ingest]\nsocket_group = \"no-such-group-here\"\n")
        .unwrap();
    let launch = Launch::new(dir.path(), &emu);
    let (code, stdout, _) = Meterd::cli(&launch, &["check-config", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    let (code, _, stderr) = Meterd::cli(&launch, &["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(stderr.contains("storage.retention must be at least 1d"), "{stderr}");
    assert!(stderr.contains("ingest.socket_group: no group \"no-such-group-here\""), "{stderr}");
}

#[test]
fn resolve_customer_prints_whom_a_token_names() {
    let emu = Emu::start(|c| {
        c.catalogue.registration_tokens.insert(
            "token-1".into(),
            meterd::emulator::RegistrationToken {
                customer_aws_account_id: "111122223333".into(),
                product_code: "prod-test".into(),
                license_arn: Some("arn:aws:license-manager::111122223333:license:l-1".into()),
                customer_identifier: Some("cust-1".into()),
                ..Default::default()
            },
        );
    });
    let dir = tempfile::tempdir().unwrap();
    let launch = Launch::new(dir.path(), &emu);
    let (code, stdout, stderr) = Meterd::cli(&launch, &["resolve-customer", "token-1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("CustomerAWSAccountId: 111122223333"), "{stdout}");
    assert!(stdout.contains("ProductCode:          prod-test"), "{stdout}");
    assert!(stdout.contains("LicenseArn:           arn:aws:license-manager::111122223333:license:l-1"));
    let (code, _, stderr) = Meterd::cli(&launch, &["resolve-customer", "unknown-token"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("ResolveCustomer failed") && stderr.contains("InvalidTokenException"),
        "{stderr}"
    );
}

#[test]
fn readiness_fails_while_submission_is_paused() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let mut e = event("111111111111", "requests", 3);
    e["timestamp"] = json!(hour_start(0) + 1);
    assert!(meterd.send(&[e]).iter().all(|r| r["ok"] == true));
    assert_eq!(meterd.get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(meterd.get("/readyz"), (200, "ready\n".to_string()));
    assert!(meterd.signal("TERM").success());

    emu.set_clock_offset(LATER);
    emu.faults(json!({"error": {"type": "InvalidProductCodeException", "count": 1000}}));
    let meterd = Launch::new(dir.path(), &emu).offset(LATER).start();
    meterd.wait_log("submission paused", Duration::from_secs(10));
    let (status, body) = meterd.get("/readyz");
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: submission paused: ") && body.contains("InvalidProductCode"),
        "{body}"
    );
    assert_eq!(meterd.metric("meterd_submission_paused"), 1.0);
    assert_eq!(meterd.get("/healthz").0, 200);

    emu.clear_faults();
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 1.0, Duration::from_secs(10));
    assert_eq!(meterd.get("/readyz"), (200, "ready\n".to_string()));
    assert_eq!(meterd.metric("meterd_submission_paused"), 0.0);
}

#[test]
fn receipts_and_dead_letters_are_compacted_after_the_retention() {
    let emu = Emu::start(listing_without_missing);
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let events: Vec<Value> = [(SUBSCRIBED, "requests"), (RETRIED, MISSING)]
        .iter()
        .map(|(customer, dimension)| {
            let mut e = event(customer, dimension, 2);
            e["timestamp"] = json!(hour_start(0) + 1);
            e
        })
        .collect();
    assert!(meterd.send(&events).iter().all(|r| r["ok"] == true));
    assert!(meterd.signal("TERM").success());
    emu.set_clock_offset(LATER);
    let meterd = Launch::new(dir.path(), &emu).offset(LATER).start();
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 1.0, Duration::from_secs(30));
    meterd.wait_metric("meterd_records{state=\"dead_letter\"}", 1.0, Duration::from_secs(10));
    assert!(meterd.signal("TERM").success());

    // Within a one-day retention: kept.
    let within = Launch::new(dir.path(), &emu).offset(LATER + 3600).env("METERD_STORAGE__RETENTION", "1d");
    let meterd = within.start();
    // The gauges follow the outbox a moment after the start: waited for, never read at once.
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 1.0, Duration::from_secs(10));
    meterd.wait_metric("meterd_records{state=\"dead_letter\"}", 1.0, Duration::from_secs(10));
    assert!(!meterd.logs().iter().any(|l| l.contains("compacted")));
    assert!(meterd.signal("TERM").success());

    // Two days on: both are compacted at start.
    let later =
        Launch::new(dir.path(), &emu).offset(LATER + 2 * 86_400).env("METERD_STORAGE__RETENTION", "1d");
    let meterd = later.start();
    meterd.wait_log("compacted receipts and dead letters", Duration::from_secs(10));
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 0.0, Duration::from_secs(10));
    meterd.wait_metric("meterd_records{state=\"dead_letter\"}", 0.0, Duration::from_secs(10));
    assert!(meterd.signal("TERM").success());
    let (code, stdout, _) = Meterd::cli(
        &Launch::new(dir.path(), &emu).offset(LATER + 2 * 86_400),
        &["receipts", "export", "--since", "0", "--format", "json"],
    );
    assert_eq!((code, stdout.trim()), (0, "[]"));
}
