//! The awsJson1.1 wire format of the four operations: decoding a request body into typed input
//! while enforcing every constraint of the service model, and the error shape the SDKs parse.
//!
//! Decoding follows the layering of the real service: a JSON value of the wrong type is a
//! `SerializationException`; a value outside a length, pattern or range constraint of the model is
//! a `ValidationException` listing every violation; rules that need more than one field (customer
//! fields, allocation sums, tag sets) are the modelled exceptions raised by the service itself.
//!
//! This module holds the typed inputs and the decoder of each operation; beside it are the error
//! shape ([`error`]), the two layers of reading members ([`members`]) and the decoding of usage
//! allocations and their tags ([`allocations`]), which MeterUsage and BatchMeterUsage share.

mod allocations;
mod error;
mod members;

use crate::model::{
    ACCOUNT_ID_PATTERN, DECIMAL_PATTERN, LICENSE_ARN_PATTERN, PRODUCT_CODE_PATTERN, is_account_id,
    is_license_arn, is_product_code,
};
use serde_json::{Map, Value};

pub use error::ApiError;

use allocations::allocations;
use members::{Checker, Members, object};

/// The largest `Quantity` the model allows (a signed 32-bit integer).
pub const MAX_QUANTITY: i64 = 2_147_483_647;

/// A usage quantity in millionths, so that `Quantity` (integer) and `QuantityAsDecimal` (up to six
/// decimals) compare by value as the service compares them for duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(pub u64);

impl Quantity {
    const SCALE: u64 = 1_000_000;

    pub fn from_units(units: u64) -> Self {
        Self(units * Self::SCALE)
    }

    /// The quantity as JSON: an integer when whole, else a decimal number.
    pub fn to_json(self) -> Value {
        if self.0.is_multiple_of(Self::SCALE) {
            Value::from(self.0 / Self::SCALE)
        } else {
            Value::from(self.0 as f64 / Self::SCALE as f64)
        }
    }

    /// Reads the model's `UsageQuantityAsDecimalString`: `^(0|[1-9][0-9]{0,9})(\.[0-9]{1,6})?$`.
    fn parse_decimal(text: &str) -> Option<Self> {
        let (whole, frac) = match text.split_once('.') {
            Some((whole, frac)) => (whole, Some(frac)),
            None => (text, None),
        };
        let whole_ok = whole == "0"
            || (!whole.is_empty()
                && whole.len() <= 10
                && !whole.starts_with('0')
                && whole.bytes().all(|b| b.is_ascii_digit()));
        let frac_ok =
            frac.is_none_or(|f| (1..=6).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()));
        if !whole_ok || !frac_ok || text.len() > 17 {
            return None;
        }
        let mut micros: u64 = whole.parse::<u64>().ok()? * Self::SCALE;
        if let Some(frac) = frac {
            let padded = format!("{frac:0<6}");
            micros += padded.parse::<u64>().ok()?;
        }
        Some(Self(micros))
    }
}

/// One `UsageAllocation`: a quantity and its tag set (empty for the untagged bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub quantity: Quantity,
    pub decimal: bool,
    pub tags: Vec<(String, String)>,
}

/// One decoded `UsageRecord` of a BatchMeterUsage call.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    /// The record exactly as sent, echoed back in `Results` and `UnprocessedRecords`.
    pub raw: Value,
    /// Epoch seconds, truncated.
    pub timestamp: i64,
    /// `CustomerIdentifier` as sent: `""` is present. The Rust SDK sends `""` when the field is
    /// unset, and the service does not document what it makes of it, so the emulator is strict.
    pub customer_identifier: Option<String>,
    pub customer_aws_account_id: Option<String>,
    pub license_arn: Option<String>,
    pub dimension: String,
    pub quantity: Quantity,
    pub decimal: bool,
    pub allocations: Option<Vec<Allocation>>,
}

impl UsageRecord {
    /// The customer this record bills, whichever field names it.
    pub fn customer(&self) -> Option<&str> {
        self.customer_aws_account_id.as_deref().or(self.customer_identifier.as_deref())
    }
}

#[derive(Debug, Clone)]
pub struct BatchMeterUsageInput {
    pub product_code: Option<String>,
    pub records: Vec<UsageRecord>,
}

#[derive(Debug, Clone)]
pub struct MeterUsageInput {
    pub product_code: String,
    pub timestamp: i64,
    pub dimension: String,
    pub quantity: Quantity,
    pub decimal: bool,
    pub dry_run: bool,
    pub allocations: Option<Vec<Allocation>>,
    pub client_token: Option<String>,
}

impl MeterUsageInput {
    /// Every parameter but the token, quantities by value and allocations in a fixed order: what
    /// a retry with the same `ClientToken` must repeat.
    pub fn parameters(&self) -> String {
        let mut allocations: Vec<(Vec<(String, String)>, u64)> = self
            .allocations
            .iter()
            .flatten()
            .map(|a| {
                let mut tags = a.tags.clone();
                tags.sort();
                (tags, a.quantity.0)
            })
            .collect();
        allocations.sort();
        format!("{:?}", (&self.product_code, self.timestamp, &self.dimension, self.quantity.0, allocations))
    }
}

#[derive(Debug, Clone)]
pub struct RegisterUsageInput {
    pub product_code: String,
    pub public_key_version: i64,
    pub nonce: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ResolveCustomerInput {
    pub registration_token: String,
}

/// Parses a request body as a JSON object (an empty body counts as `{}`, as the SDKs send it).
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::serialization("Start of structure or map found where not expected.")),
        Err(err) => Err(ApiError::serialization(format!("request body is not valid JSON: {err}"))),
    }
}

/// Reads `Quantity`/`QuantityAsDecimal` style pairs: at most one of them, default 0.
fn quantity(
    members: &Members<'_>,
    check: &mut Checker,
    int_name: &str,
    decimal_name: &str,
    path: &str,
) -> Result<(Quantity, bool), ApiError> {
    let int_path = format!("{path}{int_name}");
    let dec_path = format!("{path}{decimal_name}");
    let int = members.integer(int_name, &int_path)?;
    let dec = members.string(decimal_name, &dec_path)?;
    if let Some(v) = int {
        check.range(&int_path, v, 0, MAX_QUANTITY);
    }
    let decimal = dec.map(|text| {
        let parsed = Quantity::parse_decimal(text);
        check.pattern(&dec_path, text, parsed.is_some(), DECIMAL_PATTERN);
        parsed.unwrap_or_default()
    });
    match (int, decimal) {
        (Some(_), Some(_)) => {
            check.exclusive(&int_path, &dec_path);
            Ok((Quantity::default(), false))
        }
        (Some(v), None) => Ok((Quantity::from_units(v.clamp(0, MAX_QUANTITY) as u64), false)),
        (None, Some(q)) => Ok((q, true)),
        (None, None) => Ok((Quantity::default(), false)),
    }
}

fn product_code(check: &mut Checker, path: &str, code: &str) {
    check.length(path, code, 0, 255);
    check.pattern(path, code, is_product_code(code), PRODUCT_CODE_PATTERN);
}

fn dimension(check: &mut Checker, path: &str, value: Option<&str>) -> String {
    match value {
        None => {
            check.required(path);
            String::new()
        }
        Some(d) => {
            check.length(path, d, 1, 255);
            d.to_string()
        }
    }
}

pub fn batch_meter_usage(body: &Map<String, Value>) -> Result<BatchMeterUsageInput, ApiError> {
    let top = Members::new(body);
    let mut check = Checker::default();
    let product = top.string("ProductCode", "ProductCode")?;
    if let Some(code) = product {
        product_code(&mut check, "ProductCode", code);
    }
    let Some(items) = top.list("UsageRecords", "UsageRecords")? else {
        check.required("UsageRecords");
        return check.finish(BatchMeterUsageInput { product_code: None, records: Vec::new() });
    };
    if items.len() > 25 {
        check.violation("UsageRecords", items.len(), "Member must have length less than or equal to 25");
    }
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("UsageRecords.{}.member.", i + 1);
        let rec = object(item, &path)?;
        let timestamp = rec.timestamp("Timestamp", &format!("{path}Timestamp"))?;
        if timestamp.is_none() {
            check.required(&format!("{path}Timestamp"));
        }
        let dim = dimension(
            &mut check,
            &format!("{path}Dimension"),
            rec.string("Dimension", &format!("{path}Dimension"))?,
        );
        let (quantity, decimal) = quantity(&rec, &mut check, "Quantity", "QuantityAsDecimal", &path)?;
        let ci_path = format!("{path}CustomerIdentifier");
        let customer_identifier = rec.string("CustomerIdentifier", &ci_path)?;
        if let Some(ci) = customer_identifier {
            check.length(&ci_path, ci, 0, 255);
        }
        let acct_path = format!("{path}CustomerAWSAccountId");
        let account = rec.string("CustomerAWSAccountId", &acct_path)?;
        if let Some(acct) = account {
            check.length(&acct_path, acct, 1, 255);
            check.pattern(&acct_path, acct, is_account_id(acct), ACCOUNT_ID_PATTERN);
        }
        let arn_path = format!("{path}LicenseArn");
        let license = rec.string("LicenseArn", &arn_path)?;
        if let Some(arn) = license {
            check.pattern(&arn_path, arn, is_license_arn(arn), LICENSE_ARN_PATTERN);
        }
        let allocations = allocations(&rec, &mut check, &path)?;
        records.push(UsageRecord {
            raw: item.clone(),
            timestamp: timestamp.unwrap_or_default(),
            customer_identifier: customer_identifier.map(str::to_string),
            customer_aws_account_id: account.map(str::to_string),
            license_arn: license.map(str::to_string),
            dimension: dim,
            quantity,
            decimal,
            allocations,
        });
    }
    check.finish(BatchMeterUsageInput {
        product_code: product.filter(|p| !p.is_empty()).map(str::to_string),
        records,
    })
}

pub fn meter_usage(body: &Map<String, Value>) -> Result<MeterUsageInput, ApiError> {
    let top = Members::new(body);
    let mut check = Checker::default();
    let product = match top.string("ProductCode", "ProductCode")? {
        None => {
            check.required("ProductCode");
            String::new()
        }
        Some(code) => {
            product_code(&mut check, "ProductCode", code);
            code.to_string()
        }
    };
    let timestamp = top.timestamp("Timestamp", "Timestamp")?;
    if timestamp.is_none() {
        check.required("Timestamp");
    }
    let dim = dimension(&mut check, "UsageDimension", top.string("UsageDimension", "UsageDimension")?);
    let (quantity, decimal) = quantity(&top, &mut check, "UsageQuantity", "UsageQuantityAsDecimal", "")?;
    let dry_run = top.boolean("DryRun", "DryRun")?.unwrap_or(false);
    let client_token = top.string("ClientToken", "ClientToken")?;
    if let Some(token) = client_token {
        check.length("ClientToken", token, 1, 64);
    }
    let allocations = allocations(&top, &mut check, "")?;
    check.finish(MeterUsageInput {
        product_code: product,
        timestamp: timestamp.unwrap_or_default(),
        dimension: dim,
        quantity,
        decimal,
        dry_run,
        allocations,
        client_token: client_token.map(str::to_string),
    })
}

pub fn register_usage(body: &Map<String, Value>) -> Result<RegisterUsageInput, ApiError> {
    let top = Members::new(body);
    let mut check = Checker::default();
    let product = match top.string("ProductCode", "ProductCode")? {
        None => {
            check.required("ProductCode");
            String::new()
        }
        Some(code) => {
            product_code(&mut check, "ProductCode", code);
            code.to_string()
        }
    };
    let version = top.integer("PublicKeyVersion", "PublicKeyVersion")?;
    match version {
        None => check.required("PublicKeyVersion"),
        Some(v) => check.range("PublicKeyVersion", v, 1, i64::from(i32::MAX)),
    }
    let nonce = top.string("Nonce", "Nonce")?;
    if let Some(n) = nonce {
        check.length("Nonce", n, 0, 255);
    }
    check.finish(RegisterUsageInput {
        product_code: product,
        public_key_version: version.unwrap_or_default(),
        nonce: nonce.map(str::to_string),
    })
}

pub fn resolve_customer(body: &Map<String, Value>) -> Result<ResolveCustomerInput, ApiError> {
    let top = Members::new(body);
    let mut check = Checker::default();
    let token = match top.string("RegistrationToken", "RegistrationToken")? {
        None => {
            check.required("RegistrationToken");
            String::new()
        }
        Some(t) => {
            check.pattern("RegistrationToken", t, !t.is_empty(), "[\\s\\S]+");
            t.to_string()
        }
    };
    check.finish(ResolveCustomerInput { registration_token: token })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn decimal_quantities_compare_by_value() {
        assert_eq!(Quantity::parse_decimal("17"), Some(Quantity::from_units(17)));
        assert_eq!(Quantity::parse_decimal("17.0"), Some(Quantity::from_units(17)));
        assert_eq!(Quantity::parse_decimal("17.42"), Some(Quantity(17_420_000)));
        assert_eq!(Quantity::parse_decimal("0.000001"), Some(Quantity(1)));
        for bad in ["", "017", "1.", ".5", "1.1234567", "-1", "1e3", "12345678901"] {
            assert_eq!(Quantity::parse_decimal(bad), None, "{bad}");
        }
        assert_eq!(Quantity(17_420_000).to_json(), json!(17.42));
        assert_eq!(Quantity::from_units(5).to_json(), json!(5));
    }

    #[test]
    fn every_violation_is_listed() {
        let err = batch_meter_usage(&body(json!({
            "ProductCode": "bad code!",
            "UsageRecords": [{"Timestamp": 0, "Dimension": "", "Quantity": -1, "CustomerAWSAccountId": "12ab"}]
        })))
        .unwrap_err();
        assert_eq!(err.kind, "ValidationException");
        assert!(err.message.starts_with("4 validation errors detected: "), "{}", err.message);
        assert!(err.message.contains(
            "'ProductCode' failed to satisfy constraint: Member must satisfy regular expression pattern"
        ));
        assert!(err.message.contains("'UsageRecords.1.member.Dimension' failed to satisfy constraint: Member must have length greater than or equal to 1"));
        assert!(err.message.contains("Value '-1' at 'UsageRecords.1.member.Quantity'"));
        assert!(err.message.contains("'UsageRecords.1.member.CustomerAWSAccountId' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[0-9]+$"));
    }

    #[test]
    fn wrong_json_types_are_serialization_errors() {
        let err = batch_meter_usage(&body(json!({"UsageRecords": [{"Timestamp": "now", "Dimension": "d"}]})))
            .unwrap_err();
        assert_eq!(err.kind, "SerializationException");
        assert_eq!(parse_body(b"[1]").unwrap_err().kind, "SerializationException");
        assert_eq!(parse_body(b"{").unwrap_err().kind, "SerializationException");
        assert!(parse_body(b"").unwrap().is_empty());
    }

    #[test]
    fn an_empty_customer_identifier_is_present() {
        let input = batch_meter_usage(&body(json!({"ProductCode": "p", "UsageRecords": [
            {"Timestamp": 1.5e9, "Dimension": "d", "Quantity": 3, "CustomerIdentifier": "", "CustomerAWSAccountId": "111122223333"}
        ]})))
        .unwrap();
        let record = &input.records[0];
        assert_eq!(record.customer_identifier.as_deref(), Some(""));
        assert_eq!(record.customer(), Some("111122223333"));
        assert_eq!(record.timestamp, 1_500_000_000);
        assert_eq!(record.quantity, Quantity::from_units(3));
    }

    #[test]
    fn quantity_and_decimal_are_exclusive() {
        let err = meter_usage(&body(json!({"ProductCode": "p", "Timestamp": 0, "UsageDimension": "d",
            "UsageQuantity": 1, "UsageQuantityAsDecimal": "1"})))
        .unwrap_err();
        assert_eq!(err.kind, "ValidationException");
        assert!(
            err.message.contains("'UsageQuantity' and 'UsageQuantityAsDecimal' cannot both be specified")
        );
    }
}
