//! How many bytes a record takes on the wire, so that no request meterd sends is over the
//! service's body limit ("each request must be less than 1 MB in size").
//!
//! The size is computed from the same JSON the SDK serialises (member names of the model, epoch
//! seconds, compact), without the empty members [`super::api::StripEmptyFields`] removes. A record
//! whose request alone would reach [`MAX_BATCH_BYTES`] (2,500 tag sets of five long tags fit the
//! count limit but not the size) can never be sent; the submitter makes it a dead letter instead
//! of sending it and learning how the service refuses it.

use serde_json::{Map, Value, json};

use crate::aggregate::SealedRecord;
use crate::model::{Customer, Scope};

/// Most records in one BatchMeterUsage call.
pub const MAX_BATCH_RECORDS: usize = 25;
/// Request bodies stay below this: the service's "1 MB", read as the smaller of its meanings.
pub const MAX_BATCH_BYTES: usize = 1_000_000;

/// A MeterUsage `ClientToken` as meterd derives it: 64 hex digits.
const CLIENT_TOKEN_BYTES: usize = 64;

/// The record's `UsageRecord` (BatchMeterUsage) or MeterUsage body members.
fn members(record: &SealedRecord) -> Map<String, Value> {
    let key = &record.key;
    let caller = key.customer == Customer::Caller;
    let mut out = Map::new();
    out.insert("Timestamp".into(), json!(key.hour));
    let (dimension, quantity) =
        if caller { ("UsageDimension", "UsageQuantity") } else { ("Dimension", "Quantity") };
    out.insert(dimension.into(), json!(key.dimension));
    out.insert(quantity.into(), json!(record.quantity));
    match &key.customer {
        Customer::AwsAccountId(id) => out.insert("CustomerAWSAccountId".into(), json!(id)),
        Customer::Identifier(id) => out.insert("CustomerIdentifier".into(), json!(id)),
        Customer::Caller => out.insert("ClientToken".into(), json!("0".repeat(CLIENT_TOKEN_BYTES))),
    };
    match &key.scope {
        Scope::LicenseArn(arn) => out.insert("LicenseArn".into(), json!(arn)),
        Scope::ProductCode(code) if caller => out.insert("ProductCode".into(), json!(code)),
        Scope::ProductCode(_) => None,
    };
    if record.has_tags() {
        let allocations: Vec<Value> = record
            .allocations
            .iter()
            .map(|a| {
                let tags: Vec<Value> = a.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect();
                json!({"AllocatedUsageQuantity": a.quantity, "Tags": tags})
            })
            .collect();
        out.insert("UsageAllocations".into(), Value::Array(allocations));
    }
    out
}

fn json_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len())
}

/// Bytes `record` adds to a BatchMeterUsage request's `UsageRecords` (or, for a caller's own
/// record, its whole MeterUsage body).
pub fn record_bytes(record: &SealedRecord) -> usize {
    json_len(&Value::Object(members(record)))
}

/// Bytes of a BatchMeterUsage body around its records: `ProductCode` (unless the records name
/// license ARNs) and the list.
pub fn envelope_bytes(record: &SealedRecord) -> usize {
    match &record.key.scope {
        Scope::ProductCode(code) if record.key.customer != Customer::Caller => {
            json_len(&json!({"ProductCode": code, "UsageRecords": []}))
        }
        Scope::ProductCode(_) => 0,
        Scope::LicenseArn(_) => json_len(&json!({"UsageRecords": []})),
    }
}

/// Bytes of the request that sends `records` (of one scope): one comma between two records.
pub fn request_bytes(records: &[&SealedRecord]) -> usize {
    let Some(first) = records.first() else { return 0 };
    let body: usize = records.iter().map(|r| record_bytes(r)).sum();
    envelope_bytes(first) + body + records.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Allocation;
    use crate::model::RecordKey;

    fn record(customer: Customer, scope: Scope, tags: &[(&str, &str)]) -> SealedRecord {
        let tags: Vec<(String, String)> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        SealedRecord {
            key: RecordKey { scope, customer, dimension: "requests".into(), hour: 1_796_079_600 },
            quantity: 7,
            allocations: vec![Allocation { tags, quantity: 7 }],
        }
    }

    #[test]
    fn sizes_are_those_of_the_compact_json_body() {
        let plain =
            record(Customer::AwsAccountId("111122223333".into()), Scope::ProductCode("p".into()), &[]);
        let expected = r#"{"CustomerAWSAccountId":"111122223333","Dimension":"requests","Quantity":7,"Timestamp":1796079600}"#;
        assert_eq!(record_bytes(&plain), expected.len());
        let body = format!(r#"{{"ProductCode":"p","UsageRecords":[{expected},{expected}]}}"#);
        assert_eq!(request_bytes(&[&plain, &plain]), body.len());
        let tagged =
            record(Customer::Identifier("c".into()), Scope::LicenseArn("arn".into()), &[("team", "a\"b")]);
        let expected = r#"{"CustomerIdentifier":"c","Dimension":"requests","LicenseArn":"arn","Quantity":7,"Timestamp":1796079600,"UsageAllocations":[{"AllocatedUsageQuantity":7,"Tags":[{"Key":"team","Value":"a\"b"}]}]}"#;
        assert_eq!(request_bytes(&[&tagged]), r#"{"UsageRecords":[]}"#.len() + expected.len());
        let own = record(Customer::Caller, Scope::ProductCode("p".into()), &[]);
        let body = format!(
            r#"{{"ClientToken":"{}","ProductCode":"p","Timestamp":1796079600,"UsageDimension":"requests","UsageQuantity":7}}"#,
            "0".repeat(64)
        );
        assert_eq!(request_bytes(&[&own]), body.len());
    }
}
