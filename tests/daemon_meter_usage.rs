//! `aws.mode = "meter_usage"` (AMI and container products), the hourly heartbeat, `check-aws`
//! and RegisterUsage: the real `meterd` process, the real SDK, the emulator.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::daemon::{ACCESS_KEY, Emu, Launch, Meterd, PRODUCT};
use common::{SECRET, hour_start, now_secs};
use serde_json::{Value, json};

const OTHER_KEY: &str = "AKIDMETERDOTHERTASK";

/// `meter_usage` mode, with MeterUsage's own 6-hour deadline.
fn metered<'a>(dir: &'a std::path::Path, emu: &Emu) -> Launch<'a> {
    Launch::new(dir, emu).env("METERD_AWS__MODE", "meter_usage").env("METERD_SUBMIT__DEADLINE", "6h")
}

fn usage(dimension: &str, quantity: u64, timestamp: i64) -> Value {
    json!({ "dimension": dimension, "quantity": quantity, "timestamp": timestamp })
}

/// The emulator's MeterUsage calls: (caller, outcome) in order.
fn meter_calls(emu: &Emu) -> Vec<(String, String)> {
    emu.requests()
        .iter()
        .filter(|r| r["operation"] == "MeterUsage")
        .map(|r| (r["caller"].as_str().unwrap().to_string(), r["outcome"].as_str().unwrap().to_string()))
        .collect()
}

fn record<'r>(records: &'r [Value], caller: &str, dimension: &str, hour: i64) -> Option<&'r Value> {
    records.iter().find(|r| r["caller"] == caller && r["dimension"] == dimension && r["hour"] == hour)
}

/// Runs meterd with its clock `hours` back and sends `events` (built from that clock's now), then
/// stops it: meterd accepts usage only for hours it has not sealed, so past hours are made this way.
fn send_in_the_past(launch: Launch, hours: i64, events: impl FnOnce(i64) -> Vec<Value>) {
    let meterd = launch.offset(-hours * 3600).start();
    let replies = meterd.send(&events(now_secs() - hours * 3600));
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    // Hours sealed at this start are settled first: a kill during their call would have the next
    // start send them again (with the same ClientToken, so billed once, but counted here twice).
    meterd.wait_metric("meterd_records{state=\"pending\"}", 0.0, Duration::from_secs(10));
    // Killed, not stopped: a stopping meter_usage meterd submits its current hour at once.
    meterd.kill9();
}

#[test]
fn each_ended_hour_goes_in_one_meter_usage_call_per_dimension() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = || metered(dir.path(), &emu).env("METERD_SUBMIT__SEAL_DELAY", "5m");
    let (h5, h4, now_hour) = (hour_start(5), hour_start(4), hour_start(0));
    send_in_the_past(launch(), 5, |now| {
        assert_eq!(now.div_euclid(3600) * 3600, h5);
        vec![usage("cpu", 3, h5), usage("cpu", 4, now), usage("gpu", 1, h5 + 1)]
    });
    send_in_the_past(launch(), 4, |now| {
        vec![
            json!({ "dimension": "cpu", "quantity": 5, "timestamp": now, "tags": {"team": "a"} }),
            json!({ "dimension": "cpu", "quantity": 6, "timestamp": h4, "tags": {"team": "b"} }),
            json!({ "dimension": "cpu", "quantity": 2, "timestamp": h4 + 1 }),
        ]
    });
    let meterd = launch().start();
    let replies = meterd.send(&[
        usage("cpu", 9, now_secs()),
        json!({ "customer_aws_account_id": "111122223333", "dimension": "cpu", "quantity": 1 }),
    ]);
    assert_eq!(replies[0]["ok"], true);
    assert_eq!(replies[1]["error"], "invalid_field");
    assert_eq!(
        replies[1]["message"],
        "`customer_aws_account_id` is not allowed with aws.mode = \"meter_usage\": MeterUsage bills the account whose credentials meterd uses"
    );

    let records = emu.wait_records(3, Duration::from_secs(30));
    assert_eq!(records.len(), 3, "{records:?}");
    for (dimension, hour, quantity) in [("cpu", h5, 7), ("gpu", h5, 1), ("cpu", h4, 13)] {
        let r = record(&records, ACCESS_KEY, dimension, hour).unwrap_or_else(|| panic!("{dimension} {hour}"));
        assert_eq!(r["operation"], "MeterUsage");
        assert_eq!(r["product_code"], PRODUCT);
        assert_eq!(r["timestamp"], hour, "the timestamp sent is the hour start");
        assert_eq!(r["quantity"], quantity);
        assert!(r.get("customer_aws_account_id").is_none());
    }
    let tagged = record(&records, ACCESS_KEY, "cpu", h4).unwrap();
    assert_eq!(
        tagged["allocations"],
        json!([
            {"tags": {}, "quantity": 2},
            {"tags": {"team": "a"}, "quantity": 5},
            {"tags": {"team": "b"}, "quantity": 6},
        ])
    );
    assert_eq!(record(&records, ACCESS_KEY, "gpu", h5).unwrap()["allocations"], json!([]));
    // One call per dimension and hour, and none for the hour that has not ended.
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 3.0, Duration::from_secs(10));
    assert_eq!(meter_calls(&emu), vec![(ACCESS_KEY.to_string(), "ok".to_string()); 3]);
    assert!(emu.requests().iter().all(|r| r["operation"] != "BatchMeterUsage"));
    assert!(record(&emu.records(), ACCESS_KEY, "cpu", now_hour).is_none());
    assert_eq!(meterd.metric("meterd_records{state=\"open\"}"), 1.0);
}

#[test]
fn every_caller_owns_its_records_and_a_different_quantity_is_a_duplicate_request() {
    let emu = Emu::start(|config| {
        config.credentials.push(meterd::emulator::Credential {
            access_key_id: OTHER_KEY.into(),
            secret_access_key: SECRET.into(),
        });
    });
    let hour = hour_start(5);
    // This caller already reported gpu for the hour with another quantity.
    let client = common::client(&emu.url(), ACCESS_KEY);
    emu.runtime.block_on(async {
        client
            .meter_usage()
            .product_code(PRODUCT)
            .usage_dimension("gpu")
            .usage_quantity(1)
            .timestamp(aws_sdk_marketplacemetering::primitives::DateTime::from_secs(hour + 5))
            .send()
            .await
            .unwrap();
    });

    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let launch_a = || metered(dir_a.path(), &emu);
    let launch_b = || metered(dir_b.path(), &emu).env("AWS_ACCESS_KEY_ID", OTHER_KEY);
    send_in_the_past(launch_a(), 5, |now| vec![usage("cpu", 10, now), usage("gpu", 5, now)]);
    send_in_the_past(launch_b(), 5, |now| vec![usage("cpu", 20, now), usage("gpu", 5, now)]);
    let (a, b) = (launch_a().start(), launch_b().start());

    a.wait_metric("meterd_dead_letters{reason=\"duplicate_record\"}", 1.0, Duration::from_secs(30));
    a.wait_metric("meterd_records{state=\"accepted\"}", 1.0, Duration::from_secs(30));
    b.wait_metric("meterd_records{state=\"accepted\"}", 2.0, Duration::from_secs(30));
    let records = emu.records();
    assert_eq!(records.len(), 4);
    assert_eq!(record(&records, ACCESS_KEY, "cpu", hour).unwrap()["quantity"], 10);
    assert_eq!(record(&records, OTHER_KEY, "cpu", hour).unwrap()["quantity"], 20);
    assert_eq!(record(&records, OTHER_KEY, "gpu", hour).unwrap()["quantity"], 5);
    assert_eq!(record(&records, ACCESS_KEY, "gpu", hour).unwrap()["quantity"], 1, "the first quantity stays");
    let error = a.wait_log("DuplicateRequestException: this caller already reported", Duration::from_secs(5));
    assert_eq!(error["level"], "ERROR");
    let (code, out, _) = Meterd::cli(&launch_a(), &["dlq", "export", "--format", "json"]);
    assert_eq!(code, 0);
    let dead: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    let dead = &dead[0];
    assert_eq!(dead["dimension"], "gpu");
    assert_eq!(dead["quantity"], 5);
    assert_eq!(dead["reason"], "duplicate_record");
    assert!(dead["message"].as_str().unwrap().starts_with("DuplicateRequestException: "), "{dead}");
}

#[test]
fn a_record_in_flight_at_kill_9_is_resent_unchanged_and_billed_once() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    send_in_the_past(metered(dir.path(), &emu), 5, |now| vec![usage("cpu", 42, now)]);
    // Every call is applied and then its connection dropped: meterd never hears the answer.
    emu.faults(json!({ "drop_after_apply": 1000 }));
    let meterd = metered(dir.path(), &emu).start();
    meterd.wait_metric(
        "meterd_api_requests_total{operation=\"MeterUsage\",outcome=\"connection\"}",
        2.0,
        Duration::from_secs(30),
    );
    meterd.kill9();
    emu.clear_faults();

    let meterd = metered(dir.path(), &emu).start();
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 1.0, Duration::from_secs(30));
    let records = emu.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["quantity"], 42);
    let calls = meter_calls(&emu);
    assert!(calls.len() >= 3, "{calls:?}");
    assert!(calls[..calls.len() - 1].iter().all(|(_, outcome)| outcome == "dropped"), "{calls:?}");
    assert_eq!(calls.last().unwrap().1, "ok");
    // The receipt meterd keeps is the id the emulator gave the first time.
    let launch = metered(dir.path(), &emu);
    let (code, out, _) = Meterd::cli(&launch, &["receipts", "export", "--since", "0", "--format", "json"]);
    assert_eq!(code, 0);
    let receipts: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(receipts[0]["metering_record_id"], records[0]["metering_record_id"]);
    assert_eq!(meterd.metric("meterd_dead_letters{reason=\"duplicate_record\"}"), 0.0);
}

#[test]
fn heartbeat_dimensions_get_a_zero_record_for_every_hour_without_usage() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = |offset: i64| {
        metered(dir.path(), &emu)
            .offset(offset)
            .env("METERD_SUBMIT__SEAL_DELAY", "5m")
            .env("METERD_SUBMIT__HEARTBEAT_DIMENSIONS", "[cpu,gpu]")
    };
    // The first hour meterd has not sealed when it starts at `t`, and the last it has sealed.
    let first = |t: i64| (t - 300).div_euclid(3600) * 3600;
    let last = |t: i64| first(t) - 3600;
    // First started four hours ago (by its clock), with some cpu usage, then stopped; every hour
    // since is still inside MeterUsage's 6-hour deadline.
    let four_ago = 4 * 3600;
    let from = first(now_secs() - four_ago);
    let meterd = launch(-four_ago).start();
    let used_at = now_secs() - four_ago;
    assert!(meterd.send(&[usage("cpu", 8, used_at)]).iter().all(|r| r["ok"] == true));
    assert!(meterd.signal("TERM").success());
    assert_eq!(from, first(now_secs() - four_ago), "the test ran across a seal boundary; run it again");

    // Back at the real time: every hour from the first unsealed one to the last ended one.
    let through = last(now_secs());
    let meterd = launch(0).start();
    let hours = ((through - from) / 3600 + 1) as usize;
    meterd.wait_metric("meterd_records{state=\"accepted\"}", (2 * hours) as f64, Duration::from_secs(30));
    assert_eq!(through, last(now_secs()), "the test ran across a seal boundary; run it again");
    let mut by_dimension: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    for r in &emu.records() {
        assert_eq!(r["operation"], "MeterUsage");
        by_dimension
            .entry(r["dimension"].as_str().unwrap().to_string())
            .or_default()
            .push((r["hour"].as_i64().unwrap(), r["quantity"].as_u64().unwrap()));
    }
    let used_hour = used_at.div_euclid(3600) * 3600;
    let expected = |dimension: &str| -> Vec<(i64, u64)> {
        (0..hours as i64)
            .map(|i| from + i * 3600)
            .map(|hour| (hour, if dimension == "cpu" && hour == used_hour { 8 } else { 0 }))
            .collect()
    };
    assert_eq!(by_dimension.len(), 2);
    for (dimension, list) in &mut by_dimension {
        list.sort();
        assert_eq!(*list, expected(dimension), "{dimension}");
    }
    assert!(expected("cpu").contains(&(used_hour, 8)));
}

#[test]
fn check_aws_reports_whether_the_credentials_may_meter() {
    let emu = Emu::start(|config| config.catalogue.authorized_callers = Some(vec![ACCESS_KEY.into()]));
    let dir = tempfile::tempdir().unwrap();
    let allowed = metered(dir.path(), &emu).env("METERD_AWS__DIMENSIONS", "[cpu]");
    let (code, out, err) = Meterd::cli(&allowed, &["check-aws"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(
            "ok: these credentials may call aws-marketplace:MeterUsage for product prod-test in us-east-1"
        ),
        "{out}"
    );

    emu.control("PUT", "/_emulator/catalogue", json!({ "authorized_callers": ["AKIDSOMEONEELSE"] }));
    let (code, _, err) = Meterd::cli(&allowed, &["check-aws", "--dimension", "gpu"]);
    assert_eq!(code, 1);
    assert!(err.contains("not allowed: these credentials may not call aws-marketplace:MeterUsage"), "{err}");
    assert!(err.contains("UnauthorizedException") || err.contains("not authorized"), "{err}");

    let (code, _, err) = Meterd::cli(&Launch::new(dir.path(), &emu), &["check-aws", "--dimension", "cpu"]);
    assert_eq!(code, 64);
    assert!(err.contains("needs aws.mode = \"meter_usage\""), "{err}");
    // Nothing was metered by any of it.
    assert!(emu.records().is_empty());
}

fn registering<'a>(dir: &'a std::path::Path, emu: &Emu) -> Launch<'a> {
    metered(dir, emu).env("METERD_AWS__REGISTER_USAGE", "true")
}

#[test]
fn register_usage_retries_throttling_and_reports_the_signature() {
    let emu = Emu::start(|config| {
        config.catalogue.public_key_version = 2;
        config.catalogue.rotated_below_version = Some(2);
    });
    emu.faults(json!({ "throttle": 2 }));
    let dir = tempfile::tempdir().unwrap();
    let meterd = registering(dir.path(), &emu).env("METERD_AWS__NONCE", "n-123").start();
    let registers: Vec<String> = emu
        .requests()
        .iter()
        .filter(|r| r["operation"] == "RegisterUsage")
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(registers, ["ThrottlingException", "ThrottlingException", "ok"]);
    assert_eq!(meterd.get("/readyz").0, 200);
    let probing = registering(dir.path(), &emu).env("METERD_METRICS__LISTEN", &meterd.metrics.to_string());
    assert_eq!(Meterd::cli(&probing, &["probe", "ready"]).0, 0);
    let (code, out, _) = Meterd::cli(&registering(dir.path(), &emu), &["status", "--json"]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).unwrap();
    let registration = &status["registration"];
    assert_eq!(registration["public_key_version"], 1);
    let signature = registration["signature"].as_str().unwrap();
    assert_eq!(signature.split('.').count(), 3, "a JWT: {signature}");
    let payload = signature.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
            .unwrap();
    assert_eq!(claims["productCode"], PRODUCT);
    assert_eq!(claims["nonce"], "n-123");
    assert!(registration["public_key_rotation_timestamp"].as_i64().unwrap() > 0);
    let (_, text, _) = Meterd::cli(&registering(dir.path(), &emu), &["status"]);
    assert!(text.contains(&format!("signature {signature}")), "{text}");
    assert!(text.contains("public key rotation: "), "{text}");
    assert_eq!(
        meterd.metric("meterd_api_requests_total{operation=\"RegisterUsage\",outcome=\"throttled\"}"),
        2.0
    );
}

#[test]
fn a_refused_registration_never_turns_ready_and_exits_with_its_own_code() {
    let cases: [(&str, Value, i32); 5] = [
        ("CustomerNotEntitledException", json!({ "entitled_callers": [] }), 10),
        ("PlatformNotSupportedException", json!({ "platform_supported": false }), 11),
        ("InvalidRegionException", json!({ "register_regions": ["eu-west-1"] }), 12),
        ("InvalidProductCodeException", json!({ "product_codes": ["prod-other"] }), 13),
        ("AccessDeniedException", json!({ "authorized_callers": ["AKIDSOMEONEELSE"] }), 14),
    ];
    let emu = Emu::start(|_| {});
    for (error, catalogue, exit) in cases {
        emu.control("PUT", "/_emulator/catalogue", catalogue);
        // Slow answers, so /readyz can be asked while meterd registers.
        emu.faults(json!({ "latency_ms": 700 }));
        let dir = tempfile::tempdir().unwrap();
        let meterd = Meterd::spawn(registering(dir.path(), &emu));
        let (status, body) = meterd.get("/readyz");
        assert_eq!(status, 503, "{error}");
        assert!(body.contains("registering usage with AWS Marketplace"), "{error}: {body}");
        // What a container health check sees meanwhile: alive, not ready.
        let probing =
            registering(dir.path(), &emu).env("METERD_METRICS__LISTEN", &meterd.metrics.to_string());
        assert_eq!(Meterd::cli(&probing, &["probe", "live"]).0, 0);
        let (code, _, err) = Meterd::cli(&probing, &["probe", "ready"]);
        assert_eq!(code, 1);
        assert!(err.contains("/readyz answered 503: not ready: registering usage"), "{err}");
        let line = meterd.wait_log("RegisterUsage refused", Duration::from_secs(30));
        assert_eq!(line["code"], error, "{line}");
        assert_eq!(line["level"], "ERROR");
        assert!(!meterd.logs().iter().any(|l| l.contains("meterd ready")), "{error}: became ready");
        let status = meterd.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(exit), "{error}");
        emu.clear_faults();
    }
}
