//! One line of the socket protocol: parsing and checking an event, and writing its reply.
//!
//! The checks here are the stateless ones: JSON shape, field types, the service model's patterns
//! and limits, the event's product among the configured ones, and that product's dimension
//! allowlist. Time, idempotency and overflow depend on what was already accepted and are checked
//! by the aggregator.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::{self, Customer, ErrorCode, Event, Mode, Scope, TagSet};

/// Longest client idempotency key, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Why an event was refused: a protocol error code and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// A refused line, with the client's id when the line carried a readable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub id: Option<String>,
    pub rejection: Rejection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent<'a> {
    #[serde(borrow)]
    customer_aws_account_id: Option<&'a RawValue>,
    #[serde(borrow)]
    customer_identifier: Option<&'a RawValue>,
    #[serde(borrow)]
    license_arn: Option<&'a RawValue>,
    #[serde(borrow)]
    product_code: Option<&'a RawValue>,
    #[serde(borrow)]
    dimension: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    tags: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// Turns lines into [`Event`]s under the configured products and their dimension allowlists.
#[derive(Debug, Clone)]
pub struct EventParser {
    /// One or more; one product's events may leave out `product_code`.
    products: Vec<ProductRules>,
    mode: Mode,
}

/// One configured product as its events are checked.
#[derive(Debug, Clone)]
struct ProductRules {
    /// `Scope::ProductCode` of its code, built once and cloned per event; `None` without a
    /// product code (`aws.license_only`): its events must name a license ARN.
    scope: Option<Scope>,
    /// The dimensions its events may name; `None`: any.
    dimensions: Option<HashSet<String>>,
}

impl ProductRules {
    fn code(&self) -> Option<&str> {
        match &self.scope {
            Some(Scope::ProductCode(code)) => Some(code),
            _ => None,
        }
    }
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InvalidField, message)
}

fn missing(field: &str) -> Rejection {
    Rejection::new(ErrorCode::MissingField, format!("`{field}` is required"))
}

/// A JSON `null` counts as absent.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

fn string(raw: &RawValue, field: &str) -> Result<String, Rejection> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(format!("`{field}` must be a string")))
}

/// A dimension or customer: 1 to 255 UTF-16 code units, as the service counts them.
fn name(raw: &RawValue, field: &str) -> Result<String, Rejection> {
    let text = string(raw, field)?;
    let len = model::service_len(&text);
    if !(1..=model::MAX_NAME_CHARS).contains(&len) {
        return Err(invalid(format!(
            "`{field}` must be 1 to 255 UTF-16 code units (as the Metering Service counts them); it has {len}"
        )));
    }
    Ok(text)
}

fn quantity(raw: &RawValue) -> Result<u32, Rejection> {
    let number: serde_json::Number = serde_json::from_str(raw.get())
        .map_err(|_| invalid("`quantity` must be an integer from 0 to 2147483647"))?;
    match number.as_u64() {
        Some(q) if q <= u64::from(model::MAX_QUANTITY) => Ok(q as u32),
        _ => Err(invalid(format!("`quantity` must be an integer from 0 to 2147483647, got {number}"))),
    }
}

/// RFC 3339 text or epoch seconds (a fraction is truncated).
fn timestamp(raw: &RawValue) -> Result<i64, Rejection> {
    let bad = || invalid("`timestamp` must be RFC 3339 text or epoch seconds");
    let text = raw.get();
    if text.starts_with('"') {
        let text: String = serde_json::from_str(text).map_err(|_| bad())?;
        let parsed = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
                invalid(format!("`timestamp` {text:?} is not RFC 3339 (e.g. 2026-11-22T10:15:00Z)"))
            })?;
        Ok(parsed.unix_timestamp())
    } else {
        let number: serde_json::Number = serde_json::from_str(text).map_err(|_| bad())?;
        match number.as_i64() {
            Some(secs) if secs >= 0 => Ok(secs),
            Some(_) => Err(bad()),
            None => match number.as_f64() {
                Some(secs) if secs.is_finite() && (0.0..9.0e15).contains(&secs) => Ok(secs.floor() as i64),
                _ => Err(bad()),
            },
        }
    }
}

/// The members of a JSON object in the order written, a repeated key included (a map keeps only
/// its last value, which would hide the mistake).
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

fn tags(raw: &RawValue) -> Result<TagSet, Rejection> {
    let Members(mut members) = serde_json::from_str(raw.get())
        .map_err(|_| invalid("`tags` must be an object of string keys and string values"))?;
    // Sorted by key: the set's canonical order, and a repeated key lands next to itself.
    members.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = members.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(invalid(format!("`tags` has the key {:?} twice; each key may appear once", pair[0].0)));
    }
    if members.len() > model::MAX_TAGS {
        return Err(invalid(format!("`tags` has {} pairs; at most 5 are allowed", members.len())));
    }
    let mut out = TagSet::with_capacity(members.len());
    for (key, value) in members {
        let serde_json::Value::String(value) = value else {
            return Err(invalid(format!("tag `{key}` must have a string value")));
        };
        // The tag pattern admits only ASCII, so its lengths in UTF-16 code units are its bytes.
        let key_ok =
            (1..=model::MAX_TAG_KEY_CHARS).contains(&model::service_len(&key)) && model::is_tag_text(&key);
        if !key_ok {
            return Err(invalid(format!(
                "tag key {key:?} must be 1 to 100 characters matching {}",
                model::TAG_PATTERN
            )));
        }
        let value_ok = (1..=model::MAX_TAG_VALUE_CHARS).contains(&model::service_len(&value))
            && model::is_tag_text(&value);
        if !value_ok {
            return Err(invalid(format!(
                "tag `{key}` value {value:?} must be 1 to 256 characters matching {}",
                model::TAG_PATTERN
            )));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// A product code as sent: borrowed from the line unless it was written with escapes.
fn product_text(raw: &RawValue) -> Result<Cow<'_, str>, Rejection> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(text) => Ok(Cow::Borrowed(text)),
        Err(_) => string(raw, "product_code").map(Cow::Owned),
    }
}

impl EventParser {
    /// One product: `product_code` empty means events must name a license ARN; `dimensions`
    /// empty means any. In `meter_usage` mode events name no customer and no license: the
    /// caller is billed.
    pub fn new(product_code: &str, dimensions: &[String], mode: Mode) -> Self {
        Self::with_products(&[(product_code, dimensions)], mode)
    }

    /// Each product as (code, dimensions), as [`EventParser::new`] takes one; with more than
    /// one, every event names its `product_code`.
    pub fn with_products(products: &[(&str, &[String])], mode: Mode) -> Self {
        assert!(!products.is_empty(), "a parser serves at least one product");
        let products = products
            .iter()
            .map(|(code, dimensions)| ProductRules {
                scope: (!code.is_empty()).then(|| Scope::ProductCode(code.to_string())),
                dimensions: (!dimensions.is_empty()).then(|| dimensions.iter().cloned().collect()),
            })
            .collect();
        Self { products, mode }
    }

    /// The event's product: the one it names, or the only one configured.
    fn product(&self, raw: &RawEvent) -> Result<&ProductRules, Rejection> {
        let Some(named) = present(raw.product_code) else {
            return match self.products.as_slice() {
                [one] => Ok(one),
                _ => Err(Rejection::new(
                    ErrorCode::MissingField,
                    "`product_code` is required: several products are configured (aws.products)",
                )),
            };
        };
        let code = product_text(named)?;
        self.products.iter().find(|product| product.code() == Some(&*code)).ok_or_else(|| {
            let configured: Vec<String> =
                self.products.iter().filter_map(ProductRules::code).map(|c| format!("{c:?}")).collect();
            let configured = if configured.is_empty() { "none".to_string() } else { configured.join(", ") };
            Rejection::new(
                ErrorCode::UnknownProduct,
                format!("`product_code` {code:?} is not a configured product (configured: {configured})"),
            )
        })
    }

    /// The customer of a `meter_usage` event: the caller, and no field may say otherwise.
    fn caller(&self, raw: &RawEvent) -> Result<Customer, Rejection> {
        let fields = [
            ("customer_aws_account_id", raw.customer_aws_account_id),
            ("customer_identifier", raw.customer_identifier),
            ("license_arn", raw.license_arn),
        ];
        match fields.iter().find(|(_, value)| present(*value).is_some()) {
            Some((field, _)) => Err(invalid(format!(
                "`{field}` is not allowed with aws.mode = \"meter_usage\": MeterUsage bills the account whose credentials meterd uses"
            ))),
            None => Ok(Customer::Caller),
        }
    }

    /// Parses one line (without its newline).
    pub fn parse(&self, line: &[u8]) -> Result<Event, LineError> {
        let raw: RawEvent = serde_json::from_slice(line).map_err(|err| LineError {
            id: None,
            rejection: match err.classify() {
                serde_json::error::Category::Data => {
                    let text = err.to_string();
                    if text.starts_with("unknown field") || text.starts_with("duplicate field") {
                        invalid(text.split(" at line").next().unwrap_or(&text).to_string())
                    } else {
                        Rejection::new(ErrorCode::InvalidJson, "a line must be one JSON object")
                    }
                }
                _ => Rejection::new(ErrorCode::InvalidJson, format!("not valid JSON: {err}")),
            },
        })?;
        let id = match present(raw.id) {
            None => None,
            Some(raw_id) => {
                let id = string(raw_id, "id").map_err(|rejection| LineError { id: None, rejection })?;
                if id.is_empty() || id.len() > MAX_ID_BYTES {
                    let rejection = invalid("`id` must be 1 to 128 bytes");
                    return Err(LineError { id: None, rejection });
                }
                Some(id)
            }
        };
        // The id is moved into the event or the error, never copied.
        match self.fields(&raw) {
            Ok(event) => Ok(Event { id, ..event }),
            Err(rejection) => Err(LineError { id, rejection }),
        }
    }

    /// The event `raw` describes, without its id.
    fn fields(&self, raw: &RawEvent) -> Result<Event, Rejection> {
        let customer = match (present(raw.customer_aws_account_id), present(raw.customer_identifier)) {
            _ if self.mode == Mode::MeterUsage => self.caller(raw)?,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "give exactly one of `customer_aws_account_id` and `customer_identifier`",
                ));
            }
            (None, None) => {
                return Err(Rejection::new(
                    ErrorCode::MissingField,
                    "one of `customer_aws_account_id` and `customer_identifier` is required",
                ));
            }
            (Some(account), None) => {
                let account = name(account, "customer_aws_account_id")?;
                if !model::is_account_id(&account) {
                    return Err(invalid("`customer_aws_account_id` must be digits only"));
                }
                Customer::AwsAccountId(account)
            }
            (None, Some(identifier)) => Customer::Identifier(name(identifier, "customer_identifier")?),
        };
        let product = self.product(raw)?;
        let scope = match present(raw.license_arn) {
            Some(_) if matches!(customer, Customer::Identifier(_)) => {
                return Err(invalid(
                    "`customer_identifier` cannot be used with `license_arn`: license-based usage names the customer by `customer_aws_account_id`",
                ));
            }
            Some(arn) => {
                let arn = string(arn, "license_arn")?;
                if !model::is_license_arn(&arn) {
                    return Err(invalid(format!("`license_arn` {arn:?} is not a license ARN")));
                }
                Scope::LicenseArn(arn)
            }
            None => match &product.scope {
                Some(scope) => scope.clone(),
                None => {
                    return Err(Rejection::new(
                        ErrorCode::MissingField,
                        "`license_arn` is required because aws.product_code is not set",
                    ));
                }
            },
        };
        let dimension = name(present(raw.dimension).ok_or_else(|| missing("dimension"))?, "dimension")?;
        if let Some(allowed) = &product.dimensions
            && !allowed.contains(&dimension)
        {
            let message = match product.code() {
                Some(code) if self.products.len() > 1 => {
                    format!(
                        "dimension {dimension:?} is not in the dimensions of product {code:?} (aws.products)"
                    )
                }
                _ => format!("dimension {dimension:?} is not in aws.dimensions"),
            };
            return Err(Rejection::new(ErrorCode::UnknownDimension, message));
        }
        let quantity = quantity(present(raw.quantity).ok_or_else(|| missing("quantity"))?)?;
        let timestamp = present(raw.timestamp).map(timestamp).transpose()?;
        let tags = present(raw.tags).map(tags).transpose()?.unwrap_or_default();
        Ok(Event { scope, customer, dimension, quantity, timestamp, tags, id: None, peer: 0, id_print: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> EventParser {
        EventParser::new("prod-1", &["requests".to_string(), "storage".to_string()], Mode::Batch)
    }

    fn refused(line: &str) -> (ErrorCode, String) {
        let err = parser().parse(line.as_bytes()).unwrap_err();
        (err.rejection.code, err.rejection.message)
    }

    #[test]
    fn meter_usage_events_name_no_customer_and_no_license() {
        let metered = EventParser::new("prod-1", &[], Mode::MeterUsage);
        let event = metered.parse(br#"{"dimension":"cpu","quantity":3,"tags":{"team":"a"}}"#).unwrap();
        assert_eq!(event.customer, Customer::Caller);
        assert_eq!(event.scope, Scope::ProductCode("prod-1".into()));
        for field in ["customer_aws_account_id", "customer_identifier", "license_arn"] {
            let line = format!(r#"{{"{field}":"123456789012","dimension":"cpu","quantity":3,"id":"x"}}"#);
            let err = metered.parse(line.as_bytes()).unwrap_err();
            assert_eq!(err.id.as_deref(), Some("x"));
            assert_eq!(err.rejection.code, ErrorCode::InvalidField);
            assert_eq!(
                err.rejection.message,
                format!(
                    "`{field}` is not allowed with aws.mode = \"meter_usage\": MeterUsage bills the account whose credentials meterd uses"
                )
            );
        }
        let batch = parser().parse(br#"{"dimension":"requests","quantity":3}"#).unwrap_err();
        assert_eq!(batch.rejection.code, ErrorCode::MissingField);
    }

    #[test]
    fn parses_a_full_event() {
        let event = parser()
            .parse(br#"{"customer_aws_account_id":"123456789012","dimension":"requests","quantity":7,"timestamp":"2026-11-22T10:15:00Z","tags":{"team":"a","env":"prod"},"id":"e-1"}"#)
            .unwrap();
        assert_eq!(
            event,
            Event {
                scope: Scope::ProductCode("prod-1".into()),
                customer: Customer::AwsAccountId("123456789012".into()),
                dimension: "requests".into(),
                quantity: 7,
                timestamp: Some(1_795_342_500),
                tags: vec![("env".into(), "prod".into()), ("team".into(), "a".into())],
                id: Some("e-1".into()),
                peer: 0,
                id_print: None,
            }
        );
    }

    #[test]
    fn license_events_carry_no_product_code() {
        let event = parser()
            .parse(br#"{"customer_aws_account_id":"1","license_arn":"arn:aws:license-manager::1:license:l-1","dimension":"storage","quantity":0,"timestamp":1795342500.9}"#)
            .unwrap();
        assert_eq!(event.scope, Scope::LicenseArn("arn:aws:license-manager::1:license:l-1".into()));
        assert_eq!(event.timestamp, Some(1_795_342_500));
        assert_eq!(event.customer, Customer::AwsAccountId("1".into()));
    }

    #[test]
    fn the_legacy_customer_identifier_cannot_name_a_license() {
        let err = parser()
            .parse(br#"{"customer_identifier":"c","license_arn":"arn:aws:license-manager::1:license:l-1","dimension":"storage","quantity":1,"id":"k"}"#)
            .unwrap_err();
        assert_eq!(err.id.as_deref(), Some("k"));
        assert_eq!(err.rejection.code, ErrorCode::InvalidField);
        assert_eq!(
            err.rejection.message,
            "`customer_identifier` cannot be used with `license_arn`: license-based usage names the customer by `customer_aws_account_id`"
        );
    }

    #[test]
    fn each_mistake_has_its_code() {
        use ErrorCode::*;
        let cases = [
            ("not json", InvalidJson, "not valid JSON"),
            ("[1,2]", InvalidJson, "one JSON object"),
            (r#"{"dimension":"requests","quantity":1}"#, MissingField, "customer_identifier"),
            (r#"{"customer_identifier":"c","quantity":1}"#, MissingField, "`dimension` is required"),
            (r#"{"customer_identifier":"c","dimension":"requests"}"#, MissingField, "`quantity` is required"),
            (
                r#"{"customer_identifier":"c","customer_aws_account_id":"1","dimension":"requests","quantity":1}"#,
                InvalidField,
                "exactly one",
            ),
            (
                r#"{"customer_aws_account_id":"12ab","dimension":"requests","quantity":1}"#,
                InvalidField,
                "digits",
            ),
            (r#"{"customer_identifier":"c","dimension":"requests","quantity":-1}"#, InvalidField, "got -1"),
            (r#"{"customer_identifier":"c","dimension":"requests","quantity":1.5}"#, InvalidField, "got 1.5"),
            (
                r#"{"customer_identifier":"c","dimension":"requests","quantity":2147483648}"#,
                InvalidField,
                "2147483647",
            ),
            (r#"{"customer_identifier":"c","dimension":"requests","quantity":"5"}"#, InvalidField, "integer"),
            (r#"{"customer_identifier":"c","dimension":"cpu","quantity":1}"#, UnknownDimension, "\"cpu\""),
            (
                r#"{"customer_identifier":"c","dimension":"requests","quantity":1,"timestamp":"yesterday"}"#,
                InvalidField,
                "RFC 3339",
            ),
            (
                r#"{"customer_identifier":"c","dimension":"requests","quantity":1,"tags":{"a":1}}"#,
                InvalidField,
                "string value",
            ),
            (
                r#"{"customer_identifier":"c","dimension":"requests","quantity":1,"tags":{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6"}}"#,
                InvalidField,
                "at most 5",
            ),
            (
                r#"{"customer_identifier":"c","dimension":"requests","quantity":1,"tags":{"a{":"1"}}"#,
                InvalidField,
                "tag key",
            ),
            (
                r#"{"customer_identifier":"c","dimension":"requests","quantity":1,"tags":{"a":""}}"#,
                InvalidField,
                "value",
            ),
            (
                r#"{"customer_identifier":"c","dimension":"requests","quantity":1,"colour":"red"}"#,
                InvalidField,
                "unknown field `colour`",
            ),
            (
                r#"{"customer_aws_account_id":"1","license_arn":"nope","dimension":"requests","quantity":1}"#,
                InvalidField,
                "license ARN",
            ),
            (
                r#"{"customer_identifier":"c","dimension":"requests","quantity":1,"id":""}"#,
                InvalidField,
                "1 to 128 bytes",
            ),
        ];
        for (line, code, needle) in cases {
            let (got, message) = refused(line);
            assert_eq!(got, code, "{line}: {message}");
            assert!(message.contains(needle), "{line}: {message:?} lacks {needle:?}");
        }
    }

    #[test]
    fn names_are_measured_in_utf16_code_units() {
        let line = |dimension: &str| {
            format!(r#"{{"customer_identifier":"c","dimension":"{dimension}","quantity":1}}"#).into_bytes()
        };
        let any = EventParser::new("prod-1", &[], Mode::Batch);
        let longest = format!("{}a", "\u{1F600}".repeat(127));
        assert_eq!(any.parse(&line(&longest)).unwrap().dimension, longest);
        let err = any.parse(&line(&"\u{1F600}".repeat(128))).unwrap_err();
        assert_eq!(
            err.rejection.message,
            "`dimension` must be 1 to 255 UTF-16 code units (as the Metering Service counts them); it has 256"
        );
        assert!(any.parse(&line(&"\u{e9}".repeat(255))).is_ok(), "a BMP character is one unit");
    }

    #[test]
    fn tags_are_canonical_and_a_repeated_key_is_refused() {
        let event = parser()
            .parse(br#"{"customer_identifier":"c","dimension":"requests","quantity":1,"tags":{"z":"1","a":"2"}}"#)
            .unwrap();
        assert_eq!(event.tags, vec![("a".into(), "2".into()), ("z".into(), "1".into())]);
        let (code, message) = refused(
            r#"{"customer_identifier":"c","dimension":"requests","quantity":1,"tags":{"k":"1","k":"1"}}"#,
        );
        assert_eq!(code, ErrorCode::InvalidField);
        assert_eq!(message, "`tags` has the key \"k\" twice; each key may appear once");
        let (_, message) =
            refused(r#"{"customer_identifier":"c","dimension":"requests","quantity":1,"tags":[]}"#);
        assert_eq!(message, "`tags` must be an object of string keys and string values");
    }

    #[test]
    fn license_is_required_without_a_product_code() {
        let parser = EventParser::new("", &[], Mode::Batch);
        let err = parser.parse(br#"{"customer_identifier":"c","dimension":"x","quantity":1}"#).unwrap_err();
        assert_eq!(err.rejection.code, ErrorCode::MissingField);
        assert!(err.rejection.message.contains("license_arn"));
    }

    fn two_products() -> EventParser {
        let (a, b) = (["requests".to_string()], ["requests".to_string(), "gb".to_string()]);
        EventParser::with_products(&[("prod-a", &a), ("prod-b", &b)], Mode::Batch)
    }

    #[test]
    fn with_several_products_each_event_names_a_configured_one() {
        let parser = two_products();
        let line = |product: &str, dimension: &str| {
            format!(
                r#"{{"customer_aws_account_id":"1",{product}"dimension":"{dimension}","quantity":1,"id":"i"}}"#
            )
        };
        let event = parser.parse(line(r#""product_code":"prod-b","#, "gb").as_bytes()).unwrap();
        assert_eq!(event.scope, Scope::ProductCode("prod-b".into()));
        let escaped = parser.parse(line(r#""product_code":"prod\u002da","#, "requests").as_bytes()).unwrap();
        assert_eq!(escaped.scope, Scope::ProductCode("prod-a".into()));
        let refusal = |line: String| parser.parse(line.as_bytes()).unwrap_err();
        let missing = refusal(line("", "requests"));
        assert_eq!(missing.id.as_deref(), Some("i"));
        assert_eq!(
            missing.rejection,
            Rejection::new(
                ErrorCode::MissingField,
                "`product_code` is required: several products are configured (aws.products)"
            )
        );
        assert_eq!(
            refusal(line(r#""product_code":"prod-c","#, "requests")).rejection,
            Rejection::new(
                ErrorCode::UnknownProduct,
                r#"`product_code` "prod-c" is not a configured product (configured: "prod-a", "prod-b")"#
            )
        );
        assert_eq!(
            refusal(line(r#""product_code":"prod-a","#, "gb")).rejection,
            Rejection::new(
                ErrorCode::UnknownDimension,
                r#"dimension "gb" is not in the dimensions of product "prod-a" (aws.products)"#
            )
        );
        assert_eq!(
            refusal(line(r#""product_code":7,"#, "gb")).rejection.message,
            "`product_code` must be a string"
        );
    }

    #[test]
    fn a_license_event_names_its_product_among_the_configured_ones() {
        let arn = "arn:aws:license-manager::1:license:l-1";
        let line = |product: &str| {
            format!(
                r#"{{"customer_aws_account_id":"1","license_arn":"{arn}",{product}"dimension":"gb","quantity":1}}"#
            )
        };
        let event = two_products().parse(line(r#""product_code":"prod-b","#).as_bytes()).unwrap();
        assert_eq!(event.scope, Scope::LicenseArn(arn.into()));
        let err = two_products().parse(line("").as_bytes()).unwrap_err();
        assert_eq!(err.rejection.code, ErrorCode::MissingField);
        let err = two_products().parse(line(r#""product_code":"prod-x","#).as_bytes()).unwrap_err();
        assert_eq!(err.rejection.code, ErrorCode::UnknownProduct);
        // One product: the field may be left out; if given it must be that product.
        let single = EventParser::new("prod-1", &[], Mode::Batch);
        assert!(single.parse(line("").as_bytes()).is_ok());
        assert!(single.parse(line(r#""product_code":"prod-1","#).as_bytes()).is_ok());
        let err = single.parse(line(r#""product_code":"prod-b","#).as_bytes()).unwrap_err();
        assert_eq!(
            err.rejection.message,
            r#"`product_code` "prod-b" is not a configured product (configured: "prod-1")"#
        );
        let license_only = EventParser::new("", &[], Mode::Batch);
        let err = license_only.parse(line(r#""product_code":"prod-1","#).as_bytes()).unwrap_err();
        assert_eq!(
            err.rejection,
            Rejection::new(
                ErrorCode::UnknownProduct,
                r#"`product_code` "prod-1" is not a configured product (configured: none)"#
            )
        );
    }

    #[test]
    fn one_product_events_may_name_it_and_bill_the_same_record() {
        let plain =
            parser().parse(br#"{"customer_identifier":"c","dimension":"requests","quantity":1}"#).unwrap();
        let named = parser()
            .parse(
                br#"{"customer_identifier":"c","product_code":"prod-1","dimension":"requests","quantity":1}"#,
            )
            .unwrap();
        assert_eq!(plain, named);
    }

    #[test]
    fn refusals_keep_the_client_id() {
        let err = parser()
            .parse(br#"{"customer_identifier":"c","dimension":"cpu","quantity":1,"id":"k-9"}"#)
            .unwrap_err();
        assert_eq!(err.id.as_deref(), Some("k-9"));
    }
}
