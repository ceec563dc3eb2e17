//! The submitter's view of the Metering Service (`SdkMeteringApi`) against the emulator: how sealed
//! records go on the wire, how per-record outcomes map back, and how each failure is classified.

mod common;

use std::time::Duration;

use aws_sdk_marketplacemetering::config::retry::RetryConfig;
use common::*;
use meterd::aggregate::{Allocation, SealedRecord};
use meterd::emulator::EmulatorConfig;
use meterd::model::{Customer, RecordKey, Scope};
use meterd::submit::api::FailureKind;
use meterd::submit::{Disposition, MeteringApi, RecordOutcome, SdkMeteringApi, classify};
use serde_json::{Value, json};

const PRODUCT: &str = "prod-submit";
const LICENSE: &str = "arn:aws:license-manager::123456789012:license/l-submit";

fn sealed(
    customer: &str,
    dimension: &str,
    hour: i64,
    allocations: &[(&[(&str, &str)], u32)],
) -> SealedRecord {
    let allocations: Vec<Allocation> = allocations
        .iter()
        .map(|(tags, quantity)| Allocation {
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            quantity: *quantity,
        })
        .collect();
    SealedRecord {
        key: RecordKey {
            scope: Scope::ProductCode(PRODUCT.into()),
            customer: Customer::AwsAccountId(customer.into()),
            dimension: dimension.into(),
            hour,
        },
        quantity: allocations.iter().map(|a| a.quantity).sum(),
        allocations,
    }
}

fn api(url: &str, key: &str) -> SdkMeteringApi {
    SdkMeteringApi::new(client(url, key))
}

#[tokio::test]
async fn outcomes_map_back_to_records_and_resends_are_idempotent() {
    let mut config = EmulatorConfig::default();
    config.catalogue.subscribed_customers = Some(vec!["111122223333".into(), "444455556666".into()]);
    let emulator = start(config).await;
    let api = api(&emulator.endpoint_url(), "AKIDSUBMIT");
    let hour = hour_start(2);
    let records = vec![
        sealed("111122223333", "requests", hour, &[(&[], 12)]),
        sealed("999999999999", "requests", hour, &[(&[], 1)]),
        sealed("444455556666", "requests", hour, &[(&[], 3), (&[("env", "prod"), ("team", "a")], 4)]),
    ];
    let outcomes = api.batch_meter_usage(Some(PRODUCT), &records).await.unwrap();
    let ids: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            RecordOutcome::Accepted { metering_record_id } => Some(metering_record_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(outcomes[1], RecordOutcome::CustomerNotSubscribed);

    let stored = records_of(&emulator).await;
    assert_eq!(stored.len(), 2);
    assert_eq!((stored[0]["timestamp"].as_i64(), stored[0]["quantity"].as_i64()), (Some(hour), Some(12)));
    assert_eq!(stored[0]["allocations"], json!([]), "untagged-only usage goes without allocations");
    assert_eq!(
        stored[1]["allocations"],
        json!([{"tags": {}, "quantity": 3}, {"tags": {"env": "prod", "team": "a"}, "quantity": 4}])
    );

    // The same sealed records again: the same receipts.
    let again = api.batch_meter_usage(Some(PRODUCT), &records).await.unwrap();
    assert_eq!(again, outcomes);
    // A record whose quantity changed after it may have been sent is a conflict.
    let changed = vec![sealed("111122223333", "requests", hour, &[(&[], 13)])];
    assert_eq!(
        api.batch_meter_usage(Some(PRODUCT), &changed).await.unwrap(),
        vec![RecordOutcome::DuplicateRecord]
    );
}

#[tokio::test]
async fn unprocessed_records_are_reported_as_such() {
    let emulator = start(EmulatorConfig::default()).await;
    let api = api(&emulator.endpoint_url(), "AKIDUNPROCESSED");
    control(emulator.addr(), "POST", "/_emulator/faults", json!({"unprocessed_share": 0.5})).await;
    let hour = hour_start(1);
    let records: Vec<SealedRecord> =
        (1..=4).map(|i| sealed(&i.to_string(), "d", hour, &[(&[], i)])).collect();
    let outcomes = api.batch_meter_usage(Some(PRODUCT), &records).await.unwrap();
    let unprocessed: Vec<bool> = outcomes.iter().map(|o| *o == RecordOutcome::Unprocessed).collect();
    assert_eq!(unprocessed, vec![false, true, false, true]);
}

#[tokio::test]
async fn license_records_are_sent_without_a_product_code() {
    let emulator = start(EmulatorConfig::default()).await;
    let api = api(&emulator.endpoint_url(), "AKIDLICENSE");
    let mut record = sealed("111122223333", "d", hour_start(1), &[(&[], 2)]);
    record.key.scope = Scope::LicenseArn(LICENSE.into());
    let outcomes = api.batch_meter_usage(None, &[record]).await.unwrap();
    assert!(matches!(outcomes[0], RecordOutcome::Accepted { .. }), "{outcomes:?}");
    assert_eq!(records_of(&emulator).await[0]["license_arn"], LICENSE);
}

async fn records_of(emulator: &meterd::emulator::RunningEmulator) -> Vec<Value> {
    records(emulator.addr()).await
}

async fn failure_of(api: &SdkMeteringApi, records: &[SealedRecord]) -> (FailureKind, Disposition) {
    let failure = api.batch_meter_usage(Some(PRODUCT), records).await.unwrap_err();
    let disposition = classify(&failure);
    (failure.kind, disposition)
}

fn service(status: u16, code: &str) -> FailureKind {
    FailureKind::Service { status, code: code.into() }
}

#[tokio::test]
async fn failures_are_classified() {
    let mut config = EmulatorConfig::default();
    config.catalogue.dimensions = Some(vec!["d".into()]);
    let emulator = start(config).await;
    let api = api(&emulator.endpoint_url(), "AKIDFAILURES");
    let hour = hour_start(1);
    let good = vec![sealed("1", "d", hour, &[(&[], 1)])];
    let fault = |body: Value| control(emulator.addr(), "POST", "/_emulator/faults", body);

    fault(json!({"throttle": 1})).await;
    assert_eq!(failure_of(&api, &good).await, (service(400, "ThrottlingException"), Disposition::Retry));
    fault(json!({"http_500": 1})).await;
    assert_eq!(
        failure_of(&api, &good).await,
        (service(500, "InternalServiceErrorException"), Disposition::Retry)
    );
    fault(json!({"drop_after_apply": 1})).await;
    assert_eq!(failure_of(&api, &good).await, (FailureKind::Connection, Disposition::Retry));
    assert_eq!(records(emulator.addr()).await.len(), 1, "applied although unanswered");
    fault(json!({"error": {"type": "DisabledApiException"}})).await;
    assert_eq!(failure_of(&api, &good).await, (service(400, "DisabledApiException"), Disposition::Pause));

    let mut bad_dimension = good.clone();
    bad_dimension.push(sealed("2", "cpu", hour, &[(&[], 1)]));
    assert_eq!(
        failure_of(&api, &bad_dimension).await,
        (service(400, "InvalidUsageDimensionException"), Disposition::Isolate)
    );
    let too_old = vec![sealed("1", "d", hour_start(25), &[(&[], 1)])];
    assert_eq!(
        failure_of(&api, &too_old).await,
        (service(400, "TimestampOutOfBoundsException"), Disposition::Isolate)
    );
    let unknown_product = api.batch_meter_usage(Some("bad product"), &good).await.unwrap_err();
    assert_eq!(
        classify(&unknown_product),
        Disposition::Isolate,
        "a malformed product code is a ValidationException"
    );

    let wrong_region = SdkMeteringApi::new(client_with(
        &emulator.endpoint_url(),
        "AKIDFAILURES",
        SECRET,
        "eu-west-1",
        RetryConfig::disabled(),
    ));
    assert_eq!(
        failure_of(&wrong_region, &good).await,
        (service(403, "InvalidSignatureException"), Disposition::Pause)
    );
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_to_retry() {
    let emulator = start(EmulatorConfig::default()).await;
    control(emulator.addr(), "POST", "/_emulator/faults", json!({"latency_ms": 2000})).await;
    let api = SdkMeteringApi::new(client_with_timeout(
        &emulator.endpoint_url(),
        "AKIDSLOW",
        Duration::from_millis(200),
    ));
    let records = vec![sealed("1", "d", hour_start(1), &[(&[], 1)])];
    assert_eq!(failure_of(&api, &records).await, (FailureKind::Timeout, Disposition::Retry));
}
