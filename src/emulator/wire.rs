//! The awsJson1.1 wire format of the four operations: decoding a request body into typed input
//! while enforcing every constraint of the service model, and the error shape the SDKs parse.
//!
//! Decoding follows the layering of the real service: a JSON value of the wrong type is a
//! `SerializationException`; a value outside a length, pattern or range constraint of the model is
//! a `ValidationException` listing every violation; rules that need more than one field (customer
//! fields, allocation sums, tag sets) are the modelled exceptions raised by the service itself.

use std::borrow::Cow;

use crate::model::{
    ACCOUNT_ID_PATTERN, DECIMAL_PATTERN, LICENSE_ARN_PATTERN, PRODUCT_CODE_PATTERN, TAG_PATTERN,
    is_account_id, is_license_arn, is_product_code, is_tag_text,
};
use serde_json::{Map, Value};

/// An error answer: HTTP status, the error name put in `__type` and `X-Amzn-ErrorType`, and the
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: Cow<'static, str>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self { status, kind: kind.into(), message: message.into() }
    }

    /// A modelled client-side exception (HTTP 400).
    pub fn client(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, kind, message)
    }

    pub fn serialization(message: impl Into<String>) -> Self {
        Self::client("SerializationException", message)
    }

    pub fn throttling() -> Self {
        Self::client("ThrottlingException", "Rate exceeded")
    }

    pub fn internal() -> Self {
        Self::new(500, "InternalServiceErrorException", "An internal error has occurred")
    }

    /// Every constraint violation at once, worded as the service words them.
    pub fn validation(violations: &[String]) -> Self {
        let count = violations.len();
        let plural = if count == 1 { "" } else { "s" };
        Self::client(
            "ValidationException",
            format!("{count} validation error{plural} detected: {}", violations.join("; ")),
        )
    }

    /// The JSON body: `{"__type": kind, "message": …}`.
    pub fn body(&self) -> Value {
        serde_json::json!({ "__type": self.kind, "message": self.message })
    }
}

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
    /// `CustomerIdentifier`, with `""` read as absent (the Rust SDK always sends the field).
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

/// Collects constraint violations while reading one request.
#[derive(Default)]
struct Checker {
    violations: Vec<String>,
}

impl Checker {
    fn violation(&mut self, path: &str, value: impl std::fmt::Display, constraint: &str) {
        self.violations
            .push(format!("Value '{value}' at '{path}' failed to satisfy constraint: {constraint}"));
    }

    fn length(&mut self, path: &str, text: &str, min: usize, max: usize) {
        let len = text.encode_utf16().count();
        if len < min {
            self.violation(path, text, &format!("Member must have length greater than or equal to {min}"));
        } else if len > max {
            self.violation(path, text, &format!("Member must have length less than or equal to {max}"));
        }
    }

    fn pattern(&mut self, path: &str, text: &str, ok: bool, pattern: &str) {
        if !ok {
            self.violation(path, text, &format!("Member must satisfy regular expression pattern: {pattern}"));
        }
    }

    fn range(&mut self, path: &str, value: i64, min: i64, max: i64) {
        if value < min {
            self.violation(path, value, &format!("Member must have value greater than or equal to {min}"));
        } else if value > max {
            self.violation(path, value, &format!("Member must have value less than or equal to {max}"));
        }
    }

    fn required(&mut self, path: &str) {
        self.violations
            .push(format!("Value null at '{path}' failed to satisfy constraint: Member must not be null"));
    }

    fn finish<T>(self, value: T) -> Result<T, ApiError> {
        if self.violations.is_empty() { Ok(value) } else { Err(ApiError::validation(&self.violations)) }
    }
}

/// Typed access to the members of one JSON object; a member of the wrong JSON type fails the
/// whole request with `SerializationException`, a `null` member counts as absent.
struct Members<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Members<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn type_error(path: &str, expected: &str) -> ApiError {
        ApiError::serialization(format!("expected {expected} at '{path}'"))
    }

    fn string(&self, name: &str, path: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Self::type_error(path, "a string")),
        }
    }

    fn integer(&self, name: &str, path: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) => Ok(Some(v)),
                None if n.as_u64().is_some() => Ok(Some(i64::MAX)),
                None => Err(Self::type_error(path, "an integer")),
            },
            Some(_) => Err(Self::type_error(path, "an integer")),
        }
    }

    fn boolean(&self, name: &str, path: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Self::type_error(path, "a boolean")),
        }
    }

    /// Epoch seconds as a JSON number (fractions allowed, truncated).
    fn timestamp(&self, name: &str, path: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v.is_finite() => Ok(Some(v.floor() as i64)),
                _ => Err(Self::type_error(path, "a timestamp in epoch seconds")),
            },
            Some(_) => Err(Self::type_error(path, "a timestamp in epoch seconds")),
        }
    }

    fn list(&self, name: &str, path: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(Self::type_error(path, "a list")),
        }
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<Members<'a>, ApiError> {
    match value {
        Value::Object(map) => Ok(Members { map }),
        _ => Err(Members::type_error(path, "a structure")),
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
            check.violations.push(format!("'{int_path}' and '{dec_path}' cannot both be specified"));
            Ok((Quantity::default(), false))
        }
        (Some(v), None) => Ok((Quantity::from_units(v.clamp(0, MAX_QUANTITY) as u64), false)),
        (None, Some(q)) => Ok((q, true)),
        (None, None) => Ok((Quantity::default(), false)),
    }
}

fn allocations(
    members: &Members<'_>,
    check: &mut Checker,
    path: &str,
) -> Result<Option<Vec<Allocation>>, ApiError> {
    let list_path = format!("{path}UsageAllocations");
    let Some(items) = members.list("UsageAllocations", &list_path)? else { return Ok(None) };
    if items.is_empty() || items.len() > 2500 {
        check.violation(
            &list_path,
            items.len(),
            if items.is_empty() {
                "Member must have length greater than or equal to 1"
            } else {
                "Member must have length less than or equal to 2500"
            },
        );
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{list_path}.{}.member.", i + 1);
        let alloc = object(item, &item_path)?;
        let (quantity, decimal) =
            quantity(&alloc, check, "AllocatedUsageQuantity", "AllocatedUsageQuantityAsDecimal", &item_path)?;
        let tags_path = format!("{item_path}Tags");
        let mut tags = Vec::new();
        if let Some(tag_items) = alloc.list("Tags", &tags_path)? {
            if tag_items.is_empty() || tag_items.len() > 5 {
                check.violation(
                    &tags_path,
                    tag_items.len(),
                    if tag_items.is_empty() {
                        "Member must have length greater than or equal to 1"
                    } else {
                        "Member must have length less than or equal to 5"
                    },
                );
            }
            for (j, tag) in tag_items.iter().enumerate() {
                let tag_path = format!("{tags_path}.{}.member.", j + 1);
                let tag = object(tag, &tag_path)?;
                let mut text = |name: &str, max: usize| -> Result<String, ApiError> {
                    let path = format!("{tag_path}{name}");
                    match tag.string(name, &path)? {
                        None => {
                            check.required(&path);
                            Ok(String::new())
                        }
                        Some(t) => {
                            check.length(&path, t, 1, max);
                            if !t.is_empty() {
                                check.pattern(&path, t, is_tag_text(t), TAG_PATTERN);
                            }
                            Ok(t.to_string())
                        }
                    }
                };
                let key = text("Key", 100)?;
                let value = text("Value", 256)?;
                tags.push((key, value));
            }
        }
        out.push(Allocation { quantity, decimal, tags });
    }
    Ok(Some(out))
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
    let top = Members { map: body };
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
            customer_identifier: customer_identifier.filter(|c| !c.is_empty()).map(str::to_string),
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
    let top = Members { map: body };
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
    if let Some(token) = top.string("ClientToken", "ClientToken")? {
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
    })
}

pub fn register_usage(body: &Map<String, Value>) -> Result<RegisterUsageInput, ApiError> {
    let top = Members { map: body };
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
    let top = Members { map: body };
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
    fn empty_customer_identifier_counts_as_absent() {
        let input = batch_meter_usage(&body(json!({"ProductCode": "p", "UsageRecords": [
            {"Timestamp": 1.5e9, "Dimension": "d", "Quantity": 3, "CustomerIdentifier": "", "CustomerAWSAccountId": "111122223333"}
        ]})))
        .unwrap();
        let record = &input.records[0];
        assert_eq!(record.customer_identifier, None);
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
