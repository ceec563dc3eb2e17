//! What a record is the usage of: the service keeps one quantity per [`RecordKey`].

use serde::{Deserialize, Serialize};

/// The largest quantity the service accepts in a record or an allocation (a signed 32-bit integer).
pub const MAX_QUANTITY: u32 = i32::MAX as u32;

/// What a record is billed against: a product code (legacy SaaS) or a license ARN (concurrent
/// agreements, no product code in the call).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    ProductCode(String),
    LicenseArn(String),
}

impl Scope {
    /// The product as `meterd status` and metrics name it: its code, or `(license)` for a record
    /// billed by license ARN, whose product the key does not hold (no product code has
    /// parentheses, so the two cannot meet).
    pub fn product_label(&self) -> &str {
        match self {
            Scope::ProductCode(code) => code,
            Scope::LicenseArn(_) => "(license)",
        }
    }
}

/// Who is billed: the customer's AWS account id, the legacy customer identifier, or (MeterUsage)
/// the buyer whose instance, task or pod credentials make the call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Customer {
    AwsAccountId(String),
    Identifier(String),
    /// `aws.mode = "meter_usage"`: the call names no customer; the caller is the customer.
    Caller,
}

/// The identity of a record: the service keeps one quantity per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    pub scope: Scope,
    pub customer: Customer,
    pub dimension: String,
    /// Start of the UTC hour, epoch seconds; sent as the record's `Timestamp`.
    pub hour: i64,
}

/// A tag set, sorted by key; empty for untagged usage.
pub type TagSet = Vec<(String, String)>;

/// A record's short id (the operator's handle in `meterd dlq`, fleet partial ids): 12 hex
/// digits of SHA-256 over its postcard encoding.
pub fn record_id(key: &RecordKey) -> String {
    use sha2::Digest;
    let encoded = postcard::to_allocvec(key).expect("a record key always encodes");
    hex::encode(&sha2::Sha256::digest(&encoded)[..6])
}
