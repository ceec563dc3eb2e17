//! How the submit stage keeps billing flowing when one record or one customer cannot be billed:
//! an oversized record and an unmodelled client error never hold back other customers, a customer
//! not subscribed yet is checked again until its deadline, a validation error every record of a
//! batch shares pauses instead of dead-lettering them all, and account-id and licence records go
//! through a service that refuses an empty `CustomerIdentifier`. The real `meterd` against the
//! emulator.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd, PRODUCT, event, find};
use common::{hour_start, now_secs, wait_until};
use meterd::aggregate::{Allocation, SealedRecord};
use meterd::model::{Customer, RecordKey, Scope};
use meterd::outbox::{Outbox, RecordState, StoredRecord};
use serde_json::{Value, json};

const LATER: i64 = 4 * 3600;
const LICENSE: &str = "arn:aws:license-manager::123456789012:license/l-0123456789abcdef0";

fn customer(i: usize) -> String {
    format!("{}", 300_000_000_000u64 + i as u64)
}

/// One event per customer in `hour`, quantity = index + 1.
fn events(customers: usize, dimension: &str, hour: i64) -> Vec<Value> {
    (0..customers)
        .map(|i| {
            let mut e = event(&customer(i), dimension, i as u64 + 1);
            e["timestamp"] = json!(hour + 5);
            e
        })
        .collect()
}

/// Sends `events` to a fresh meterd, stops it, and starts it again four hours later (the
/// emulator's clock too), with `env` set on the second run.
fn sealed_and_submitting(emu: &Emu, dir: &std::path::Path, events: &[Value], env: &[(&str, &str)]) -> Meterd {
    let meterd = Launch::new(dir, emu).start();
    let replies = meterd.send(events);
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    assert!(meterd.signal("TERM").success());
    emu.set_clock_offset(LATER);
    env.iter().fold(Launch::new(dir, emu).offset(LATER), |launch, (k, v)| launch.env(k, v)).start()
}

fn outcomes(emu: &Emu) -> Vec<String> {
    emu.requests().iter().map(|r| r["outcome"].as_str().unwrap().to_string()).collect()
}

/// When the emulator answered each request that had a record answered `status`, in ms.
fn answered_with(emu: &Emu, status: &str) -> Vec<i64> {
    let requests = emu.requests();
    let with = requests.iter().filter(|r| r["statuses"].get(status).is_some());
    with.map(|r| r["at_ms"].as_i64().unwrap()).collect()
}

fn dead_letters(dir: &std::path::Path, emu: &Emu) -> Vec<Value> {
    let (code, out, err) = Meterd::cli(&Launch::new(dir, emu), &["dlq", "export", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
}

#[test]
fn an_unknown_client_error_backs_off_only_its_batch_while_the_rest_flows() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    // Any request holding customer 3's record is refused with an error no model names.
    emu.faults(json!({"error": {"type": "SomethingNewException", "status": 400, "count": 100000, "customer": customer(3)}}));
    let meterd = sealed_and_submitting(&emu, dir.path(), &events(30, "requests", hour_start(0)), &[]);
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 29.0, Duration::from_secs(30));
    let records = emu.records();
    assert_eq!(records.len(), 29);
    assert!(find(&records, &customer(3), "requests", hour_start(0)).is_none());
    // Still pending and retried with backoff (the batch, its half, then the record alone, and
    // alone again); never dead-lettered, never a pause of everything.
    let alone = || {
        let requests = emu.requests();
        requests.iter().filter(|r| r["outcome"] == "SomethingNewException" && r["records"] == 1).count()
    };
    wait_until("the record refused alone twice", Duration::from_secs(30), || alone() >= 2);
    assert_eq!(meterd.metric("meterd_records{state=\"pending\"}"), 1.0);
    assert_eq!(meterd.metric("meterd_records{state=\"dead_letter\"}"), 0.0);
    assert_eq!(meterd.metric("meterd_submission_paused"), 0.0);
    assert!(!meterd.logs().iter().any(|l| l.contains("submission paused")));
    // The record goes once the service takes it.
    emu.clear_faults();
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 30.0, Duration::from_secs(30));
    assert_eq!(find(&emu.records(), &customer(3), "requests", hour_start(0)).unwrap()["quantity"], 4);
}

/// A record with 2,500 tag sets of five tags with 60-character values: within the count limit,
/// but its request is over 1 MB. Ingest bounds records now; this one was sealed before that.
fn oversized(hour: i64) -> SealedRecord {
    let allocations: Vec<Allocation> = (0..2500)
        .map(|i| Allocation {
            tags: ["env", "owner", "region", "service", "team"]
                .iter()
                .map(|k| (k.to_string(), format!("{k}-{i:0>56}")))
                .collect(),
            quantity: 1,
        })
        .collect();
    SealedRecord {
        key: RecordKey {
            scope: Scope::ProductCode(PRODUCT.into()),
            customer: Customer::AwsAccountId(customer(0)),
            dimension: "requests".into(),
            hour,
        },
        quantity: 2500,
        allocations,
    }
}

fn plain(i: usize, hour: i64) -> SealedRecord {
    SealedRecord {
        key: RecordKey {
            scope: Scope::ProductCode(PRODUCT.into()),
            customer: Customer::AwsAccountId(customer(i)),
            dimension: "requests".into(),
            hour,
        },
        quantity: i as u32,
        allocations: vec![Allocation { tags: Vec::new(), quantity: i as u32 }],
    }
}

#[test]
fn a_record_too_large_to_send_is_dead_lettered_unsent_and_holds_back_no_one() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let hour = hour_start(1);
    {
        let (outbox, _) = Outbox::open(&dir.path().join("data"), Default::default()).unwrap();
        let mut records = vec![oversized(hour)];
        records.extend((1..30).map(|i| plain(i, hour)));
        for record in records {
            outbox
                .settle(&StoredRecord {
                    record,
                    sealed_at: now_secs(),
                    state: RecordState::Pending,
                    generation: 0,
                })
                .unwrap();
        }
        outbox.barrier().unwrap();
    }
    let meterd = Launch::new(dir.path(), &emu).start();
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 29.0, Duration::from_secs(30));
    meterd.wait_metric("meterd_dead_letters{reason=\"invalid\"}", 1.0, Duration::from_secs(10));
    // Never sent: no request was refused for its size, or for anything else.
    assert!(emu.requests().iter().all(|r| r["outcome"] == "ok"), "{:?}", outcomes(&emu));
    assert!(find(&emu.records(), &customer(0), "requests", hour).is_none());
    drop(meterd);
    let dead = dead_letters(dir.path(), &emu);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["customer_aws_account_id"], customer(0));
    let message = dead[0]["message"].as_str().unwrap();
    assert!(message.starts_with("its request would be 1"), "{message}");
    assert!(message.ends_with("bytes; the service takes requests under 1 MB (1000000 bytes)"), "{message}");
}

#[test]
fn a_customer_not_subscribed_yet_is_checked_again_and_billed_once_subscribed() {
    let emu = Emu::start(|c| c.catalogue.subscribed_customers = Some(vec![customer(0), customer(1)]));
    let dir = tempfile::tempdir().unwrap();
    let env = [("METERD_SUBMIT__SUBSCRIPTION_RECHECK", "1s")];
    let meterd = sealed_and_submitting(&emu, dir.path(), &events(3, "requests", hour_start(0)), &env);
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 2.0, Duration::from_secs(30));
    meterd.wait_metric("meterd_records_awaiting_subscription", 1.0, Duration::from_secs(10));
    assert_eq!(meterd.metric("meterd_dead_letters{reason=\"customer_not_subscribed\"}"), 0.0);
    assert_eq!(meterd.metric("meterd_records{state=\"pending\"}"), 1.0);
    // Checked again every `submit.subscription_recheck` (1 s), not at the pace of retries (50 ms
    // doubling to 400 ms): each answer at least a second after the one before.
    let answered = || answered_with(&emu, "CustomerNotSubscribed");
    wait_until("four CustomerNotSubscribed answers", Duration::from_secs(30), || answered().len() >= 4);
    let at = answered();
    assert!(at.windows(2).all(|w| w[1] - w[0] >= 990), "answered at {at:?} (ms)");

    let subscribed = json!({ "subscribed_customers": [customer(0), customer(1), customer(2)] });
    emu.control("PUT", "/_emulator/catalogue", subscribed);
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 3.0, Duration::from_secs(10));
    assert_eq!(find(&emu.records(), &customer(2), "requests", hour_start(0)).unwrap()["quantity"], 3);
    assert_eq!(meterd.metric("meterd_records_awaiting_subscription"), 0.0);
    assert_eq!(meterd.metric("meterd_records{state=\"dead_letter\"}"), 0.0);
}

#[test]
fn a_customer_never_subscribed_is_dead_lettered_at_its_deadline_with_the_last_answer() {
    let emu = Emu::start(|c| c.catalogue.subscribed_customers = Some(vec![customer(0)]));
    let dir = tempfile::tempdir().unwrap();
    let hour = hour_start(0);
    let meterd = Launch::new(dir.path(), &emu).start();
    assert!(meterd.send(&events(2, "requests", hour)).iter().all(|r| r["ok"] == true));
    assert!(meterd.signal("TERM").success());
    // Start again 6 seconds before the hour's deadline (12 hours in these tests).
    let offset = hour + 12 * 3600 - 6 - now_secs();
    emu.set_clock_offset(offset);
    let meterd =
        Launch::new(dir.path(), &emu).offset(offset).env("METERD_SUBMIT__SUBSCRIPTION_RECHECK", "1s").start();
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 1.0, Duration::from_secs(10));
    meterd.wait_metric(
        "meterd_dead_letters{reason=\"customer_not_subscribed\"}",
        1.0,
        Duration::from_secs(70),
    );
    assert_eq!(meterd.metric("meterd_dead_letters{reason=\"expired\"}"), 0.0);
    assert!(emu.statuses()["CustomerNotSubscribed"] >= 2);
    drop(meterd);
    let dead = dead_letters(dir.path(), &emu);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["customer_aws_account_id"], customer(1));
    let message = dead[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "CustomerNotSubscribed: the customer has no subscription to the product (checked again every 1s until the record's deadline; "
        ),
        "{message}"
    );
}

#[test]
fn a_validation_error_every_record_shares_pauses_instead_of_dead_lettering_the_hour() {
    let emu = Emu::start(|c| c.catalogue.dimensions = Some(vec!["requests".into()]));
    let dir = tempfile::tempdir().unwrap();
    // The listing lost the dimension every record of the hour uses (a deploy went wrong).
    let meterd = sealed_and_submitting(&emu, dir.path(), &events(6, "api_calls", hour_start(0)), &[]);
    let error = meterd.wait_log("every record of a batch was refused alone", Duration::from_secs(30));
    assert_eq!(error["level"], "ERROR");
    assert_eq!(error["code"], "InvalidUsageDimensionException");
    meterd.wait_metric("meterd_submission_paused", 1.0, Duration::from_secs(5));
    assert_eq!(meterd.metric("meterd_records{state=\"dead_letter\"}"), 0.0);
    assert_eq!(meterd.metric("meterd_records{state=\"pending\"}"), 6.0);
    assert!(meterd.get("/readyz").1.contains("submission paused"));
    // Paused again without splitting the batch again: from the pause on, each request holds the
    // whole batch, at least `submit.pause` (300 ms) after the one before.
    let paused_after = emu.requests().len();
    wait_until("three requests after the pause", Duration::from_secs(30), || {
        emu.requests().len() >= paused_after + 3
    });
    let after = emu.requests().split_off(paused_after);
    assert!(after.iter().all(|r| r["records"] == 6), "{after:?}");
    let at: Vec<i64> = after.iter().map(|r| r["at_ms"].as_i64().unwrap()).collect();
    assert!(at.windows(2).all(|w| w[1] - w[0] >= 290), "requests at {at:?} (ms)");

    emu.control("PUT", "/_emulator/catalogue", json!({ "dimensions": ["requests", "api_calls"] }));
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 6.0, Duration::from_secs(10));
    meterd.wait_metric("meterd_submission_paused", 0.0, Duration::from_secs(5));
    assert_eq!(meterd.metric("meterd_records{state=\"dead_letter\"}"), 0.0);
}

#[test]
fn account_id_and_licence_records_go_through_a_service_strict_about_customer_fields() {
    let emu = Emu::start(|c| c.catalogue.licenses = Some(BTreeMap::from([(LICENSE.into(), PRODUCT.into())])));
    let dir = tempfile::tempdir().unwrap();
    let mut sent = events(2, "requests", hour_start(0));
    sent[1]["license_arn"] = json!(LICENSE);
    let meterd = sealed_and_submitting(&emu, dir.path(), &sent, &[]);
    meterd.wait_metric("meterd_records{state=\"accepted\"}", 2.0, Duration::from_secs(30));
    let records = emu.records();
    let by_account = find(&records, &customer(0), "requests", hour_start(0)).unwrap();
    assert_eq!((&by_account["product_code"], by_account.get("license_arn")), (&json!(PRODUCT), None));
    let licensed = find(&records, &customer(1), "requests", hour_start(0)).unwrap();
    assert_eq!((licensed.get("product_code"), &licensed["license_arn"]), (None, &json!(LICENSE)));
    assert!(records.iter().all(|r| r.get("customer_identifier").is_none()));
    assert!(emu.requests().iter().all(|r| r["outcome"] == "ok"), "{:?}", outcomes(&emu));
}
