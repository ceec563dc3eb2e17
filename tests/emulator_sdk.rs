//! The emulator driven by the unmodified Rust SDK (aws-sdk-marketplacemetering) over loopback HTTP:
//! every operation, every error and status, the `""` CustomerIdentifier quirk and each fault.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_marketplacemetering::config::retry::RetryConfig;
use aws_sdk_marketplacemetering::error::ProvideErrorMetadata;
use aws_sdk_marketplacemetering::primitives::DateTime;
use aws_sdk_marketplacemetering::types::{Tag, UsageAllocation, UsageRecord, UsageRecordResultStatus};
use common::*;
use meterd::emulator::{Catalogue, Credential, EmulatorConfig, RegistrationToken};
use serde_json::{Value, json};

const PRODUCT: &str = "prod-emulator";
const LICENSE: &str = "arn:aws:license-manager::123456789012:license/l-0123456789abcdef0";

fn record(customer: &str, dimension: &str, quantity: i32, timestamp: i64) -> UsageRecord {
    UsageRecord::builder()
        .customer_aws_account_id(customer)
        .dimension(dimension)
        .quantity(quantity)
        .timestamp(DateTime::from_secs(timestamp))
        .build()
        .unwrap()
}

fn allocation(quantity: i32, tags: &[(&str, &str)]) -> UsageAllocation {
    let mut builder = UsageAllocation::builder().allocated_usage_quantity(quantity);
    for (key, value) in tags {
        builder = builder.tags(Tag::builder().key(*key).value(*value).build().unwrap());
    }
    builder.build().unwrap()
}

/// The error name and HTTP status of a failed SDK call.
fn failure<E: ProvideErrorMetadata, R: std::fmt::Debug>(
    err: aws_sdk_marketplacemetering::error::SdkError<
        E,
        aws_sdk_marketplacemetering::config::http::HttpResponse,
    >,
    _: R,
) -> (String, u16) {
    let status = err.raw_response().map(|r| r.status().as_u16()).unwrap_or_default();
    (err.code().unwrap_or("<no code>").to_string(), status)
}

macro_rules! expect_error {
    ($call:expr, $code:expr, $status:expr) => {{
        let Err(err) = $call.await else { panic!("expected {}, got a success", $code) };
        let message = err.message().unwrap_or_default().to_string();
        assert_eq!(failure(err, ()), ($code.to_string(), $status));
        message
    }};
}

/// A BatchMeterUsage call for [`PRODUCT`] with `record`; chain `.usage_records(…)` for more.
fn one(
    client: &aws_sdk_marketplacemetering::Client,
    record: UsageRecord,
) -> aws_sdk_marketplacemetering::operation::batch_meter_usage::builders::BatchMeterUsageFluentBuilder {
    client.batch_meter_usage().product_code(PRODUCT).usage_records(record)
}

fn statuses(
    output: &aws_sdk_marketplacemetering::operation::batch_meter_usage::BatchMeterUsageOutput,
) -> Vec<UsageRecordResultStatus> {
    output.results().iter().map(|r| r.status().cloned().unwrap()).collect()
}

#[tokio::test]
async fn batch_meter_usage_accepts_and_retries_idempotently() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDBATCH");
    let hour = hour_start(1);
    let batch =
        vec![record("111122223333", "requests", 7, hour + 120), record("444455556666", "requests", 3, hour)];
    let first = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .set_usage_records(Some(batch.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(statuses(&first), vec![UsageRecordResultStatus::Success; 2]);
    assert!(first.unprocessed_records().is_empty());
    let ids: Vec<&str> = first.results().iter().map(|r| r.metering_record_id().unwrap()).collect();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(first.results()[0].usage_record().unwrap().customer_aws_account_id(), Some("111122223333"));

    // The identical batch, and a subset of it, again: same receipts, nothing new stored.
    let again = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .set_usage_records(Some(batch.clone()))
        .send()
        .await
        .unwrap();
    let again_ids: Vec<&str> = again.results().iter().map(|r| r.metering_record_id().unwrap()).collect();
    assert_eq!(again_ids, ids);
    let subset = one(&client, batch[1].clone()).send().await.unwrap();
    assert_eq!(subset.results()[0].metering_record_id(), Some(ids[1]));

    let stored = records(emulator.addr()).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["metering_record_id"], ids[0]);
    assert_eq!(stored[0]["customer_aws_account_id"], "111122223333");
    assert_eq!(stored[0]["product_code"], PRODUCT);
    assert_eq!(stored[0]["dimension"], "requests");
    assert_eq!(stored[0]["quantity"], 7);
    assert_eq!(stored[0]["hour"], hour);
    assert_eq!(stored[0]["timestamp"], hour + 120);
    assert_eq!(stored[0]["caller"], "AKIDBATCH");
    assert_eq!(stored[1]["quantity"], 3);
}

#[tokio::test]
async fn a_changed_quantity_for_the_same_hour_is_a_duplicate_record() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDDUP");
    let hour = hour_start(2);
    one(&client, record("111122223333", "gb", 10, hour)).send().await.unwrap();
    // Another timestamp in the same hour with another quantity: the first quantity wins.
    let out = one(&client, record("111122223333", "gb", 11, hour + 1800))
        .usage_records(record("111122223333", "gb", 11, hour + 3600))
        .send()
        .await
        .unwrap();
    assert_eq!(
        statuses(&out),
        vec![UsageRecordResultStatus::DuplicateRecord, UsageRecordResultStatus::Success]
    );
    assert_eq!(out.results()[0].metering_record_id(), None);
    let stored = records(emulator.addr()).await;
    let quantities: Vec<(i64, i64)> =
        stored.iter().map(|r| (r["hour"].as_i64().unwrap(), r["quantity"].as_i64().unwrap())).collect();
    assert_eq!(quantities, vec![(hour, 10), (hour + 3600, 11)]);
}

#[tokio::test]
async fn an_empty_customer_identifier_counts_as_present() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDCUST");
    let hour = hour_start(1);
    // The unmodified Rust SDK sends "CustomerIdentifier": "" next to the account id; the emulator
    // refuses both fields together, whatever one of them holds.
    let raw = raw_client(&emulator.endpoint_url(), "AKIDCUST");
    let message = expect_error!(
        one(&raw, record("111122223333", "d", 1, hour)).send(),
        "InvalidCustomerIdentifierException",
        400
    );
    assert_eq!(message, "A usage record can specify CustomerIdentifier or CustomerAWSAccountId, not both");
    let licensed = UsageRecord::builder()
        .customer_aws_account_id("111122223333")
        .license_arn(LICENSE)
        .dimension("d")
        .quantity(1)
        .timestamp(DateTime::from_secs(hour))
        .build()
        .unwrap();
    let message = expect_error!(
        raw.batch_meter_usage().usage_records(licensed.clone()).send(),
        "InvalidCustomerIdentifierException",
        400
    );
    assert_eq!(message, "CustomerIdentifier is not supported with LicenseArn; use CustomerAWSAccountId");
    assert!(records(emulator.addr()).await.is_empty());
    // Without the empty member (meterd's interceptor strips it) both go through.
    let ok = one(&client, record("111122223333", "d", 1, hour)).send().await.unwrap();
    assert_eq!(statuses(&ok), vec![UsageRecordResultStatus::Success]);
    let ok = client.batch_meter_usage().usage_records(licensed).send().await.unwrap();
    assert_eq!(statuses(&ok), vec![UsageRecordResultStatus::Success]);
    let both = UsageRecord::builder()
        .customer_identifier("legacy-customer")
        .customer_aws_account_id("111122223333")
        .dimension("d")
        .quantity(1)
        .timestamp(DateTime::from_secs(hour))
        .build()
        .unwrap();
    let message = expect_error!(one(&client, both).send(), "InvalidCustomerIdentifierException", 400);
    assert_eq!(message, "A usage record can specify CustomerIdentifier or CustomerAWSAccountId, not both");
    let neither = UsageRecord::builder()
        .dimension("d")
        .quantity(1)
        .timestamp(DateTime::from_secs(hour))
        .build()
        .unwrap();
    let message = expect_error!(one(&client, neither).send(), "InvalidCustomerIdentifierException", 400);
    assert_eq!(message, "A usage record must specify CustomerIdentifier or CustomerAWSAccountId");
    let legacy = UsageRecord::builder()
        .customer_identifier("legacy-customer")
        .dimension("d")
        .quantity(2)
        .timestamp(DateTime::from_secs(hour))
        .build()
        .unwrap();
    let out = one(&client, legacy).send().await.unwrap();
    assert_eq!(statuses(&out), vec![UsageRecordResultStatus::Success]);
    let stored = records(emulator.addr()).await;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[2]["customer_identifier"], "legacy-customer");
    assert!(stored[0].get("customer_identifier").is_none());
}

#[tokio::test]
async fn license_arn_records_belong_to_one_product_and_need_no_product_code() {
    let mut config = EmulatorConfig::default();
    let other = "arn:aws:license-manager::123456789012:license/l-other";
    config.catalogue.licenses = Some(BTreeMap::from([
        (LICENSE.to_string(), PRODUCT.to_string()),
        (other.to_string(), "prod-other".to_string()),
    ]));
    let emulator = start(config).await;
    let client = client(&emulator.endpoint_url(), "AKIDLIC");
    let hour = hour_start(1);
    let licensed = |license: &str, quantity| {
        UsageRecord::builder()
            .customer_aws_account_id("111122223333")
            .license_arn(license)
            .dimension("d")
            .quantity(quantity)
            .timestamp(DateTime::from_secs(hour))
            .build()
            .unwrap()
    };
    let out = client.batch_meter_usage().usage_records(licensed(LICENSE, 4)).send().await.unwrap();
    assert_eq!(statuses(&out), vec![UsageRecordResultStatus::Success]);
    let stored = records(emulator.addr()).await;
    assert_eq!(stored[0]["license_arn"], LICENSE);
    assert!(stored[0].get("product_code").is_none());

    let message = expect_error!(one(&client, licensed(LICENSE, 4)).send(), "ValidationException", 400);
    assert!(message.contains("ProductCode must not be specified"), "{message}");
    let message = expect_error!(
        client
            .batch_meter_usage()
            .usage_records(licensed(LICENSE, 1))
            .usage_records(licensed(other, 1))
            .send(),
        "InvalidLicenseException",
        400
    );
    assert_eq!(message, "All usage records of one call must belong to one product");
    let message = expect_error!(
        client
            .batch_meter_usage()
            .usage_records(licensed("arn:aws:license-manager::123456789012:license/l-unknown", 1))
            .send(),
        "InvalidLicenseException",
        400
    );
    assert!(message.contains("l-unknown is not valid"), "{message}");
    expect_error!(
        client.batch_meter_usage().usage_records(licensed("not-an-arn", 1)).send(),
        "ValidationException",
        400
    );
    let message = expect_error!(
        client.batch_meter_usage().usage_records(record("111122223333", "d", 1, hour)).send(),
        "InvalidProductCodeException",
        400
    );
    assert!(message.contains("ProductCode is required"), "{message}");
}

#[tokio::test]
async fn shape_constraints_are_validation_errors() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDSHAPE");
    let hour = hour_start(1);
    let too_many: Vec<UsageRecord> = (0..26).map(|i| record(&format!("1000{i:02}"), "d", 1, hour)).collect();
    let message = expect_error!(
        client.batch_meter_usage().product_code(PRODUCT).set_usage_records(Some(too_many)).send(),
        "ValidationException",
        400
    );
    assert_eq!(
        message,
        "1 validation error detected: Value '26' at 'UsageRecords' failed to satisfy constraint: Member must have length less than or equal to 25"
    );

    let long_dimension = "x".repeat(256);
    let message =
        expect_error!(one(&client, record("1", &long_dimension, 1, hour)).send(), "ValidationException", 400);
    assert!(message.contains("'UsageRecords.1.member.Dimension' failed to satisfy constraint: Member must have length less than or equal to 255"), "{message}");
    let message =
        expect_error!(one(&client, record("12-34", "d", 1, hour)).send(), "ValidationException", 400);
    assert!(message.contains("^[0-9]+$"), "{message}");
    let message = expect_error!(one(&client, record("1", "d", -5, hour)).send(), "ValidationException", 400);
    assert!(message.contains("Member must have value greater than or equal to 0"), "{message}");
    expect_error!(
        client.batch_meter_usage().product_code("bad code").usage_records(record("1", "d", 1, hour)).send(),
        "ValidationException",
        400
    );

    // Six tags, and a tag with a character outside the model's pattern.
    let six: Vec<(String, String)> = (0..6).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let six: Vec<(&str, &str)> = six.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut tagged = record("1", "d", 5, hour);
    tagged.usage_allocations = Some(vec![allocation(5, &six)]);
    let message = expect_error!(one(&client, tagged).send(), "ValidationException", 400);
    assert!(
        message
            .contains("Tags' failed to satisfy constraint: Member must have length less than or equal to 5"),
        "{message}"
    );
    let mut braces = record("1", "d", 5, hour);
    braces.usage_allocations = Some(vec![allocation(5, &[("team", "{a}")])]);
    expect_error!(one(&client, braces).send(), "ValidationException", 400);
    assert!(records(emulator.addr()).await.is_empty());
}

#[tokio::test]
async fn a_body_of_a_megabyte_or_more_is_refused() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDBIG");
    let hour = hour_start(1);
    // 2500 allocations of five 200-character tags: about 2.8 MB of JSON.
    let value = "v".repeat(200);
    let allocations: Vec<UsageAllocation> = (0..2500)
        .map(|i| {
            let id = i.to_string();
            let tags = [
                ("a", id.as_str()),
                ("b", value.as_str()),
                ("c", value.as_str()),
                ("d", value.as_str()),
                ("e", value.as_str()),
            ];
            allocation(i32::from(i == 0), &tags)
        })
        .collect();
    let mut big = record("1", "d", 1, hour);
    big.usage_allocations = Some(allocations);
    let message = expect_error!(one(&client, big).send(), "ValidationException", 413);
    assert_eq!(message, "Request body must be smaller than 1048576 bytes");
    assert!(records(emulator.addr()).await.is_empty());
}

#[tokio::test]
async fn allocations_split_a_record_by_tags() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDALLOC");
    let hour = hour_start(1);
    let mut good = record("111122223333", "d", 10, hour);
    good.usage_allocations = Some(vec![allocation(6, &[("team", "a"), ("env", "prod")]), allocation(4, &[])]);
    let out = one(&client, good).send().await.unwrap();
    assert_eq!(statuses(&out), vec![UsageRecordResultStatus::Success]);
    let stored = records(emulator.addr()).await;
    assert_eq!(
        stored[0]["allocations"],
        json!([{"tags": {"env": "prod", "team": "a"}, "quantity": 6}, {"tags": {}, "quantity": 4}])
    );

    let mut short = record("111122223333", "e", 10, hour);
    short.usage_allocations = Some(vec![allocation(6, &[("team", "a")])]);
    let message = expect_error!(one(&client, short).send(), "InvalidUsageAllocationsException", 400);
    assert_eq!(message, "The sum of allocated quantities (6) does not equal the usage quantity (10)");
    let mut twice = record("111122223333", "e", 10, hour);
    twice.usage_allocations = Some(vec![allocation(5, &[("team", "a")]), allocation(5, &[("team", "a")])]);
    let message = expect_error!(one(&client, twice).send(), "InvalidUsageAllocationsException", 400);
    assert_eq!(message, "Each usage allocation must have a unique set of tags");
    let mut repeated_key = record("111122223333", "e", 10, hour);
    repeated_key.usage_allocations = Some(vec![allocation(10, &[("team", "a"), ("team", "b")])]);
    expect_error!(one(&client, repeated_key).send(), "InvalidTagException", 400);
}

#[tokio::test]
async fn timestamps_outside_the_window_fail_the_whole_batch() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDWINDOW");
    let now = now_secs();
    let message = expect_error!(
        one(&client, record("1", "d", 1, now - 60))
            .usage_records(record("2", "d", 1, now - 24 * 3600 - 60))
            .send(),
        "TimestampOutOfBoundsException",
        400
    );
    assert!(message.contains("outside the accepted window"), "{message}");
    expect_error!(
        one(&client, record("1", "d", 1, now + 6 * 60)).send(),
        "TimestampOutOfBoundsException",
        400
    );
    assert!(records(emulator.addr()).await.is_empty(), "no record of a refused batch is stored");
    // Up to five minutes ahead is clock skew, and accepted.
    one(&client, record("1", "d", 1, now + 4 * 60)).send().await.unwrap();
    assert_eq!(records(emulator.addr()).await.len(), 1);
}

#[tokio::test]
async fn each_operation_has_its_own_window_and_a_month_closes_at_six_on_the_first() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDWINDOWS");
    let now = now_secs();
    // BatchMeterUsage accepts a record until 24 hours after it, MeterUsage until 6 hours.
    one(&client, record("1", "d", 1, now - 23 * 3600)).send().await.unwrap();
    let message = expect_error!(
        one(&client, record("2", "d", 1, now - 24 * 3600 - 60)).send(),
        "TimestampOutOfBoundsException",
        400
    );
    assert!(message.contains("outside the accepted window"), "{message}");
    meter(&client, "d", 1, now - 5 * 3600).send().await.unwrap();
    expect_error!(meter(&client, "d", 1, now - 6 * 3600 - 60).send(), "TimestampOutOfBoundsException", 400);

    // November closes at 06:00 UTC on December 1st, within the 24 hours.
    const DEC_1: i64 = 1_796_083_200; // 2026-12-01T00:00:00Z
    let set_now = |at: i64| control(emulator.addr(), "POST", "/_emulator/clock", json!({ "now": at }));
    set_now(DEC_1 + 5 * 3600).await;
    one(&client, record("3", "d", 1, DEC_1 - 3600)).send().await.unwrap();
    set_now(DEC_1 + 6 * 3600).await;
    let message = expect_error!(
        one(&client, record("4", "d", 1, DEC_1 - 3600)).send(),
        "TimestampOutOfBoundsException",
        400
    );
    assert_eq!(
        message,
        "Timestamp 1796079600 is in a billing month that closed at 1796104800 (06:00 UTC on the 1st of the next month)"
    );
    one(&client, record("5", "d", 1, DEC_1)).send().await.unwrap();
    let hours: Vec<i64> =
        records(emulator.addr()).await.iter().map(|r| r["hour"].as_i64().unwrap()).collect();
    assert_eq!(hours.len(), 4);
    assert_eq!(hours[2..], [DEC_1 - 3600, DEC_1]);
}

#[tokio::test]
async fn the_window_and_clock_are_configurable() {
    let config = EmulatorConfig { window: Some(Duration::from_secs(24 * 3600)), ..EmulatorConfig::default() };
    let emulator = start(config).await;
    let client = client(&emulator.endpoint_url(), "AKIDCLOCK");
    let now = now_secs();
    one(&client, record("1", "d", 1, now - 20 * 3600)).send().await.unwrap();
    // Move the emulator's clock two days ahead: the same kind of record is now too old.
    let clock =
        control(emulator.addr(), "POST", "/_emulator/clock", json!({"offset_seconds": 2 * 86_400})).await;
    assert_eq!(clock["offset_seconds"], 2 * 86_400);
    expect_error!(one(&client, record("1", "d", 1, now - 3600)).send(), "TimestampOutOfBoundsException", 400);
    one(&client, record("1", "d", 1, now + 2 * 86_400 - 60)).send().await.unwrap();
}

#[tokio::test]
async fn the_catalogue_decides_products_dimensions_and_subscriptions() {
    let mut config = EmulatorConfig::default();
    config.catalogue.product_codes = Some(vec![PRODUCT.into()]);
    config.catalogue.dimensions = Some(vec!["requests".into(), "gb".into()]);
    config.catalogue.subscribed_customers = Some(vec!["111122223333".into()]);
    let emulator = start(config).await;
    let client = client(&emulator.endpoint_url(), "AKIDCAT");
    let hour = hour_start(1);
    let message = expect_error!(
        client
            .batch_meter_usage()
            .product_code("prod-unknown")
            .usage_records(record("111122223333", "gb", 1, hour))
            .send(),
        "InvalidProductCodeException",
        400
    );
    assert_eq!(message, "Product code prod-unknown is invalid");
    // One unknown dimension fails the whole batch.
    let mut batch: Vec<UsageRecord> =
        (0..24).map(|i| record("111122223333", "gb", 1, hour - i * 3600 / 8)).collect();
    batch.push(record("111122223333", "cpu", 1, hour));
    let message = expect_error!(
        client.batch_meter_usage().product_code(PRODUCT).set_usage_records(Some(batch)).send(),
        "InvalidUsageDimensionException",
        400
    );
    assert_eq!(message, format!("Dimension cpu is not valid for product {PRODUCT}"));
    // An unsubscribed customer fails only its own record.
    let out = one(&client, record("111122223333", "gb", 5, hour))
        .usage_records(record("999999999999", "gb", 5, hour))
        .send()
        .await
        .unwrap();
    assert_eq!(
        statuses(&out),
        vec![UsageRecordResultStatus::Success, UsageRecordResultStatus::CustomerNotSubscribed]
    );
    assert_eq!(out.results()[1].metering_record_id(), None);
    assert_eq!(records(emulator.addr()).await.len(), 1);

    // The catalogue changes at runtime: the customer subscribes, the API gets disabled.
    let mut catalogue: Catalogue =
        serde_json::from_value(control(emulator.addr(), "GET", "/_emulator/catalogue", Value::Null).await)
            .unwrap();
    catalogue.subscribed_customers = None;
    control(emulator.addr(), "PUT", "/_emulator/catalogue", serde_json::to_value(&catalogue).unwrap()).await;
    let out = one(&client, record("999999999999", "gb", 5, hour)).send().await.unwrap();
    assert_eq!(statuses(&out), vec![UsageRecordResultStatus::Success]);
    catalogue.disabled_operations = vec!["BatchMeterUsage".into()];
    control(emulator.addr(), "PUT", "/_emulator/catalogue", serde_json::to_value(&catalogue).unwrap()).await;
    expect_error!(one(&client, record("111122223333", "gb", 5, hour)).send(), "DisabledApiException", 400);
    catalogue.disabled_operations.clear();
    catalogue.authorized_callers = Some(vec!["AKIDSOMEONEELSE".into()]);
    control(emulator.addr(), "PUT", "/_emulator/catalogue", serde_json::to_value(&catalogue).unwrap()).await;
    let message = expect_error!(
        one(&client, record("111122223333", "gb", 5, hour)).send(),
        "AccessDeniedException",
        400
    );
    assert_eq!(message, "User: AKIDCAT is not authorized to perform: aws-marketplace:BatchMeterUsage");
}

fn meter(
    client: &aws_sdk_marketplacemetering::Client,
    dimension: &str,
    quantity: i32,
    timestamp: i64,
) -> aws_sdk_marketplacemetering::operation::meter_usage::builders::MeterUsageFluentBuilder {
    client
        .meter_usage()
        .product_code(PRODUCT)
        .usage_dimension(dimension)
        .usage_quantity(quantity)
        .timestamp(DateTime::from_secs(timestamp))
}

#[tokio::test]
async fn meter_usage_keeps_one_record_per_caller_dimension_and_hour() {
    let emulator = start(EmulatorConfig::default()).await;
    let instance_a = client(&emulator.endpoint_url(), "AKIDINSTANCEA");
    let instance_b = client(&emulator.endpoint_url(), "AKIDINSTANCEB");
    let hour = hour_start(2);
    let first = meter(&instance_a, "hosts", 3, hour + 10).send().await.unwrap();
    let id = first.metering_record_id().unwrap().to_string();
    // Rounded down to the hour: another second of the same hour with the same quantity is the same record.
    let again = meter(&instance_a, "hosts", 3, hour + 3599).send().await.unwrap();
    assert_eq!(again.metering_record_id(), Some(id.as_str()));
    let message =
        expect_error!(meter(&instance_a, "hosts", 4, hour + 60).send(), "DuplicateRequestException", 400);
    assert!(message.contains("already recorded with a different quantity"), "{message}");
    // Another caller, another dimension, another hour: separate records.
    assert_ne!(
        meter(&instance_b, "hosts", 4, hour).send().await.unwrap().metering_record_id(),
        Some(id.as_str())
    );
    meter(&instance_a, "cpus", 4, hour).send().await.unwrap();
    meter(&instance_a, "hosts", 4, hour + 3600).send().await.unwrap();
    let stored = records(emulator.addr()).await;
    let summary: Vec<(String, String, i64, i64)> = stored
        .iter()
        .map(|r| {
            (
                r["caller"].as_str().unwrap().into(),
                r["dimension"].as_str().unwrap().into(),
                r["hour"].as_i64().unwrap(),
                r["quantity"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("AKIDINSTANCEA".into(), "hosts".into(), hour, 3),
            ("AKIDINSTANCEB".into(), "hosts".into(), hour, 4),
            ("AKIDINSTANCEA".into(), "cpus".into(), hour, 4),
            ("AKIDINSTANCEA".into(), "hosts".into(), hour + 3600, 4),
        ]
    );
    assert_eq!(stored[0]["operation"], "MeterUsage");
    assert_eq!(stored[0]["timestamp"], hour + 10);
}

#[tokio::test]
async fn a_client_token_repeats_its_answer_and_refuses_other_parameters() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDTOKEN");
    let hour = hour_start(1);
    let first = meter(&client, "hosts", 5, hour).client_token("token-1").send().await.unwrap();
    let again = meter(&client, "hosts", 5, hour).client_token("token-1").send().await.unwrap();
    assert_eq!(again.metering_record_id(), first.metering_record_id());
    let message = expect_error!(
        meter(&client, "hosts", 6, hour).client_token("token-1").send(),
        "IdempotencyConflictException",
        400
    );
    assert_eq!(message, "The ClientToken is being used for multiple requests with different parameters");
    expect_error!(
        meter(&client, "gpus", 5, hour).client_token("token-1").send(),
        "IdempotencyConflictException",
        400
    );
    // Another token for the same hour is the hourly rule's business, as without tokens.
    expect_error!(
        meter(&client, "hosts", 6, hour).client_token("token-2").send(),
        "DuplicateRequestException",
        400
    );
    // Tokens belong to their caller.
    let other = common::client(&emulator.endpoint_url(), "AKIDOTHER");
    meter(&other, "hosts", 6, hour).client_token("token-1").send().await.unwrap();
    let stored = records(emulator.addr()).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["client_token"], "token-1");
    let logged: Vec<Value> =
        requests(emulator.addr()).await.iter().map(|r| r["client_token"].clone()).collect();
    assert_eq!(logged, ["token-1", "token-1", "token-1", "token-1", "token-2", "token-1"]);
}

#[tokio::test]
async fn meter_usage_dry_run_window_entitlement_and_allocations() {
    let mut config = EmulatorConfig::default();
    config.catalogue.entitled_callers = Some(vec!["AKIDBUYER".into()]);
    config.catalogue.authorized_callers = Some(vec!["AKIDBUYER".into(), "AKIDNOTBUYER".into()]);
    let emulator = start(config).await;
    let buyer = client(&emulator.endpoint_url(), "AKIDBUYER");
    let hour = hour_start(1);
    expect_error!(meter(&buyer, "hosts", 1, hour).dry_run(true).send(), "DryRunOperation", 412);
    let intruder = client(&emulator.endpoint_url(), "AKIDINTRUDER");
    let message =
        expect_error!(meter(&intruder, "hosts", 1, hour).dry_run(true).send(), "UnauthorizedException", 403);
    assert_eq!(message, "User: AKIDINTRUDER is not authorized to perform: aws-marketplace:MeterUsage");
    expect_error!(meter(&intruder, "hosts", 1, hour).send(), "AccessDeniedException", 400);
    let not_buyer = client(&emulator.endpoint_url(), "AKIDNOTBUYER");
    expect_error!(meter(&not_buyer, "hosts", 1, hour).send(), "CustomerNotEntitledException", 400);
    expect_error!(
        meter(&buyer, "hosts", 1, now_secs() - 6 * 3600 - 10).send(),
        "TimestampOutOfBoundsException",
        400
    );
    expect_error!(
        buyer
            .meter_usage()
            .product_code("bad code")
            .usage_dimension("hosts")
            .timestamp(DateTime::from_secs(hour))
            .send(),
        "ValidationException",
        400
    );
    expect_error!(
        meter(&buyer, "hosts", 5, hour).usage_allocations(allocation(4, &[("team", "a")])).send(),
        "InvalidUsageAllocationsException",
        400
    );
    assert!(records(emulator.addr()).await.is_empty(), "dry runs and refusals store nothing");
    meter(&buyer, "hosts", 5, hour).usage_allocations(allocation(5, &[("team", "a")])).send().await.unwrap();
    assert_eq!(
        records(emulator.addr()).await[0]["allocations"],
        json!([{"tags": {"team": "a"}, "quantity": 5}])
    );
}

#[tokio::test]
async fn register_usage_checks_entitlement_once_per_caller() {
    let mut config = EmulatorConfig::default();
    config.catalogue.product_codes = Some(vec![PRODUCT.into()]);
    config.catalogue.entitled_callers = Some(vec!["AKIDTASK".into()]);
    config.catalogue.public_key_version = 2;
    config.catalogue.rotated_below_version = Some(2);
    let emulator = start(config).await;
    let task = client(&emulator.endpoint_url(), "AKIDTASK");
    let out =
        task.register_usage().product_code(PRODUCT).public_key_version(2).nonce("n-1").send().await.unwrap();
    let signature = out.signature().unwrap();
    assert_eq!(signature.split('.').count(), 3, "a JWT: {signature}");
    assert_eq!(out.public_key_rotation_timestamp(), None);
    let rotated = task.register_usage().product_code(PRODUCT).public_key_version(1).send().await.unwrap();
    assert!(rotated.public_key_rotation_timestamp().is_some());

    expect_error!(
        task.register_usage().product_code("prod-unknown").public_key_version(1).send(),
        "InvalidProductCodeException",
        400
    );
    expect_error!(
        task.register_usage().product_code(PRODUCT).public_key_version(3).send(),
        "InvalidPublicKeyVersionException",
        400
    );
    expect_error!(
        task.register_usage().product_code(PRODUCT).public_key_version(0).send(),
        "ValidationException",
        400
    );
    let stranger = client(&emulator.endpoint_url(), "AKIDSTRANGER");
    expect_error!(
        stranger.register_usage().product_code(PRODUCT).public_key_version(1).send(),
        "CustomerNotEntitledException",
        400
    );

    // The customer unsubscribes: the running task keeps registering, a new one is refused.
    let mut catalogue: Catalogue =
        serde_json::from_value(control(emulator.addr(), "GET", "/_emulator/catalogue", Value::Null).await)
            .unwrap();
    catalogue.entitled_callers = Some(vec![]);
    control(emulator.addr(), "PUT", "/_emulator/catalogue", serde_json::to_value(&catalogue).unwrap()).await;
    task.register_usage().product_code(PRODUCT).public_key_version(2).send().await.unwrap();

    catalogue.platform_supported = false;
    control(emulator.addr(), "PUT", "/_emulator/catalogue", serde_json::to_value(&catalogue).unwrap()).await;
    expect_error!(
        task.register_usage().product_code(PRODUCT).public_key_version(2).send(),
        "PlatformNotSupportedException",
        400
    );
    catalogue.platform_supported = true;
    catalogue.register_regions = Some(vec!["eu-west-1".into()]);
    control(emulator.addr(), "PUT", "/_emulator/catalogue", serde_json::to_value(&catalogue).unwrap()).await;
    let message = expect_error!(
        task.register_usage().product_code(PRODUCT).public_key_version(2).send(),
        "InvalidRegionException",
        400
    );
    assert_eq!(message, "RegisterUsage is not available in region us-east-1");
}

#[tokio::test]
async fn resolve_customer_answers_for_known_tokens() {
    let mut config = EmulatorConfig::default();
    config.catalogue.registration_tokens.insert(
        "token-ok".into(),
        RegistrationToken {
            customer_aws_account_id: "111122223333".into(),
            product_code: PRODUCT.into(),
            license_arn: Some(LICENSE.into()),
            agreement_id: Some("agmt-123".into()),
            ..RegistrationToken::default()
        },
    );
    config
        .catalogue
        .registration_tokens
        .insert("token-old".into(), RegistrationToken { expired: true, ..RegistrationToken::default() });
    let emulator = start(config).await;
    let seller = client(&emulator.endpoint_url(), "AKIDSELLER");
    let out = seller.resolve_customer().registration_token("token-ok").send().await.unwrap();
    assert_eq!(out.customer_aws_account_id(), Some("111122223333"));
    assert_eq!(out.product_code(), Some(PRODUCT));
    assert_eq!(out.license_arn(), Some(LICENSE));
    assert_eq!(out.customer_identifier(), None);
    assert_eq!(out.metadata().and_then(|m| m.agreement_id()), Some("agmt-123"));
    expect_error!(
        seller.resolve_customer().registration_token("token-old").send(),
        "ExpiredTokenException",
        400
    );
    expect_error!(
        seller.resolve_customer().registration_token("token-forged").send(),
        "InvalidTokenException",
        400
    );
}

#[tokio::test]
async fn each_access_key_has_its_own_quota() {
    let config = EmulatorConfig { requests_per_second: 0.2, burst: 3, ..EmulatorConfig::default() };
    let emulator = start(config).await;
    let url = emulator.endpoint_url();
    let hour = hour_start(1);
    let busy = client(&url, "AKIDBUSY");
    for _ in 0..3 {
        one(&busy, record("1", "d", 1, hour)).send().await.unwrap();
    }
    let message = expect_error!(one(&busy, record("1", "d", 1, hour)).send(), "ThrottlingException", 400);
    assert_eq!(message, "Rate exceeded");
    client(&url, "AKIDQUIET")
        .batch_meter_usage()
        .product_code(PRODUCT)
        .usage_records(record("1", "d", 1, hour))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn signatures_are_checked_for_scope_and_for_configured_keys() {
    let config = EmulatorConfig {
        credentials: vec![Credential { access_key_id: "AKIDKNOWN".into(), secret_access_key: SECRET.into() }],
        ..EmulatorConfig::default()
    };
    let emulator = start(config).await;
    let url = emulator.endpoint_url();
    let hour = hour_start(1);
    let send = |client: aws_sdk_marketplacemetering::Client| async move {
        one(&client, record("1", "d", 1, hour)).send().await
    };
    send(client(&url, "AKIDKNOWN")).await.unwrap();
    let err = send(client_with(&url, "AKIDKNOWN", "wrong-secret", REGION, RetryConfig::disabled()))
        .await
        .unwrap_err();
    assert_eq!(failure(err, ()), ("InvalidSignatureException".to_string(), 403));
    let err = send(client(&url, "AKIDUNKNOWN")).await.unwrap_err();
    assert_eq!(failure(err, ()), ("UnrecognizedClientException".to_string(), 403));
    let err =
        send(client_with(&url, "AKIDKNOWN", SECRET, "eu-west-1", RetryConfig::disabled())).await.unwrap_err();
    assert_eq!(err.message(), Some("Credential should be scoped to a valid region, not 'eu-west-1'. "));

    let (status, body) = http(
        emulator.addr(),
        "POST",
        "/",
        &[
            ("x-amz-target", "AWSMPMeteringService.BatchMeterUsage"),
            ("content-type", "application/x-amz-json-1.1"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"__type": "MissingAuthenticationTokenException", "message": "Missing Authentication Token"})
        )
    );
    let dynamo = "AWS4-HMAC-SHA256 Credential=AKIDKNOWN/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=00";
    let (status, body) = http(
        emulator.addr(),
        "POST",
        "/",
        &[("x-amz-target", "AWSMPMeteringService.BatchMeterUsage"), ("authorization", dynamo)],
        b"{}",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["message"], "Credential should be scoped to correct service: 'aws-marketplace'. ");
}

/// Raw requests for what no SDK would send.
#[tokio::test]
async fn malformed_requests_get_protocol_errors() {
    let emulator = start(EmulatorConfig::default()).await;
    let auth = "AWS4-HMAC-SHA256 Credential=AKIDRAW/20260101/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host, Signature=00";
    let call = |target: &'static str, body: &'static str| {
        let addr = emulator.addr();
        async move {
            http(addr, "POST", "/", &[("x-amz-target", target), ("authorization", auth)], body.as_bytes())
                .await
        }
    };
    let (status, body) = call("AWSMPMeteringService.Nope", "{}").await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("UnknownOperationException")));
    let (status, body) = call("AWSMPMeteringService.BatchMeterUsage", "{not json").await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("SerializationException")));
    let (status, body) = call(
        "AWSMPMeteringService.BatchMeterUsage",
        r#"{"ProductCode": "p", "UsageRecords": [{"Timestamp": "yesterday", "Dimension": "d"}]}"#,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"__type": "SerializationException", "message": "expected a timestamp in epoch seconds at 'UsageRecords.1.member.Timestamp'"})
        )
    );
    let (status, body) = call("AWSMPMeteringService.BatchMeterUsage", r#"{"ProductCode": "p"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        "1 validation error detected: Value null at 'UsageRecords' failed to satisfy constraint: Member must not be null"
    );
    let (status, _) = http(emulator.addr(), "GET", "/", &[("authorization", auth)], b"").await;
    assert_eq!(status, 400);
}

/// QuantityAsDecimal (newer than the Rust SDK in use) compares with Quantity by value.
#[tokio::test]
async fn decimal_quantities_compare_by_value() {
    let emulator = start(EmulatorConfig::default()).await;
    let auth = "AWS4-HMAC-SHA256 Credential=AKIDDEC/20260101/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host, Signature=00";
    let hour = hour_start(1);
    let send = |quantity: Value| {
        let body = json!({"ProductCode": PRODUCT, "UsageRecords": [{"Timestamp": hour, "Dimension": "d", "CustomerAWSAccountId": "1"}]});
        let mut body = body;
        let (name, value) = match quantity {
            Value::String(s) => ("QuantityAsDecimal", Value::String(s)),
            other => ("Quantity", other),
        };
        body["UsageRecords"][0][name] = value;
        let addr = emulator.addr();
        async move {
            http(
                addr,
                "POST",
                "/",
                &[("x-amz-target", "AWSMPMeteringService.BatchMeterUsage"), ("authorization", auth)],
                body.to_string().as_bytes(),
            )
            .await
        }
    };
    let (status, first) = send(json!(17)).await;
    assert_eq!(status, 200);
    let (_, same) = send(json!("17.000")).await;
    assert_eq!(same["Results"][0]["Status"], "Success");
    assert_eq!(same["Results"][0]["MeteringRecordId"], first["Results"][0]["MeteringRecordId"]);
    let (_, different) = send(json!("17.5")).await;
    assert_eq!(different["Results"][0]["Status"], "DuplicateRecord");
    let (status, body) = send(json!("017")).await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("ValidationException")));
}

#[tokio::test]
async fn injected_throttling_and_server_errors() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDFAULT");
    let hour = hour_start(1);
    let batch = || one(&client, record("1", "d", 1, hour));
    let faults =
        control(emulator.addr(), "POST", "/_emulator/faults", json!({"throttle": 2, "http_500": 1})).await;
    assert_eq!((faults["throttle"].as_u64(), faults["http_500"].as_u64()), (Some(2), Some(1)));
    expect_error!(batch().send(), "ThrottlingException", 400);
    expect_error!(batch().send(), "ThrottlingException", 400);
    expect_error!(batch().send(), "InternalServiceErrorException", 500);
    assert!(records(emulator.addr()).await.is_empty(), "faulted requests are not applied");
    batch().send().await.unwrap();

    control(
        emulator.addr(),
        "POST",
        "/_emulator/faults",
        json!({"error": {"type": "InvalidEndpointRegionException", "count": 1}}),
    )
    .await;
    let err = client
        .meter_usage()
        .product_code(PRODUCT)
        .usage_dimension("d")
        .timestamp(DateTime::from_secs(hour))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_endpoint_region_exception());

    // With the SDK's standard retries, a single 500 is invisible to the caller.
    control(emulator.addr(), "POST", "/_emulator/faults", json!({"http_500": 1})).await;
    let retrying = client_with(
        &emulator.endpoint_url(),
        "AKIDFAULT",
        SECRET,
        REGION,
        RetryConfig::standard().with_max_attempts(3),
    );
    let out = one(&retrying, record("2", "d", 1, hour)).send().await.unwrap();
    assert_eq!(statuses(&out), vec![UsageRecordResultStatus::Success]);
    let log = requests(emulator.addr()).await;
    let outcomes: Vec<(&str, u64)> =
        log.iter().map(|r| (r["outcome"].as_str().unwrap(), r["status"].as_u64().unwrap())).collect();
    assert_eq!(
        outcomes,
        vec![
            ("ThrottlingException", 400),
            ("ThrottlingException", 400),
            ("InternalServiceErrorException", 500),
            ("ok", 200),
            ("InvalidEndpointRegionException", 400),
            ("InternalServiceErrorException", 500),
            ("ok", 200),
        ]
    );
    assert_eq!(log[3]["statuses"], json!({"Success": 1}));
}

#[tokio::test]
async fn a_share_of_records_comes_back_unprocessed() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDUNPROC");
    let hour = hour_start(1);
    control(emulator.addr(), "POST", "/_emulator/faults", json!({"unprocessed_share": 0.5})).await;
    let batch: Vec<UsageRecord> = (1..=6).map(|i| record(&i.to_string(), "d", i, hour)).collect();
    let out = client
        .batch_meter_usage()
        .product_code(PRODUCT)
        .set_usage_records(Some(batch.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.results().len(), 3);
    assert_eq!(out.unprocessed_records().len(), 3);
    let processed: Vec<&str> =
        out.results().iter().map(|r| r.usage_record().unwrap().customer_aws_account_id().unwrap()).collect();
    let unprocessed: Vec<&str> =
        out.unprocessed_records().iter().map(|r| r.customer_aws_account_id().unwrap()).collect();
    assert_eq!((processed, unprocessed), (vec!["1", "3", "5"], vec!["2", "4", "6"]));
    let stored: Vec<String> = records(emulator.addr())
        .await
        .iter()
        .map(|r| r["customer_aws_account_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, vec!["1", "3", "5"]);

    // Cleared, the unprocessed ones go through on a resend of the whole batch.
    control(emulator.addr(), "DELETE", "/_emulator/faults", Value::Null).await;
    let out =
        client.batch_meter_usage().product_code(PRODUCT).set_usage_records(Some(batch)).send().await.unwrap();
    assert_eq!(statuses(&out), vec![UsageRecordResultStatus::Success; 6]);
    assert_eq!(records(emulator.addr()).await.len(), 6);
}

#[tokio::test]
async fn apply_then_drop_the_connection() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDDROP");
    let hour = hour_start(1);
    control(emulator.addr(), "POST", "/_emulator/faults", json!({"drop_after_apply": 1})).await;
    let err = one(&client, record("1", "d", 9, hour)).send().await.unwrap_err();
    assert!(err.raw_response().is_none(), "the client never saw an answer: {err:?}");
    let stored = records(emulator.addr()).await;
    assert_eq!(stored.len(), 1, "the record was applied");
    // The unchanged resend gets the receipt of the record that was applied.
    let out = one(&client, record("1", "d", 9, hour)).send().await.unwrap();
    assert_eq!(out.results()[0].metering_record_id(), stored[0]["metering_record_id"].as_str());
    let log = requests(emulator.addr()).await;
    assert_eq!(log[0]["outcome"], "dropped");
    assert_eq!(log[1]["outcome"], "ok");
}

#[tokio::test]
async fn added_latency_delays_every_answer() {
    let emulator = start(EmulatorConfig::default()).await;
    control(emulator.addr(), "POST", "/_emulator/faults", json!({"latency_ms": 3000})).await;
    let slow = client_with_timeout(&emulator.endpoint_url(), "AKIDSLOW", Duration::from_millis(300));
    let err = one(&slow, record("1", "d", 1, hour_start(1))).send().await.unwrap_err();
    assert!(matches!(err, aws_sdk_marketplacemetering::error::SdkError::TimeoutError(_)), "{err:?}");
    control(emulator.addr(), "POST", "/_emulator/faults", json!({"latency_ms": 0})).await;
    one(&slow, record("1", "d", 1, hour_start(1))).send().await.unwrap();
}

#[tokio::test]
async fn reset_forgets_records_requests_and_faults() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = client(&emulator.endpoint_url(), "AKIDRESET");
    one(&client, record("1", "d", 1, hour_start(1))).send().await.unwrap();
    control(emulator.addr(), "POST", "/_emulator/faults", json!({"throttle": 5})).await;
    control(emulator.addr(), "POST", "/_emulator/reset", Value::Null).await;
    assert!(records(emulator.addr()).await.is_empty());
    assert!(requests(emulator.addr()).await.is_empty());
    assert_eq!(control(emulator.addr(), "GET", "/_emulator/faults", Value::Null).await["throttle"], 0);
    // After a reset the same key may be billed with another quantity.
    one(&client, record("1", "d", 2, hour_start(1))).send().await.unwrap();
    assert_eq!(records(emulator.addr()).await[0]["quantity"], 2);
    let (status, body) = http(emulator.addr(), "GET", "/_emulator/nothing", &[], b"").await;
    assert_eq!(status, 404);
    assert!(body["endpoints"].as_array().unwrap().len() >= 6);
    let (status, body) =
        http(emulator.addr(), "POST", "/_emulator/faults", &[], br#"{"unprocessed_share": 2}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unprocessed_share must be between 0 and 1, got 2"))
    );
}
