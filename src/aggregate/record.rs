//! The sealed hourly record: one (product or license, customer, dimension, UTC hour) with its
//! frozen total and allocations. Once sealed it never changes, so every attempt to submit it sends
//! the same content; it is self-contained so that fleet mode can ship it instead of submitting it.

use serde::{Deserialize, Serialize};

use crate::model::{Customer, RecordKey, Scope, TagSet};

/// The usage of one tag set within a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub tags: TagSet,
    pub quantity: u32,
}

/// A frozen hourly record. Its allocations are sorted by tag set and sum to `quantity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRecord {
    pub key: RecordKey,
    pub quantity: u32,
    pub allocations: Vec<Allocation>,
}

impl SealedRecord {
    /// Whether the record must be sent with `UsageAllocations`: only when some usage was tagged.
    pub fn has_tags(&self) -> bool {
        self.allocations.iter().any(|a| !a.tags.is_empty())
    }
}

/// The most a record may take in a request body: a request (one record and its envelope, the
/// product code included) must stay below the service's 1 MB.
pub const MAX_RECORD_BYTES: usize = 990_000;

/// Bytes a JSON string takes, quotes included, as the SDK writes it.
pub fn json_str_len(text: &str) -> usize {
    // By bytes: a character beyond ASCII takes its UTF-8 bytes as they are.
    let escapes: usize = text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            b if b < 0x20 => 5,
            _ => 0,
        })
        .sum();
    text.len() + escapes + 2
}

/// An upper bound of a record's size in the request, without its allocations.
pub fn base_len(key: &RecordKey) -> usize {
    let customer = match &key.customer {
        Customer::AwsAccountId(id) | Customer::Identifier(id) => json_str_len(id),
        Customer::Caller => 0,
    };
    let license = match &key.scope {
        Scope::LicenseArn(arn) => json_str_len(arn),
        Scope::ProductCode(_) => 0,
    };
    // Member names, the timestamp, the quantity, punctuation and `"UsageAllocations":[]`.
    160 + customer + license + json_str_len(&key.dimension)
}

/// An upper bound of one allocation's size in the request.
pub fn allocation_len(tags: &TagSet) -> usize {
    // `{"AllocatedUsageQuantity":2147483647,"Tags":[]},` and `{"Key":,"Value":},` per tag.
    50 + tags.iter().map(|(key, value)| 18 + json_str_len(key) + json_str_len(value)).sum::<usize>()
}

impl SealedRecord {
    /// An upper bound of the record's size in a request body.
    pub fn encoded_len(&self) -> usize {
        base_len(&self.key) + self.allocations.iter().map(|a| allocation_len(&a.tags)).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_str_len_is_the_escaped_length() {
        // serde_json escapes as the SDK does: the short escapes, \u00XX for other controls,
        // everything else (non-ASCII included) as it is.
        for text in ["", "plain", "q\"b\\s", "\n\r\t\u{8}\u{c}", "\u{0}\u{1f}\u{7f}", "é€𝄞", "a\u{1}é\"€"]
        {
            assert_eq!(json_str_len(text), serde_json::to_string(text).unwrap().len(), "{text:?}");
        }
    }
}
